"""Measure `asr adapt`: WER on one speaker's held-out sentences against minutes of that speaker's
speech used to adapt, and what the adapted model loses on other speakers (docs/adapt.md).

    python tools/adapt_curves.py --speaker 19 --minutes 0 2 5 --out adapt.jsonl [--layers lhuc ...]

Speakers are librispeech_clips' `adapt` part (three speakers never heard by the default models):
every fourth of a speaker's utterances (in id order) is its test set, capped at --test-minutes;
the first M minutes of the rest adapt. `--other` also scores the adapted model on a fixed set
of other speakers (librispeech_clips test-other and speechocean762 test). Each run appends one
JSON line: the method, minutes, adaptation seconds, test WER with the model's LM and greedy.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import torch

from asr.adapt import AdaptConfig, adapt
from asr.checkpoint import write_checkpoint
from asr.data.manifest import write_manifest
from asr.pretrained import default_model
from asr.text import normalize_text
from asr.transcribe import Transcriber

DATA = Path(os.environ.get("ASR_DATA", Path(__file__).resolve().parents[1] / "../shared/data")).resolve()
CLIPS = DATA / "librispeech_clips"
OCEAN = DATA / "speechocean762"


def clips(part: str) -> list[dict]:
    split = dict(line.rstrip("\n").split("\t") for line in open(CLIPS / "split.tsv"))
    with open(CLIPS / "utterances.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return sorted(({"id": r["utt_id"], "audio": str(CLIPS / r["audio"]), "text": r["text"], "speaker": r["speaker"],
                    "duration": float(r["duration_s"])} for r in rows if split.get(r["utt_id"]) == part),
                  key=lambda e: e["id"])


def folder_utterances(folder: str) -> list[dict]:
    """A folder of NAME.wav + NAME.txt (what `asr record` writes), in name order."""
    from asr.adapt import find_recordings
    from asr.audio import audio_duration
    from asr.text import ALPHABET

    return [{"id": r.id, "audio": r.audio, "text": r.text, "duration": audio_duration(r.audio)}
            for r in find_recordings(folder, ALPHABET)]


def speaker_sets(speaker: str, test_minutes: float) -> tuple[list[dict], list[dict]]:
    """(adaptation pool, test set) of one `adapt` speaker, or of a folder of recordings."""
    utts = folder_utterances(speaker) if Path(speaker).is_dir() else \
        [e for e in clips("adapt") if e["speaker"] == speaker]
    test, pool, seconds = [], [], 0.0
    for i, e in enumerate(utts):
        if i % 4 == 0 and seconds < test_minutes * 60:
            test.append(e)
            seconds += e["duration"]
        else:
            pool.append(e)
    return pool, test


def first_minutes(pool: list[dict], minutes: float) -> list[dict]:
    chosen, seconds = [], 0.0
    for e in pool:
        if seconds >= minutes * 60:
            break
        chosen.append(e)
        seconds += e["duration"]
    return chosen


def other_speakers(n_clips: int, n_ocean: int) -> list[dict]:
    """A fixed set of other voices: test-other clips (first of each chapter in turn) and
    speechocean762 test utterances (every 50th)."""
    other = clips("test")
    by_chapter: dict[str, list[dict]] = {}
    for e in other:
        by_chapter.setdefault(e["id"].rsplit("-", 1)[0], []).append(e)
    native = [utts[i] for i in range(10) for utts in by_chapter.values() if i < len(utts)][:n_clips]
    rows = [line.rstrip("\n").split("\t") for line in open(OCEAN / "test.tsv")][1:]
    ocean = [{"id": Path(p).stem, "audio": str(OCEAN / p), "text": t} for p, t in rows[::50][:n_ocean]]
    return native + ocean


def wer(model: Path, entries: list[dict], greedy: bool) -> float:
    transcriber = Transcriber(model, greedy=greedy)
    hyps = [t.text for _, t in transcriber.transcribe_files([e["audio"] for e in entries], batch_size=8)]
    return round(jiwer.wer([normalize_text(e["text"])[0] for e in entries], hyps), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speaker", required=True, help="a librispeech_clips `adapt` speaker, or a folder of "
                        "NAME.wav + NAME.txt recordings of one voice")
    parser.add_argument("--minutes", type=float, nargs="+", default=[0, 2, 5])
    parser.add_argument("--test-minutes", type=float, default=5.0)
    parser.add_argument("--streaming", action="store_true", help="adapt the embedded streaming model")
    parser.add_argument("--other", action="store_true", help="also score other speakers")
    parser.add_argument("--label", default="", help="a name for the method in the output")
    parser.add_argument("--out", required=True, help="JSON lines appended here")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: one per core; on a shared machine 1 is much faster)")
    for f in dataclasses.fields(AdaptConfig):
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "float | None": float}.get(f.type, type(f.default))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = AdaptConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AdaptConfig)})
    base = default_model("streaming" if args.streaming else "offline")
    pool, test = speaker_sets(args.speaker, args.test_minutes)
    others = other_speakers(30, 30) if args.other else []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            row = {"speaker": args.speaker, "minutes": minutes, "label": args.label, "model": base.name,
                   "method": dataclasses.asdict(config), "threads": torch.get_num_threads(),
                   "test_utts": len(test), "test_minutes": round(sum(e["duration"] for e in test) / 60, 2)}
            model = base
            if minutes > 0:
                chosen = first_minutes(pool, minutes)
                manifest = Path(tmp) / "adapt.jsonl"
                write_manifest(manifest, chosen)
                start = time.perf_counter()
                result = adapt(base, manifest, config)
                row.update(adapt_seconds=round(time.perf_counter() - start, 1), updates=result.steps,
                           adapt_minutes=round(sum(e["duration"] for e in chosen) / 60, 2),
                           held_out_greedy=result.held_out)
                model = Path(tmp) / "adapted.pt"
                write_checkpoint(model, result.checkpoint)
            row.update(wer_lm=wer(model, test, greedy=False), wer_greedy=wer(model, test, greedy=True))
            if others:
                row.update(other_wer_lm=wer(model, others, greedy=False), other_utts=len(others))
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
