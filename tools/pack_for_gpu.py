"""Pack the english recipe's training audio compactly for a GPU machine that sees only what is
carried to it (64 MiB in all, the repository's tracked files and the wheels included).

Every training utterance of the real corpora (the LibriSpeech clips' train and dev parts, AN4's
train part, speechocean762 train and dev, the keywords' train part, FSDD's train part) and as much of the synthetic corpus (train; its dev set whole)
as the budget leaves, re-encoded as 16 kHz mono Ogg Opus at ``--kbps``, with one manifest per
set whose audio paths are relative to the pack folder (``asr`` resolves them from the
manifest's folder, so the pack works wherever it lands)::

    OUT/speechocean762_train.jsonl  OUT/audio/speechocean762_train/<id>.opus  ...
    OUT/pack.json                   kbps, hours, bytes (audio and manifest) per set, the budget

The real corpora are prepared here as the english recipe's stage 1 does (LIBRISPEECH_CLIPS_ROOT,
AN4_ROOT, SPEECHOCEAN762_ROOT, KEYWORDS_ROOT, FSDD_ROOT, default ../shared/data/<corpus> beside
the repository); the synthetic corpus is read
from ``--synthetic`` (the synthetic recipe's stage 1 makes it). The real sets must fit, else
nothing is written beyond them and the tool fails; the synthetic train set is a seeded random
subset that fills what is left.

    python tools/pack_for_gpu.py --download-wheels     # .whl/ and .carry/english, budget from the repository
    python tools/pack_for_gpu.py --wheels-only         # .whl/ alone (for tools/bench_loader.py on the GPU)
    python tools/pack_for_gpu.py --out .carry/english --budget-mib 30 --kbps 12
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAVEL_LIMIT = 64 * 2**20  # what the device tool carries to the machine, all together
MARGIN = 2 * 2**20
OPUS_MAX_BPS, OPUS_MIN_BPS = 256_000, 6_000  # libsndfile maps compression level 0..1 onto this range
# what asr's training imports and the GPU machine's image lacks (click, numpy, typing-extensions
# are there), pinned as pyproject.toml and the development environment have them
WHEELS = ["soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12", "jiwer==4.0.0", "rapidfuzz==3.14.6"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def download_wheels(folder: Path) -> None:
    """The GPU machine's missing packages as CPython 3.12 x86-64 wheels (it has no network)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder), *WHEELS],
                   check=True)


def travel_budget(repo: Path = ROOT, exclude: Path | None = None, limit: int = TRAVEL_LIMIT,
                  margin: int = MARGIN, wheels: Path | None = None) -> tuple[int, dict]:
    """Bytes left for a pack: ``limit`` less what travels anyway (the repository's tracked and
    untracked-not-ignored files, the wheel folder) and a ``margin``. Returns (budget, parts)."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    skip = exclude.resolve() if exclude is not None else None
    files = [repo / name for name in listed if name]
    tree = sum(f.stat().st_size for f in files
               if f.is_file() and not f.is_symlink() and (skip is None or skip not in f.resolve().parents))
    wheels = wheels if wheels is not None else repo / ".whl"
    wheel_bytes = sum(f.stat().st_size for f in wheels.glob("*.whl")) if wheels.is_dir() else 0
    parts = {"limit": limit, "repository": tree, "wheels": wheel_bytes, "margin": margin}
    return limit - tree - wheel_bytes - margin, parts


def fill(entries: list[dict], bytes_per_second: float, budget: int, seed: int = 0) -> list[dict]:
    """A seeded random subset of ``entries`` whose estimated size (duration x bytes_per_second)
    fits ``budget``, in manifest order."""
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    chosen, used = [], 0.0
    for i in order:
        size = entries[i]["duration"] * bytes_per_second
        if used + size > budget:
            continue
        chosen.append(i)
        used += size
    return [entries[i] for i in sorted(chosen)]


def compression_level(kbps: float) -> float:
    return min(1.0, max(0.0, (OPUS_MAX_BPS - kbps * 1000) / (OPUS_MAX_BPS - OPUS_MIN_BPS)))


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF] ^ ((crc << 8) & 0xFFFFFFFF)
    return crc


_CRC_TABLE = []
for _i in range(256):
    _r = _i << 24
    for _ in range(8):
        _r = ((_r << 1) ^ 0x04C11DB7) if _r & 0x80000000 else _r << 1
    _CRC_TABLE.append(_r & 0xFFFFFFFF)


def strip_tag_padding(data: bytes) -> bytes:
    """An Ogg Opus file without the zero padding libsndfile leaves after its OpusTags (about
    800 bytes a file, as much as a short clip's audio at 12 kbps); anything else is returned as is."""
    second = 27 + data[26] + sum(data[27 : 27 + data[26]])  # the page after OpusHead's
    if data[second : second + 4] != b"OggS" or data[second + 5] != 0:
        return data
    count = data[second + 26]
    lacing = data[second + 27 : second + 27 + count]
    start = second + 27 + count
    end = start + sum(lacing)
    packet = data[start:end]
    if not packet.startswith(b"OpusTags") or lacing[-1] == 255:  # one whole packet on the page, or leave it
        return data
    used = 12 + int.from_bytes(packet[8:12], "little")  # vendor string
    for _ in range(int.from_bytes(packet[used : used + 4], "little")):
        used += 4 + int.from_bytes(packet[used + 4 : used + 8], "little")
    packet = packet[: used + 4]
    lacing = bytes([255] * (len(packet) // 255) + [len(packet) % 255])
    page = bytearray(data[second : second + 26] + bytes([len(lacing)]) + lacing + packet)
    page[22:26] = bytes(4)
    page[22:26] = _ogg_crc(page).to_bytes(4, "little")
    return data[:second] + bytes(page) + data[end:]


def _encode(job: tuple[str, str, float]) -> int:
    import io

    import soundfile as sf

    from asr.audio import load_audio

    source, target, level = job
    buffer = io.BytesIO()
    sf.write(buffer, load_audio(source).numpy(), 16000, format="OGG", subtype="OPUS", compression_level=level)
    Path(target).write_bytes(strip_tag_padding(buffer.getvalue()))
    return os.path.getsize(target)


def encode_set(name: str, entries: list[dict], out: Path, kbps: float, jobs: int) -> tuple[list[dict], list[int]]:
    """Re-encode a set's audio into ``out/audio/<name>/``; entries with relative paths, sizes."""
    folder = out / "audio" / name
    folder.mkdir(parents=True, exist_ok=True)
    level = compression_level(kbps)
    work = [(e["audio"], str(folder / f"{e['id']}.opus"), level) for e in entries]
    with ProcessPoolExecutor(jobs) as pool:
        sizes = list(pool.map(_encode, work, chunksize=16))
    packed = [{**e, "audio": f"audio/{name}/{e['id']}.opus"} for e in entries]
    return packed, sizes


def real_manifests(tmp: Path) -> dict[str, Path]:
    """The real corpora's training and dev manifests, prepared as the english recipe's stage 1 does."""
    from asr.data.fsdd import prepare_fsdd
    from asr.data.shared_corpus import SHARED_DATA, prepare_shared_corpus
    from asr.data.speechocean762 import prepare_speechocean762

    root = lambda corpus: os.environ.get(f"{corpus.upper()}_ROOT", str(SHARED_DATA / corpus))  # noqa: E731
    ls = prepare_shared_corpus("librispeech-clips", root("librispeech_clips"), tmp / "librispeech_clips", dev_speakers=20)
    an = prepare_shared_corpus("an4", root("an4"), tmp / "an4")
    so = prepare_speechocean762(root("speechocean762"), tmp / "speechocean762", dev_speakers=6, progress=False)
    kw = prepare_shared_corpus("keywords", root("keywords"), tmp / "keywords")
    fs = prepare_fsdd(root("fsdd"), tmp / "fsdd")
    return {"librispeech-clips_train": ls["train"], "librispeech-clips_dev": ls["dev"], "an4_train": an["train"],
            "speechocean762_train": so["train"], "speechocean762_dev": so["dev"],
            "keywords_train": kw["train"], "fsdd_train": fs["train"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".carry" / "english", help="pack folder (replaced)")
    p.add_argument("--kbps", type=float, default=12.0, help="Opus bitrate (default: 12)")
    p.add_argument("--budget-mib", type=float,
                   help="size limit of the pack (default: 64 MiB less the repository, .whl/ and a 2 MiB margin)")
    p.add_argument("--synthetic", type=Path, default=ROOT / "recipes" / "synthetic" / "data" / "default",
                   help="synthetic corpus folder with train.jsonl and dev.jsonl (none: --synthetic '')")
    p.add_argument("--sample", type=int, help="at most this many utterances per set (a tiny pack for tests)")
    p.add_argument("--real", nargs="*", metavar="NAME=MANIFEST",
                   help="real sets to pack instead of preparing the corpora (tests)")
    p.add_argument("--jobs", type=int, default=1, help="encoding processes (default: 1)")
    p.add_argument("--download-wheels", action="store_true",
                   help=f"first download the wheels the GPU machine lacks into .whl/ ({', '.join(WHEELS)})")
    p.add_argument("--wheels-only", action="store_true", help="download the wheels into .whl/ and stop (no pack)")
    args = p.parse_args(argv)
    if args.download_wheels or args.wheels_only:
        download_wheels(ROOT / ".whl")
        if args.wheels_only:
            return 0

    if args.budget_mib is not None:
        budget, parts = int(args.budget_mib * 2**20), {"given": int(args.budget_mib * 2**20)}
    else:
        budget, parts = travel_budget(exclude=args.out)
    from asr.data.manifest import read_manifest, sample_entries, write_manifest

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        sources = (dict(item.split("=", 1) for item in args.real) if args.real is not None
                   else real_manifests(Path(tmp)))
        sets = {name: sample_entries(read_manifest(path), args.sample) for name, path in sources.items()}
    synthetic = {}
    if str(args.synthetic) not in ("", "."):
        for split in ("dev", "train"):
            synthetic[f"synthetic_{split}"] = sample_entries(read_manifest(args.synthetic / f"{split}.jsonl"), args.sample)
        sets["synthetic_dev"] = synthetic["synthetic_dev"]

    summary: dict[str, dict] = {}

    def record(name: str, entries: list[dict]) -> None:
        packed, sizes = encode_set(name, entries, args.out, args.kbps, args.jobs)
        write_manifest(args.out / f"{name}.jsonl", packed)
        summarise(name, packed, sum(sizes))

    def summarise(name: str, packed: list[dict], audio_bytes: int) -> None:
        manifest = (args.out / f"{name}.jsonl").stat().st_size
        hours = sum(e["duration"] for e in packed) / 3600
        summary[name] = {"utterances": len(packed), "hours": round(hours, 3), "bytes": audio_bytes + manifest}
        print(f"{name}: {len(packed)} utterances, {hours:.2f} h, {(audio_bytes + manifest) / 2**20:.2f} MiB", flush=True)

    used = lambda: sum(s["bytes"] for s in summary.values())  # noqa: E731  audio and manifests
    for name, entries in sets.items():
        record(name, entries)
    if used() > budget:
        print(f"error: the real sets and the synthetic dev set take {used() / 2**20:.1f} MiB, over the budget of "
              f"{budget / 2**20:.1f} MiB; lower --kbps", file=sys.stderr)
        return 1
    if "synthetic_train" in synthetic:
        rate = used() / sum(s["hours"] * 3600 for s in summary.values())  # bytes per second of audio so far
        chosen = fill(synthetic["synthetic_train"], rate, int((budget - used()) * 0.98))
        if chosen:
            record("synthetic_train", chosen)
        if used() > budget:  # the estimate was short: drop the last utterances until it fits
            path = args.out / "synthetic_train.jsonl"
            packed = read_manifest(path)
            while used() > budget:
                os.unlink(packed.pop()["audio"])
                write_manifest(path, [{**e, "audio": os.path.relpath(e["audio"], args.out)} for e in packed])
                summarise("synthetic_train", packed, sum(os.path.getsize(e["audio"]) for e in packed))
    total = used()
    pack = {"kbps": args.kbps, "sets": summary, "total_bytes": total, "budget_bytes": budget, "budget_parts": parts}
    (args.out / "pack.json").write_text(json.dumps(pack, indent=1) + "\n")
    hours = sum(s["hours"] for s in summary.values())
    print(f"{args.out}: {hours:.2f} h in {total / 2**20:.2f} MiB "
          f"(budget {budget / 2**20:.2f} MiB: " + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in parts.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
