"""Corpora in the shared data folder's common layout: ``utterances.tsv`` + ``split.tsv``.

Three corpora beside the repository (``../shared/data/<folder>``, see each ATTRIBUTION.md) are
laid out alike: ``utterances.tsv`` (with header: ``utt_id, audio, text, speaker, source,
duration_s``, ``audio`` relative to the folder) and ``split.tsv`` (``utt_id<TAB>part``, no
header), the corpus's own speaker-disjoint split:

- ``keywords``: wake and command words (picovoice, mycroft, speechcommands); train / test.
- ``an4``: CMU AN4, census answers and spelled words by 84 US speakers; train / test.
- ``librispeech-clips``: 2.3 h of LibriSpeech read speech by about 265 speakers; train / test
  (test-other clips) / adapt (three speakers' complete chapters, kept out of general training
  for measuring adaptation to one voice).

Files are read from where they lie; nothing is copied. Each entry keeps its ``source``, so that
scores can be reported per source (``asr score --by source``).
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

from asr.data.manifest import validate_entries, write_manifest
from asr.text import normalize_text

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class SharedCorpus:
    folder: str  # under ../shared/data
    parts: tuple[str, ...]  # the values split.tsv may hold


CORPORA = {
    "keywords": SharedCorpus("keywords", ("train", "test")),
    "an4": SharedCorpus("an4", ("train", "test")),
    "librispeech-clips": SharedCorpus("librispeech_clips", ("train", "test", "adapt")),
}


def shared_copy(name: str) -> Path:
    """Where corpus ``name`` lies beside the repository: `asr prepare NAME`'s default root."""
    return SHARED_DATA / CORPORA[name].folder


def corpus_entries(root: str | os.PathLike, parts: tuple[str, ...]) -> dict[str, list[dict]]:
    """The utterances of ``utterances.tsv``, by the part ``split.tsv`` gives each."""
    root = Path(root)
    listing, split_file = root / "utterances.tsv", root / "split.tsv"
    for required in (listing, split_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: not found; is {root} a corpus with utterances.tsv and split.tsv?")
    part_of = dict(line.split("\t") for line in split_file.read_text().split("\n") if line.strip())
    splits: dict[str, list[dict]] = {name: [] for name in parts}
    with open(listing, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            part = part_of.get(row["utt_id"])
            if part not in splits:
                raise ValueError(f"{split_file}: no {'/'.join(parts)} part for {row['utt_id']}")
            splits[part].append({
                "id": row["utt_id"],
                "audio": str((root / row["audio"]).resolve()),
                "duration": float(row["duration_s"]),
                "text": normalize_text(row["text"])[0],
                "speaker": row["speaker"],
                "source": row["source"],
            })
    return splits


def hold_out_speakers(entries: list[dict], count: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split ``entries`` into (kept, held out): every utterance of ``count`` speakers drawn with
    ``seed``, so that a dev set never shares a voice with the training set."""
    speakers = sorted({e["speaker"] for e in entries})
    if count >= len(speakers):
        raise ValueError(f"cannot hold out {count} of {len(speakers)} speakers")
    held = set(random.Random(seed).sample(speakers, count))
    return [e for e in entries if e["speaker"] not in held], [e for e in entries if e["speaker"] in held]


def prepare_shared_corpus(name: str, root: str | os.PathLike, out_dir: str | os.PathLike,
                          dev_speakers: int = 0) -> dict[str, Path]:
    """Write ``PART.jsonl`` (validated) for each of the corpus's parts to ``out_dir``; with
    ``dev_speakers``, that many training speakers move, whole, to ``dev.jsonl``."""
    splits = corpus_entries(root, CORPORA[name].parts)
    if dev_speakers:
        splits["train"], splits["dev"] = hold_out_speakers(splits["train"], dev_speakers)
    out_dir = Path(out_dir)
    paths = {}
    for part, entries in splits.items():
        kept, report = validate_entries(entries)
        print(f"{part}: {report.summary()}")
        paths[part] = out_dir / f"{part}.jsonl"
        write_manifest(paths[part], kept)
        hours = sum(e["duration"] for e in kept) / 3600
        speakers = len({e["speaker"] for e in kept})
        sources = sorted({e["source"] for e in kept})
        print(f"{part}: {len(kept)} utterances, {hours:.2f} h, {speakers} speakers, sources {', '.join(sources)}")
    return paths
