"""The training data pipeline's throughput: the loader alone, or the Trainer end to end.

Loader (default): the Trainer's DataLoader over a manifest (FLAC decoding, padding, the
training config's augmentation, collation) for ``--batches`` batches after ``--warmup``. For
each place the augmentation can run (``--augment-on``: in the loader workers, or left to the
training device), reports audio seconds delivered per second, per worker CPU-second (the
per-core throughput, which holds however loaded the machine is), the CPU cores the workers
used, and the device's time to augment a batch. Audio seconds are those the model trains on
(after speed perturbation).

End to end (``--train``): the real Trainer (model, CMVN, optimizer, loader, its training step)
for ``--steps`` steps after ``--warmup``; reports audio hours trained per device hour, the
time each step waited for the loader, the step time, the CPU cores the workers used and, on
CUDA, the GPU busy share (nvidia-smi).

``--fake-tree DIR`` first writes a LibriSpeech-layout tree of speech-like noise (FLAC,
LibriSpeech's utterance durations, random transcripts) and its manifest ``DIR/train.jsonl``,
listing each file ``--fake-repeat`` times: a corpus for machines without espeak-ng or a
download (decoding cost does not depend on what the audio says).

    # a 1-hour tree listed 40 times, then the loader with 1 worker, augmenting in it or not
    python tools/bench_loader.py --fake-tree data/fake --fake-utterances 300 --fake-repeat 40
    python tools/bench_loader.py --manifest data/fake/train.jsonl --workers 1 --batches 10
    # end to end on a GPU: conf/blstm_ctc.yaml's model and batch, 12 workers
    python tools/bench_loader.py --manifest data/fake/train.jsonl --train --device cuda --workers 12 --steps 20
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from asr.config import load_config
from asr.data.loader import SPEEDS, BucketBatchSampler, UtteranceDataset, collate
from asr.data.manifest import librispeech_tree_to_entries, read_manifest, write_manifest
from asr.text import Tokenizer
from asr.train_setup import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402  (a sibling tool)
    DEFAULT_CONFIG,
    MAX_SECONDS,
    MEAN_SECONDS,
    MIN_SECONDS,
    STD_SECONDS,
    GpuUtilisation,
)

SAMPLE_RATE = 16000
UTTERANCES_PER_CHAPTER = 20
LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


# ---------------------------------------------------------------------------------------------
# A fake LibriSpeech tree


def speech_like_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``(samples,)`` float32: noise whose energy falls with frequency as in speech, under a
    syllable-rate envelope with pauses between words, over a faint floor."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(1 + np.fft.rfftfreq(n, 1 / SAMPLE_RATE) / 300)  # pink-ish above 300 Hz
    tilted = np.fft.irfft(spectrum, n)
    syllables = np.abs(np.sin(np.pi * np.arange(n) * rng.uniform(3, 6) / SAMPLE_RATE))
    words = np.repeat(rng.random(n // 4000 + 1) > 0.2, 4000)[:n]  # 250 ms slots, a fifth of them silent
    level = 10 ** (rng.uniform(-30, -10) / 20)
    audio = level * tilted / tilted.std() * syllables * words + 1e-3 * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32)


def random_transcript(seconds: float, rng: np.random.Generator) -> str:
    """Random words of 2-9 letters, 15 characters per second as in read English."""
    words, length = [], 0
    while length < 15 * seconds:
        word = "".join(rng.choice(LETTERS, rng.integers(2, 10)))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _write_fake_chapter(job: tuple[Path, int, int, int]) -> None:
    root, chapter, count, seed = job
    rng = np.random.default_rng([seed, chapter])
    speaker = 1000 + chapter // 4
    folder = root / str(speaker) / str(chapter)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (MEAN_SECONDS / STD_SECONDS) ** 2
    lines = []
    for utt in range(count):
        seconds = float(np.clip(rng.gamma(shape, MEAN_SECONDS / shape), MIN_SECONDS, MAX_SECONDS))
        utt_id = f"{speaker}-{chapter}-{utt:04d}"
        sf.write(folder / f"{utt_id}.flac", speech_like_noise(seconds, rng), SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{utt_id} {random_transcript(seconds, rng)}\n")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))


def write_fake_tree(root: Path, utterances: int, repeat: int, seed: int, jobs: int) -> Path:
    """Write ``utterances`` FLAC files in LibriSpeech layout under ``root`` and ``root/train.jsonl``
    listing each ``repeat`` times (ids suffixed ``-rK``); returns the manifest's path."""
    chapters = [(root, c, min(UTTERANCES_PER_CHAPTER, utterances - c * UTTERANCES_PER_CHAPTER), seed)
                for c in range(-(-utterances // UTTERANCES_PER_CHAPTER))]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        pool.map(_write_fake_chapter, chapters)
    entries = librispeech_tree_to_entries(root)
    manifest = root / "train.jsonl"
    write_manifest(manifest, [{**e, "id": f"{e['id']}-r{k}"} for k in range(repeat) for e in entries])
    hours = sum(e["duration"] for e in entries) / 3600
    print(f"wrote {len(entries)} FLAC files ({hours:.2f} h) under {root}; {manifest} lists each {repeat} times "
          f"({hours * repeat:.1f} h)")
    return manifest


# ---------------------------------------------------------------------------------------------
# Measuring


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / ticks


def worker_pids(iterator) -> list[int]:
    """The DataLoader iterator's worker processes (none when it loads in the main process)."""
    return [w.pid for w in getattr(iterator, "_workers", [])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_dataset(config: TrainConfig, manifest: str) -> tuple[UtteranceDataset, BucketBatchSampler]:
    """The Trainer's dataset and sampler (no CTC filtering: the benchmark's transcripts fit)."""
    entries = read_manifest(manifest)
    augment = config.data.augment
    slowest = min(SPEEDS) if augment.speed_perturb else 1.0
    dataset = UtteranceDataset(entries, Tokenizer(), augment, seed=config.seed)
    sampler = BucketBatchSampler([e["duration"] + 2 * augment.pad_s for e in entries], config.data.max_frames,
                                 seed=config.seed, max_speed_factor=slowest)
    sampler.set_epoch(1)  # a shuffled epoch: typical batches, not sortagrad's shortest first
    return dataset, sampler


def measure_loader(config: TrainConfig, manifest: str, workers: int, augment_on: str, batches: int,
                   warmup: int, device: torch.device) -> dict:
    """Time ``batches`` batches of the Trainer's loader after ``warmup``; with ``augment_on``
    "device", the batches are augmented on ``device`` and that time is reported apart."""
    dataset, sampler = train_dataset(config, manifest)
    in_loader = augment_on == "loader"
    loader = DataLoader(  # as Trainer._loader
        dataset, batch_sampler=sampler, num_workers=workers,
        collate_fn=collate if in_loader else functools.partial(collate, augment=False),
        pin_memory=device.type == "cuda", generator=torch.Generator(),
        prefetch_factor=4 if workers > 0 else None,
    )
    iterator = iter(loader)
    pids = worker_pids(iterator)
    audio = wait = augment_time = 0.0
    for index in range(warmup + batches):
        if index == warmup:
            start, cpu_start = time.perf_counter(), cpu_seconds(pids) if pids else time.process_time()
        before = time.perf_counter()
        batch = next(iterator)
        after = time.perf_counter()
        if not in_loader:
            batch = batch.to(device)
            synchronize(device)
            after = time.perf_counter()
            batch = batch.augmented()
            synchronize(device)
        if index >= warmup:
            wait += after - before
            augment_time += time.perf_counter() - after
            audio += float(batch.audio_lengths.sum()) / SAMPLE_RATE  # augmented: what the model trains on
    elapsed = time.perf_counter() - start
    cpu = (cpu_seconds(pids) if pids else time.process_time()) - cpu_start
    if not pids:  # loading in the main process: its CPU time includes the device augmentation
        cpu -= augment_time if device.type == "cpu" else 0.0
    del iterator
    return {
        "audio_s": audio, "wall_s": elapsed, "loader_cpu_s": cpu, "augment_s": augment_time,
        "wait_per_batch_s": wait / batches,
    }


def measure_training(config: TrainConfig, steps: int, warmup: int) -> dict:
    """The Trainer's own loader and step on ``config``; times ``steps`` steps after ``warmup``."""
    from asr.training import Trainer  # noqa: PLC0415

    trainer = Trainer(config)
    trainer.sampler.set_epoch(1)
    trainer.model.train()
    trainer.frontend.train()
    iterator = iter(trainer._loader(trainer.train_set, trainer.sampler))
    pids = worker_pids(iterator)
    utilisation = GpuUtilisation(trainer.device) if trainer.device.type == "cuda" else None
    waits, step_times, audio = [], [], 0.0
    try:
        for index in range(warmup + steps):
            if index == warmup:
                synchronize(trainer.device)
                if utilisation:
                    utilisation.start()
                start, cpu_start, main_start = time.perf_counter(), cpu_seconds(pids), time.process_time()
            before = time.perf_counter()
            batch = next(iterator)
            loaded = time.perf_counter()
            trainer._train_step(batch)  # waits for the device once, at the finite-gradient check
            if index >= warmup:
                waits.append(loaded - before)
                step_times.append(time.perf_counter() - loaded)
                audio += batch.augmented_seconds()
        synchronize(trainer.device)
        elapsed = time.perf_counter() - start
        cpu, main_cpu = cpu_seconds(pids) - cpu_start, time.process_time() - main_start
    finally:
        busy = utilisation.stop() if utilisation else None
    return {
        "audio_h_per_device_h": audio / elapsed, "audio_s": audio, "wall_s": elapsed, "loader_cpu_s": cpu,
        "main_cpu_s": main_cpu, "wait_s": statistics.fmean(waits), "wait_median_s": statistics.median(waits),
        "step_s": statistics.fmean(step_times), "gpu_busy": busy, "device": trainer.device,
        "augment_on_device": trainer.augment_on_device,
    }


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="training YAML: augmentation, max_frames, model (default: %(default)s)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.max_frames=20000 model_config.hidden_size=256")
    parser.add_argument("--manifest", help="training manifest (JSONL); default: FAKE_TREE/train.jsonl")
    parser.add_argument("--fake-tree", type=Path, metavar="DIR", help="write a LibriSpeech-layout tree of "
                        "speech-like noise with random transcripts here first (skipped if DIR/train.jsonl exists)")
    parser.add_argument("--fake-utterances", type=int, default=300, help="files in the fake tree (default: 300, about 1 h)")
    parser.add_argument("--fake-repeat", type=int, default=40, help="times the fake manifest lists each file (default: 40)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="loader workers; several: one run each (default: 1)")
    parser.add_argument("--augment-on", nargs="+", choices=["loader", "device"], default=["loader", "device"],
                        help="loader mode: where the augmentation runs, one run each (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=10, help="loader mode: timed batches (default: 10)")
    parser.add_argument("--train", action="store_true", help="the Trainer end to end instead of the loader alone")
    parser.add_argument("--steps", type=int, default=20, help="--train: timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches or steps first (default: 3)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads of the main process (default: torch's choice)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes writing the fake tree")
    args = parser.parse_args(argv)

    if args.fake_tree:
        manifest = args.fake_tree / "train.jsonl"
        if not manifest.exists():
            write_fake_tree(args.fake_tree, args.fake_utterances, args.fake_repeat, seed=0, jobs=args.jobs)
    if not args.manifest and not args.fake_tree:
        parser.error("give --manifest, or --fake-tree to make one")
    manifest = args.manifest or str(args.fake_tree / "train.jsonl")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    config = load_config(TrainConfig, args.config, args.set)
    augment = config.data.augment
    print(f"config: {args.config} {' '.join(args.set)}; max_frames={config.data.max_frames}, augment: "
          f"speed_perturb={augment.speed_perturb} gain_db={augment.gain_db} noise_prob={augment.noise_prob} "
          f"lowpass_prob={augment.lowpass_prob}")
    print(f"manifest: {manifest}; device: {device}; main process: {torch.get_num_threads()} torch thread(s)")
    needed = args.warmup + (args.steps if args.train else args.batches)
    available = len(train_dataset(config, manifest)[1])
    if available < needed:
        parser.error(f"{manifest} makes {available} batches of max_frames={config.data.max_frames}, and {needed} "
                     "are needed: list more audio (--fake-repeat), or set a smaller data.max_frames")

    if args.train:
        run_training(args, config, manifest, device)
        return
    print("| workers | augmentation in | audio s per s | audio s per worker CPU-s | worker cores used | "
          "loader wait per batch | device s per batch to augment |")
    print("|---|---|---|---|---|---|---|")
    for workers in args.workers:
        for place in args.augment_on:
            r = measure_loader(config, manifest, workers, place, args.batches, args.warmup, device)
            print(f"| {workers} | {place} | {r['audio_s'] / r['wall_s']:.0f} | {r['audio_s'] / r['loader_cpu_s']:.0f} | "
                  f"{r['loader_cpu_s'] / r['wall_s']:.2f} | {r['wait_per_batch_s']:.3f} s | "
                  + (f"{r['augment_s'] / args.batches:.4f} s ({device.type})" if place == "device" else "-") + " |",
                  flush=True)


def run_training(args: argparse.Namespace, config: TrainConfig, manifest: str, device: torch.device) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as exp:
        stats = Path(exp) / "cmvn.pt"
        from asr.train_setup import compute_cmvn_stats, save_cmvn_stats  # noqa: PLC0415

        save_cmvn_stats(compute_cmvn_stats(manifest, config.model_config.get("n_mels", 80), max_utterances=20), stats)
        overrides = [f"exp_dir={exp}", f"cmvn={stats}", f"data.train={manifest}", "data.valid=null",
                     f"data.num_workers={args.workers[0]}", f"device={device}", "save_every_steps=1000000",
                     *([f"threads={args.threads}"] if args.threads else [])]
        config = load_config(TrainConfig, args.config, [*args.set, *overrides])
        r = measure_training(config, args.steps, args.warmup)
    busy = f"{r['gpu_busy']:.0f}%" if r["gpu_busy"] is not None else "n/a"
    print(f"end to end, {args.workers[0]} worker(s), augmentation on the {'device' if r['augment_on_device'] else 'loader'}, "
          f"{args.steps} steps after {args.warmup}: {r['audio_h_per_device_h']:.1f} audio h per device h "
          f"({r['audio_s'] / args.steps:.0f} s of audio per step); step {r['step_s']:.3f} s + loader wait "
          f"{r['wait_s']:.3f} s (median {r['wait_median_s']:.3f}); CPU cores used: loader workers "
          f"{r['loader_cpu_s'] / r['wall_s']:.2f} ({r['audio_s'] / max(r['loader_cpu_s'], 1e-9):.0f} audio s per worker "
          f"CPU-s), training process {r['main_cpu_s'] / r['wall_s']:.2f}; GPU busy {busy}", flush=True)


if __name__ == "__main__":
    main()
