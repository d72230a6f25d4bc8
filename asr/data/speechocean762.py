"""speechocean762: English read by 250 native Mandarin speakers, half of them children.

J. Zhang et al., "speechocean762: An Open-Source Non-native English Speech Corpus For
Pronunciation Assessment", Interspeech 2021; OpenSLR resource 101. Free for commercial and
non-commercial use (its authors' statement). Files are read from where they lie (e.g. the
shared copy ``../shared/data/speechocean762``, see its ATTRIBUTION.md); nothing is copied.

Layout (the original download, or the shared copy with Ogg Opus instead of WAV)::

    WAVE/SPEAKER0001/000010011.WAV     audio (16 kHz mono)
    train/ and test/                   Kaldi-style: text, wav.scp, utt2spk, spk2age, spk2gender

``wav.scp`` paths are relative to the corpus root. The official split has 125 speakers and
2,500 utterances on each side. Transcripts are the prompts the speakers read.

Children and adults: the corpus says half of its speakers are children but gives no age
limit. Its speakers are 6-15 or 19-43 years old, nobody 16-18, so ``age <= 15`` is a child
(:data:`CHILD_MAX_AGE`): 122 of the 250 speakers (58 in train, 64 in test).
"""

from __future__ import annotations

import os
from pathlib import Path

from asr.data.librispeech import BASE_URL, CHECKSUM_ALGORITHM, DownloadError, download_file, extract_archive
from asr.data.manifest import validate_entries, write_manifest

SPLITS = ("train", "test")
ARCHIVE = "101/speechocean762.tar.gz"  # relative to BASE_URL or a mirror
# OpenSLR publishes no checksum for resource 101 (its page lists none, and nothing we searched
# quotes one), so a download is verified only against an MD5 given by the caller (`asr prepare
# speechocean762 --md5`). To pin it: set this to the `md5sum speechocean762.tar.gz` of a
# download you trust.
MD5: str | None = None
# where the shared copy lies beside the repository: `asr prepare speechocean762`'s default
SHARED_COPY = Path(__file__).resolve().parents[3] / "shared" / "data" / "speechocean762"
CHILD_MAX_AGE = 15


def download_speechocean762(
    target_dir: str | os.PathLike,
    mirror: str | None = None,
    *,
    checksum: str | None = MD5,
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Download (resumable), verify and extract the OpenSLR tarball; return the corpus dir.

    The corpus lands in ``target_dir/speechocean762/`` and ``target_dir/speechocean762.done``
    marks it complete, so a re-run downloads nothing.

    Args:
        mirror: base URL replacing :data:`asr.data.librispeech.BASE_URL` (same relative
            path ``101/speechocean762.tar.gz``).
        checksum: MD5 of the tarball; without one the download is accepted with an
            :class:`~asr.data.librispeech.UnverifiedDownloadWarning`.

    Raises:
        ChecksumError: the tarball does not match ``checksum`` (it is deleted).
        DownloadError: HTTP or connection failure, or an archive that is corrupt, unsafe or
            not the corpus.
    """
    target_dir = Path(target_dir)
    corpus = target_dir / "speechocean762"
    done = target_dir / "speechocean762.done"
    if done.exists():
        print(f"speechocean762: already extracted ({done.name} exists), skipping")
        return corpus
    base = (mirror or BASE_URL).rstrip("/") + "/"
    archive = download_file(base + ARCHIVE, target_dir / "speechocean762.tar.gz", checksum, CHECKSUM_ALGORITHM,
                            progress)
    extract_archive(archive, target_dir, checksum is not None, progress)
    missing = [f"{split}/wav.scp" for split in SPLITS if not (corpus / split / "wav.scp").is_file()]
    if missing:
        raise DownloadError(f"{archive}: archive holds no speechocean762/{', speechocean762/'.join(missing)}")
    done.touch()
    if not keep_archive:
        archive.unlink()
    return corpus


def _read_table(path: Path) -> dict[str, str]:
    """A Kaldi table (``key<TAB or space>value`` lines); an absent file is an empty table."""
    if not path.is_file():
        return {}
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.strip().partition("\t" if "\t" in line else " ")
        if key:
            table[key] = value.strip()
    return table


def age_group(age: int | None) -> str:
    """``"child"`` (age <= :data:`CHILD_MAX_AGE`), ``"adult"``, or ``"unknown"``."""
    if age is None:
        return "unknown"
    return "child" if age <= CHILD_MAX_AGE else "adult"


def speechocean762_entries(corpus_dir: str | os.PathLike, split: str) -> list[dict]:
    """Entries of one split, in ``wav.scp`` order, then transcripts without audio.

    Nothing is dropped here so that :func:`asr.data.manifest.validate_entries` counts every
    problem: an utterance missing from ``wav.scp`` gets ``audio`` None, one missing from
    ``text`` gets ``text`` None. A speaker without a (numeric) age gets ``age`` None and
    ``age_group`` "unknown".
    """
    corpus_dir = Path(corpus_dir).resolve()
    kaldi = corpus_dir / split
    if not (kaldi / "wav.scp").is_file() and not (kaldi / "text").is_file():
        raise FileNotFoundError(f"{kaldi}: no wav.scp or text; is {corpus_dir} a speechocean762 folder?")
    wavs, texts = _read_table(kaldi / "wav.scp"), _read_table(kaldi / "text")
    speakers, ages = _read_table(kaldi / "utt2spk"), _read_table(kaldi / "spk2age")
    entries = []
    for utt_id in [*wavs, *(u for u in texts if u not in wavs)]:
        speaker = speakers.get(utt_id)
        age = ages.get(speaker, "")
        age = int(age) if age.isdigit() else None
        entries.append({
            "id": utt_id,
            "audio": str(corpus_dir / wavs[utt_id]) if utt_id in wavs else None,
            "duration": None,  # validation decodes every file and fills it in
            "text": texts.get(utt_id),
            "speaker": speaker,
            "age": age,
            "age_group": age_group(age),
        })
    return entries


def _spread(entries: list[dict], count: int) -> list[dict]:
    """``count`` entries evenly spaced over the list (which is grouped by speaker), so that a
    small subset still holds many speakers, children and adults."""
    if count >= len(entries):
        return entries
    return [entries[i * len(entries) // count] for i in range(count)]


def _dev_speakers(entries: list[dict], count: int) -> set[str]:
    """``count`` training speakers held out for validation, half children, half adults:
    the first of each group in speaker order (deterministic)."""
    by_group: dict[str, list[str]] = {"child": [], "adult": []}
    for speaker, group in sorted({(e["speaker"], e["age_group"]) for e in entries if e["speaker"]}):
        if group in by_group:
            by_group[group].append(speaker)
    children = by_group["child"][: count // 2]
    return set(children + by_group["adult"][: count - len(children)])


def prepare_speechocean762(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dev_speakers: int = 0,
    max_utterances: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write validated ``train.jsonl`` and ``test.jsonl`` (and ``dev.jsonl``) to ``out_dir``.

    Entries carry ``id, audio, duration, text, speaker`` and ``age`` (int or None) and
    ``age_group`` ("child", "adult", "unknown") for a breakdown with ``asr score --by
    age_group``. Bad entries are dropped and counted (the report is printed); nothing raises
    on bad data. Manifests are rewritten each call (the recipe's marker makes it run once).

    Args:
        dev_speakers: move this many training speakers (half children) to ``dev.jsonl``,
            for validation during training; 0 writes no dev set.
        max_utterances: keep at most this many utterances per split, spread evenly over its
            speakers (a CI-sized subset); applied before the audio checks, so it is fast.

    Returns:
        split name -> manifest path.
    """
    out_dir = Path(out_dir)
    splits = {split: speechocean762_entries(corpus_dir, split) for split in SPLITS}
    if dev_speakers:
        held_out = _dev_speakers(splits["train"], dev_speakers)
        splits["dev"] = [e for e in splits["train"] if e["speaker"] in held_out]
        splits["train"] = [e for e in splits["train"] if e["speaker"] not in held_out]
    manifests = {}
    for split, entries in splits.items():
        if max_utterances is not None:
            entries = _spread(entries, max_utterances)
        kept, report = validate_entries(entries, progress=progress)
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], kept)
        children, adults = (sum(e["age_group"] == group for e in kept) for group in ("child", "adult"))
        unknown = len(kept) - children - adults
        hours = sum(e["duration"] for e in kept) / 3600
        print(f"{split}: {report.summary()}")
        print(f"{split}: {len(kept)} utterances ({children} by children, {adults} by adults"
              + (f", {unknown} of unknown age" if unknown else "")
              + f"), {len({e['speaker'] for e in kept})} speakers, {hours:.2f} h -> {manifests[split]}")
    return manifests
