"""JSONL manifests: one utterance per line.

Each line is a JSON object with at least::

    {"id": "1272-128104-0000", "audio": "/abs/path.flac", "duration": 5.855,
     "text": "MISTER QUILTER IS THE APOSTLE", "speaker": "1272"}

``text`` is normalised with :func:`asr.text.normalize_text`. Any other keys (``"offset"``,
``"age"``, ...) are carried through untouched by every function here.

Corpora are never trusted: :func:`validate_entries` drops and counts entries whose audio is
missing or unreadable or whose transcript is empty or holds characters the tokenizer cannot map,
so that one bad file costs one utterance, not a training run.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, AudioError, audio_duration, change_speed, check_audio, load_audio
from asr.fileio import atomic_write
from asr.text import Tokenizer, normalize_text

REQUIRED_KEYS = ("id", "audio", "duration", "text", "speaker")

# Reasons an entry is dropped, in the order they are checked and reported.
DUPLICATE_ID = "duplicate id"
NO_TRANSCRIPT = "no transcript"
EMPTY_TEXT = "empty text"
UNKNOWN_CHARACTERS = "unmappable characters"
MISSING_AUDIO = "missing audio"
EMPTY_AUDIO = "empty audio"
UNREADABLE_AUDIO = "unreadable audio"
NO_DURATION = "no duration"
REASONS = (
    DUPLICATE_ID, NO_TRANSCRIPT, EMPTY_TEXT, UNKNOWN_CHARACTERS,
    MISSING_AUDIO, EMPTY_AUDIO, UNREADABLE_AUDIO, NO_DURATION,
)


class ManifestError(ValueError):
    """A manifest file that cannot be parsed; the message names the file and line."""


def read_manifest(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS) -> list[dict]:
    """Read a JSONL manifest (blank lines are skipped); every entry must have the ``required``
    keys (``asr transcribe --manifest`` needs only ``id`` and ``audio``).

    A relative ``audio`` path is taken from the manifest's folder when the file is there (a
    manifest can move with its audio), else left as written (relative to the working directory).
    """
    entries = []
    folder = Path(path).parent
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}:{number}: expected a JSON object, got {type(entry).__name__}")
        missing = [key for key in required if key not in entry]
        if missing:
            raise ManifestError(f"{path}:{number}: missing key(s) {', '.join(missing)}")
        audio = entry.get("audio")
        if isinstance(audio, str) and audio and not os.path.isabs(audio) and (folder / audio).exists():
            entry["audio"] = str(folder / audio)
        entries.append(entry)
    return entries


def sample_entries(entries: list[dict], sample: int | None, seed: int = 0) -> list[dict]:
    """A seeded random subset of ``sample`` entries (all of them without it), in manifest order."""
    if sample is None or sample >= len(entries):
        return entries
    chosen = sorted(random.Random(seed).sample(range(len(entries)), sample))
    return [entries[i] for i in chosen]


def write_manifest(path: str | os.PathLike, entries: Iterable[dict]) -> None:
    """Write entries as JSONL, atomically: readers see the old file or the new one, never half."""
    with atomic_write(path) as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


@dataclass
class ValidationReport:
    """What :func:`validate_entries` dropped and why; ``summary()`` is for printing."""

    total: int = 0
    kept: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    unknown_characters: Counter = field(default_factory=Counter)
    max_examples: int = 3

    def drop(self, reason: str, entry_id: str, detail: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(f"{entry_id}: {detail}")

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line for the totals, then one line per reason with examples."""
        lines = [f"kept {self.kept} of {self.total} entries, dropped {self.dropped}"]
        for reason in REASONS:
            if self.counts[reason]:
                lines.append(f"  {reason}: {self.counts[reason]} (e.g. {'; '.join(self.examples[reason])})")
        if self.unknown_characters:
            chars = ", ".join(f"{c!r} x{n}" for c, n in self.unknown_characters.most_common())
            lines.append(f"  unmappable characters seen: {chars}")
        return "\n".join(lines)


def _check_audio(path: str) -> tuple[str | None, str, float | None]:
    """Return ``(reason or None, detail, duration)`` for one audio file.

    The header alone misses a truncated FLAC or MP3 (libsndfile finds out only while
    decoding), so the whole file is decoded, with the checks every reader makes
    (:func:`asr.audio.check_audio`); that runs at thousands of times real time.
    """
    if not os.path.exists(path):
        return MISSING_AUDIO, f"{path}: no such file", None
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return EMPTY_AUDIO, f"{path}: empty file (0 bytes)", None
    try:
        duration = check_audio(path)
    except AudioError as err:
        return UNREADABLE_AUDIO, str(err), None
    return None, "", duration


def validate_entries(
    entries: Iterable[dict],
    tokenizer: Tokenizer | None = None,
    check_audio: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], ValidationReport]:
    """Keep the usable entries; drop and count the others (never raises on bad data).

    Args:
        entries: manifest entries; they are not modified.
        tokenizer: characters must be in its alphabet (default: :data:`asr.text.ALPHABET`).
        check_audio: open and decode every audio file (drops missing, empty, truncated or
            corrupt ones and fills in a missing ``duration``); without it only a duration is
            required.
        workers: threads for the audio checks (default: the CPU count); decoding releases
            the GIL, so threads scale without the start-up cost of processes.
        progress: show a tqdm bar over the audio checks.

    Returns:
        ``(kept, report)``: copies of the good entries, in input order, with ``text``
        normalised, and the :class:`ValidationReport` for the caller to print.
    """
    report = ValidationReport()
    seen: set[str] = set()
    text_ok: list[dict] = []
    for entry in entries:
        report.total += 1
        entry_id = str(entry.get("id"))
        if entry_id in seen:
            report.drop(DUPLICATE_ID, entry_id, "id already used by an earlier entry")
            continue
        seen.add(entry_id)
        text = entry.get("text")
        if text is None:
            report.drop(NO_TRANSCRIPT, entry_id, f"{entry.get('audio')}: no transcript line")
            continue
        normalised, unknown = normalize_text(text)
        if tokenizer is not None:
            unknown = Counter(c for c in normalised if c not in tokenizer.alphabet)
        if not normalised:
            report.drop(EMPTY_TEXT, entry_id, f"{text!r}")
            continue
        if unknown:
            report.unknown_characters.update(unknown)
            report.drop(UNKNOWN_CHARACTERS, entry_id, f"{''.join(sorted(unknown))!r} in {text!r}")
            continue
        text_ok.append({**entry, "text": normalised})

    if check_audio:
        paths = [str(entry.get("audio")) for entry in text_ok]
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            results = list(
                tqdm(pool.map(_check_audio, paths), total=len(paths), desc="checking audio",
                     unit="file", disable=not progress)
            )
    else:
        results = [(None, "", None)] * len(text_ok)

    kept = []
    for entry, (reason, detail, duration) in zip(text_ok, results):
        if reason is not None:
            report.drop(reason, entry["id"], detail)
            continue
        if entry.get("duration") is None:
            entry["duration"] = duration
        if not isinstance(entry["duration"], (int, float)) or not math.isfinite(entry["duration"]) \
                or entry["duration"] <= 0:
            report.drop(NO_DURATION, entry["id"], f"duration {entry['duration']!r}")
            continue
        kept.append(entry)
    report.kept = len(kept)
    return kept, report


def librispeech_tree_to_entries(root: str | os.PathLike) -> list[dict]:
    """Entries for every utterance under a LibriSpeech-layout tree, sorted by id.

    The layout is ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` next to
    ``SPEAKER-CHAPTER.trans.txt`` (lines ``ID TEXT``), at any depth under ``root``. Durations
    come from the file headers (no decoding). Nothing is dropped here, so that
    :func:`validate_entries` counts every problem in one report: a transcript line whose audio
    is missing gets ``duration`` None, and audio without a transcript line gets ``text`` None.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    entries: dict[str, dict] = {}
    for trans in sorted(root.rglob("*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise ManifestError(f"{trans}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
        for line in lines:
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            entries[utt_id] = _entry(utt_id, trans.parent / f"{utt_id}.flac", normalize_text(text)[0])
    for flac in sorted(root.rglob("*.flac")):
        if flac.stem not in entries:
            entries[flac.stem] = _entry(flac.stem, flac, None)
    return [entries[utt_id] for utt_id in sorted(entries)]


def _entry(utt_id: str, audio: Path, text: str | None) -> dict:
    try:
        duration = audio_duration(audio)
    except AudioError:
        duration = None  # validation decides why, with the full check
    return {"id": utt_id, "audio": str(audio), "duration": duration, "text": text,
            "speaker": utt_id.split("-")[0]}


# ---------------------------------------------------------------------------------------------
# Decoded copies


def _cached_name(entry_id: str, speed: float) -> str:
    return f"{entry_id}.flac" if speed == 1.0 else f"sp{speed:g}-{entry_id}.flac"


def _write_copy(job: tuple[str, float, str]) -> float:
    """Decode one file, change its speed, write 16-bit FLAC atomically; returns the duration."""
    source, speed, target = job
    if os.path.exists(target):
        return audio_duration(target)
    torch.set_num_threads(1)
    audio = change_speed(load_audio(source), speed).clamp(-1.0, 1.0).numpy()
    tmp = f"{target}.tmp"
    sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, target)
    return len(audio) / SAMPLE_RATE


def cache_audio(entries: list[dict], out_dir: str | os.PathLike, speeds: Iterable[float] = (1.0,),
                jobs: int | None = None) -> list[dict]:
    """Decode each entry's audio once into ``out_dir`` as 16 kHz mono 16-bit FLAC, at each of
    ``speeds``, and return the entries that point at the copies.

    Training reads every utterance once per epoch; decoding a compressed source and resampling
    for speed perturbation each time costs the loader several times the CPU of reading FLAC
    (``tools/bench_loader.py``), CPU that the model's processes share on a small machine. Copies at
    speeds other than 1 are Kaldi's offline speed perturbation (Ko et al., 2015): their ids get
    an ``sp<speed>-`` prefix, their speaker too (a speed change makes another voice) and
    ``speed`` is recorded. Existing copies are kept, so an interrupted run resumes where it
    stopped. Paths in the returned entries are absolute.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    speeds = list(speeds)
    work = [(entry, speed, str(out_dir / _cached_name(entry["id"], speed))) for speed in speeds for entry in entries]
    with ProcessPoolExecutor(jobs or os.cpu_count()) as pool:
        durations = list(tqdm(pool.map(_write_copy, [(e["audio"], s, t) for e, s, t in work], chunksize=16),
                              total=len(work), desc="decode audio", unit="file", mininterval=2.0))
    copies = []
    for (entry, speed, target), duration in zip(work, durations):
        copy = {**entry, "audio": target, "duration": round(duration, 4)}
        if speed != 1.0:
            copy.update(id=f"sp{speed:g}-{entry['id']}", speed=speed)
            if "speaker" in entry:
                copy["speaker"] = f"sp{speed:g}-{entry['speaker']}"
        copies.append(copy)
    return copies
