"""Free Spoken Digit Dataset (FSDD): real recordings of ZERO..NINE by 6 speakers, 8 kHz.

Licence CC BY-SA 4.0 (Jakobovski/free-spoken-digit-dataset); see the corpus's ATTRIBUTION.md.
Files are read from where they lie (e.g. ``../shared/data/fsdd``); nothing is copied.

The split holds out whole speakers: a digit recogniser that has heard a speaker's voice is
not tested on it. Takes 0-4 of each digit of the training speakers (FSDD's own test takes)
form the dev set used for validation during training.
"""

from __future__ import annotations

import os
from pathlib import Path

from asr.data.manifest import validate_entries, write_manifest
from asr.text import normalize_text

DEFAULT_TEST_SPEAKERS = ("theo", "yweweler")
DEV_TAKES = range(5)


def fsdd_entries(root: str | os.PathLike) -> list[dict]:
    """All utterances listed in ``transcripts.tsv`` (``relative_path<TAB>TRANSCRIPT``)."""
    root = Path(root)
    listing = root / "transcripts.tsv"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not found; is {root} an FSDD folder?")
    entries = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        relative, text = line.split("\t")
        stem = Path(relative).stem  # {digit}_{speaker}_{take}
        _, speaker, take = stem.split("_")
        entries.append({
            "id": stem,
            "audio": str((root / relative).resolve()),
            "duration": None,
            "text": normalize_text(text)[0],
            "speaker": speaker,
            "take": int(take),
        })
    return entries


def prepare_fsdd(root: str | os.PathLike, out_dir: str | os.PathLike, test_speakers=DEFAULT_TEST_SPEAKERS) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (unseen speakers) to ``out_dir``."""
    entries, report = validate_entries(fsdd_entries(root))
    print(report.summary())
    speakers = {e["speaker"] for e in entries}
    unknown = set(test_speakers) - speakers
    if unknown:
        raise ValueError(f"test speakers not in FSDD: {', '.join(sorted(unknown))}; speakers: {', '.join(sorted(speakers))}")
    splits = {
        "test": [e for e in entries if e["speaker"] in test_speakers],
        "dev": [e for e in entries if e["speaker"] not in test_speakers and e["take"] in DEV_TAKES],
        "train": [e for e in entries if e["speaker"] not in test_speakers and e["take"] not in DEV_TAKES],
    }
    out_dir = Path(out_dir)
    paths = {}
    for name, split in splits.items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_manifest(paths[name], split)
        print(f"{name}: {len(split)} utterances, speakers {', '.join(sorted({e['speaker'] for e in split}))}")
    return paths
