"""The embedded default models: what ``asr transcribe`` and ``asr stream`` use without ``--model``.

``offline.pt`` (the BiLSTM-CTC for files) and ``streaming.pt`` (the streaming GRU for the
microphone) are ordinary asr checkpoints with their weights stored in float16 and their word LM
attached; they load like any other (:func:`asr.checkpoint.load_checkpoint`), as float32 models.
``recipes/english/run.sh`` makes them; ``MODEL_CARD.md`` beside them says from what data, how
well they do and where they fail. ``samples/`` holds short recordings to try them on.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent
MODEL_FILES = {"offline": "offline.pt", "streaming": "streaming.pt"}
SAMPLES_DIR = PRETRAINED_DIR / "samples"


def default_model(kind: str = "offline") -> Path:
    """The embedded default checkpoint of ``kind`` ("offline" or "streaming").

    Raises:
        FileNotFoundError: the package was installed without it (one-line message).
    """
    if kind not in MODEL_FILES:
        raise ValueError(f"no default model of kind {kind!r}; kinds: {', '.join(MODEL_FILES)}")
    path = PRETRAINED_DIR / MODEL_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(
            f"the embedded default {kind} model {path} is missing from this installation; "
            "pass --model CKPT (recipes/english/run.sh makes one)")
    return path


def resolve_model(path: str | None, kind: str = "offline") -> Path:
    """``--model``'s value if given, else the embedded default of ``kind``."""
    return Path(path) if path else default_model(kind)
