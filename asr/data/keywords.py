"""Keyword clips: wake words and command words from 100+ people, in three sources.

The shared copy (``../shared/data/keywords``, see its ATTRIBUTION.md) holds 16 kHz Ogg Opus
clips from Picovoice's wake-word benchmark (Apache-2.0), Mycroft's Precise community data
(public domain parts) and a Speech Commands v0.01 subset (CC BY 4.0, Warden 2017), listed in
``utterances.tsv`` (``utt_id, audio, text, speaker, source, duration_s``) with a fixed
train/test split in ``split.tsv``. Files are read from where they lie; nothing is copied.

The split is the corpus's own, by its ``speaker`` values; only speechcommands identifies
speakers, so picovoice's test clips are split by clip (the same people are likely in train),
and mycroft's test part is one contributor whose words are mostly absent from its train part.
Each entry keeps its ``source`` so that scores can be reported per source
(``asr score --by source``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from asr.data.manifest import validate_entries, write_manifest
from asr.text import normalize_text

SPLITS = ("train", "test")
# where the shared copy lies beside the repository: `asr prepare keywords`'s default
SHARED_COPY = Path(__file__).resolve().parents[3] / "shared" / "data" / "keywords"


def keywords_entries(root: str | os.PathLike) -> dict[str, list[dict]]:
    """The utterances of ``utterances.tsv``, by the split ``split.tsv`` gives them."""
    root = Path(root)
    listing, split_file = root / "utterances.tsv", root / "split.tsv"
    for required in (listing, split_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: not found; is {root} the keywords corpus?")
    split_of = dict(line.split("\t") for line in split_file.read_text().split("\n") if line.strip())
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    with open(listing, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            split = split_of.get(row["utt_id"])
            if split not in splits:
                raise ValueError(f"{split_file}: no train/test split for {row['utt_id']}")
            splits[split].append({
                "id": row["utt_id"],
                "audio": str((root / row["audio"]).resolve()),
                "duration": float(row["duration_s"]),
                "text": normalize_text(row["text"])[0],
                "speaker": row["speaker"],
                "source": row["source"],
            })
    return splits


def prepare_keywords(root: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (validated) to ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {}
    for name, entries in keywords_entries(root).items():
        kept, report = validate_entries(entries)
        print(f"{name}: {report.summary()}")
        paths[name] = out_dir / f"{name}.jsonl"
        write_manifest(paths[name], kept)
        hours = sum(e["duration"] for e in kept) / 3600
        sources = sorted({e["source"] for e in kept})
        print(f"{name}: {len(kept)} utterances, {hours:.2f} h, sources {', '.join(sources)}")
    return paths
