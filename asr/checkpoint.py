"""One self-describing checkpoint file: model name + config, tokenizer, weights (CMVN
statistics included, as model buffers), training metadata, optionally the trainer state
needed for exact resume, and optionally the word LM the model decodes with by default
(:class:`LanguageModel`, put there by ``asr attach-lm``).

Files are written atomically (temporary file in the same folder, fsync, rename), so a crash
mid-save never leaves a truncated checkpoint in place of a good one.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asr.fileio import save_torch
from asr.models import build_model, upgrade_state_dict
from asr.text import Tokenizer

FORMAT = "asr-checkpoint-1"


@dataclass
class LanguageModel:
    """A word n-gram LM and/or a lexicon carried inside a checkpoint, with the beam search
    weights tuned for this model: the file alone then decodes as its recipe measured it
    (``asr transcribe`` uses them unless told otherwise). The texts are the files' contents,
    so the checkpoint can be copied anywhere."""

    arpa: str | None  # ARPA text; None: no LM
    lexicon: str | None  # lexicon file text (asr.decoding.write_lexicon); None: lexicon-free search
    lm_weight: float
    word_score: float


@dataclass
class Checkpoint:
    model_name: str
    model_config: dict[str, Any]
    tokenizer: Tokenizer
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    trainer_state: dict[str, Any] | None = None
    language_model: LanguageModel | None = None

    @property
    def training_config(self) -> dict[str, Any]:
        """The ``asr train`` configuration that produced the weights (empty if unknown)."""
        return self.metadata.get("config") or {}

    def build_model(self, device: str | torch.device = "cpu", verbose: bool = False) -> nn.Module:
        """The model with its weights, in eval mode on ``device``."""
        model = build_model(self.model_name, self.model_config, verbose=verbose)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def _plain(value: Any) -> Any:
    """Dataclasses to dicts so the file loads with ``weights_only=True``."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# An LM's ARPA text and a lexicon are stored zlib-compressed: a word list of 100k words or a
# 3-gram over 10k sentences is several MB of text, a quarter of that compressed (what lets the
# embedded default models carry their LM within the package's size budget).
def _pack_language_model(lm: LanguageModel | None) -> dict | None:
    if lm is None:
        return None
    packed = {"lm_weight": lm.lm_weight, "word_score": lm.word_score}
    for name in ("arpa", "lexicon"):
        text = getattr(lm, name)
        packed[f"{name}_zlib"] = None if text is None else zlib.compress(text.encode("utf-8"), 9)
    return packed


def _unpack_language_model(packed: dict | None) -> LanguageModel | None:
    if not packed:
        return None
    texts = {}
    for name in ("arpa", "lexicon"):
        if f"{name}_zlib" in packed:
            data = packed[f"{name}_zlib"]
            texts[name] = None if data is None else zlib.decompress(data).decode("utf-8")
        else:  # stored uncompressed
            texts[name] = packed[name]
    return LanguageModel(**texts, lm_weight=packed["lm_weight"], word_score=packed["word_score"])


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_name: str,
    tokenizer: Tokenizer,
    metadata: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    language_model: LanguageModel | None = None,
) -> None:
    """Write a checkpoint atomically. Weights are stored on CPU (loads anywhere)."""
    model = getattr(model, "module", model)  # unwrap DDP
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_checkpoint(path, Checkpoint(model_name, _plain(model.config), tokenizer, state_dict, metadata or {},
                                      trainer_state, language_model))


def write_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write a :class:`Checkpoint` (loaded, averaged or compacted) to a file, atomically."""
    save_torch({
        "format": FORMAT,
        "model": {"name": ckpt.model_name, "config": ckpt.model_config},
        "tokenizer": ckpt.tokenizer.state_dict(),
        "state_dict": ckpt.state_dict,
        "metadata": ckpt.metadata,
        "trainer_state": ckpt.trainer_state,
        "language_model": _pack_language_model(ckpt.language_model),
    }, path)  # all or nothing: a temporary file beside it, fsync, rename


def compact_checkpoint(ckpt: Checkpoint, provenance: dict[str, Any] | None = None) -> Checkpoint:
    """The model for shipping: parameters in float16 (half the bytes; they load back into a
    float32 model), buffers such as the CMVN statistics kept in float32, no trainer state, and
    ``provenance`` (where the weights came from) in ``metadata["provenance"]``."""
    parameters = {name for name, _ in build_model(ckpt.model_name, ckpt.model_config, verbose=False).named_parameters()}
    state_dict = {
        name: value.half() if name in parameters and value.is_floating_point() else value
        for name, value in ckpt.state_dict.items()
    }
    metadata = {**ckpt.metadata, "provenance": provenance or {}}
    return dataclasses.replace(ckpt, state_dict=state_dict, metadata=metadata, trainer_state=None)


class CheckpointError(RuntimeError):
    """A file that is not a usable asr checkpoint (one-line message)."""


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint onto the CPU (whatever device it was saved from)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an asr checkpoint (expected format {FORMAT})")
    return Checkpoint(
        model_name=payload["model"]["name"],
        model_config=payload["model"]["config"],
        tokenizer=Tokenizer.from_state_dict(payload["tokenizer"]),
        state_dict=upgrade_state_dict(payload["state_dict"]),
        metadata=payload["metadata"],
        trainer_state=payload["trainer_state"],
        language_model=_unpack_language_model(payload.get("language_model")),
    )


def average_checkpoints(paths: list[str | os.PathLike]) -> Checkpoint:
    """Element-wise mean of the floating-point weights of several checkpoints of one model.

    Integer buffers (e.g. counters) are taken from the last checkpoint. Averaging the last few
    epochs usually gives a better model than any one of them (flatter optimum).
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    checkpoints = [load_checkpoint(p) for p in paths]
    last = checkpoints[-1]
    for path, ckpt in zip(paths, checkpoints):
        if ckpt.model_name != last.model_name or ckpt.model_config != last.model_config:
            raise CheckpointError(f"{path}: a different model from {paths[-1]}; cannot average")
    averaged = {}
    for key, value in last.state_dict.items():
        if value.is_floating_point():
            averaged[key] = sum(c.state_dict[key].double() for c in checkpoints).div(len(checkpoints)).to(value.dtype)
        else:
            averaged[key] = value
    metadata = {**last.metadata, "averaged_from": [str(p) for p in paths]}
    return dataclasses.replace(last, state_dict=averaged, metadata=metadata, trainer_state=None)
