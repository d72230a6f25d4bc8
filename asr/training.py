"""Training: CTC with AdamW, warm-up + cosine decay, gradient clipping, mixed precision on
CUDA, DDP through ``torchrun``, validation CER/WER each epoch, atomic checkpoints, exact resume.

Exact resume: ``exp/last.pt`` holds the model, optimizer, scheduler, the epoch and the number of
batches already taken from it, and every RNG state. Data randomness is a function of
``(seed, epoch, utterance)`` (see :mod:`asr.data.loader`), and the DataLoader gets its own
generator so that starting a loader never consumes the global RNG. A run killed at any point
and resumed from ``last.pt`` therefore computes exactly the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from asr.data.loader import (
    SPEEDS,
    AugmentConfig,
    BucketBatchSampler,
    UtteranceDataset,
    collate,
    filter_for_ctc,
)
from asr.data.manifest import read_manifest
from asr.decoding import greedy_ctc_decode
from asr.fileio import atomic_write, save_torch
from asr.features import LogMelFrontend, accumulate_stats
from asr.models import MODELS, build_model
from asr.text import Tokenizer


@dataclass
class DataConfig:
    train: str | list[str] = ""  # JSONL manifest; several (a YAML list, or comma-separated) are concatenated
    valid: str | list[str] | None = None
    max_frames: int = 40000  # padded feature frames per batch (10 ms each): 400 s of audio
    max_duration: float = 35.0  # seconds; longer utterances are dropped (count printed)
    num_workers: int = 1
    sortagrad: bool = True  # first epoch: shortest batches first
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # where data.augment is applied to each batch: "loader" (in the workers), "device" (on the
    # training device, before the frontend), or "auto": the device when it is a GPU (it takes
    # the speed perturbation's resampling off the CPU cores that decode audio), else the loader
    # (the workers overlap it with training). The result is the same either way (to float
    # rounding on a GPU): every random choice is made in the dataset.
    augment_on: str = "auto"


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 300
    final_lr_ratio: float = 0.02  # cosine decay from lr to lr * final_lr_ratio (1.0: constant after warm-up)
    grad_clip: float | None = 5.0  # max global gradient norm; None: no clipping (the norm is still measured)

    @property
    def max_grad_norm(self) -> float:
        """``grad_clip`` as ``clip_grad_norm_``'s ``max_norm``: infinite when clipping is off."""
        return math.inf if self.grad_clip is None else self.grad_clip


@dataclass
class TrainConfig:
    exp_dir: str = "exp"
    model: str = "rnn_ctc"
    model_config: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    max_steps: int | None = None  # stop after this many batches, ending the last epoch early (the schedule spans them)
    # stop after this many minutes of training (one process only), ending the last epoch early;
    # the learning rate then decays over the time as well as the steps, whichever is further on.
    # For a fixed time on a machine of unknown speed (tools/gpu_train_defaults.sh); a resumed run
    # starts a new clock, so such runs are not exactly resumable.
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    # auto: bf16 autocast on CUDA, float32 on CPU; "bf16" also on a CPU with AVX512-BF16 or AMX,
    # where it trains about 1.4x faster (CTC loss and log-softmax stay in float32 either way)
    precision: str = "auto"
    dither: float = 1e-4  # waveform dither in training (full scale = 1)
    cmvn: str | None = None  # stats file from `asr compute-cmvn`; computed from train if unset
    # checkpoint whose weights (and CMVN) start the training; the model is its architecture,
    # with model_config changing only what it names (dropout, specaugment, vtlp)
    init_from: str | None = None
    save_every_steps: int = 200  # mid-epoch last.pt for resume
    log_every_steps: int = 20
    keep_epoch_checkpoints: int = 5  # for `asr average`
    # early stopping: end training when valid_cer has not fallen below its best by more than
    # min_delta for this many epochs in a row (needs data.valid); None trains all epochs
    patience: int | None = None
    min_delta: float = 0.0
    # write every step's loss, gradient norm (before clipping) and learning rate to steps.csv
    log_steps: bool = False
    threads: int | None = None  # torch CPU threads (default: torch's choice)


# ---------------------------------------------------------------------------------------------
# CMVN statistics


def manifest_paths(manifests: str | os.PathLike | list[str]) -> list[str]:
    """A list of manifests, or several in one comma-separated string, as a list of paths."""
    if isinstance(manifests, (list, tuple)):
        return [str(path) for path in manifests]
    return [path.strip() for path in str(manifests).split(",")]


def compute_cmvn_stats(manifests: str | os.PathLike | list[str], n_mels: int = 80,
                       max_utterances: int | None = 2000, dither: float = TrainConfig.dither) -> dict:
    """Per-bin sum, sum of squares and frame count of log-mel features over (a sample of) the
    utterances of one or several manifests (see :func:`manifest_paths`). ``dither`` sets the
    frontend's energy floor, as in training (no noise is added: the statistics are exact)."""
    from asr.audio import load_audio

    entries = [entry for path in manifest_paths(manifests) for entry in read_manifest(path)]
    if max_utterances is not None and len(entries) > max_utterances:
        rng = random.Random(0)
        entries = rng.sample(entries, max_utterances)
    frontend = LogMelFrontend(n_mels, dither).eval()
    total = torch.zeros(n_mels, dtype=torch.float64)
    total_sq = torch.zeros(n_mels, dtype=torch.float64)
    count = 0
    with torch.inference_mode():
        for entry in tqdm(entries, desc="cmvn", unit="utt", mininterval=2.0):
            feats, lengths = frontend(load_audio(entry["audio"])[None])
            s, sq, n = accumulate_stats(feats, lengths)
            total += s
            total_sq += sq
            count += n
    return {"sum": total, "sum_sq": total_sq, "count": count, "n_mels": n_mels}


def save_cmvn_stats(stats: dict, path: str | os.PathLike) -> None:
    save_torch(stats, path)


# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _stop_between_steps(enabled: bool):
    """Ctrl-C (SIGINT) during training takes effect between two steps, never inside an
    optimizer update, so that the state saved for resume is one the trainer really passed
    through. Yields a function that tells whether it was pressed. A second Ctrl-C stops at
    once. Only in a single process on the main thread: under torchrun every rank would have
    to agree on the step to stop at."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


class _Waiting:
    """Seconds spent waiting for the items of an iterable: how long training sat idle for
    want of a batch (when this share grows, the loader, not the device, sets the pace)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on(self, iterable):
        iterator = iter(iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - start
            yield item


def _cosine_schedule(warmup: int, total: int, final_ratio: float, elapsed=None):
    """Linear warm-up, then cosine decay to ``final_ratio`` at step ``total``, or earlier where
    ``elapsed()`` (the fraction of a time budget spent) is further on."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, max((step - warmup) / max(1, total - warmup), elapsed() if elapsed else 0.0))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _rng_state() -> dict:
    """Every RNG state as plain Python values (bytes, lists): picklable across ranks and
    loadable with ``weights_only=True``."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "cuda": [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    torch.set_rng_state(as_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([as_tensor(b) for b in state["cuda"]])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Runs :class:`TrainConfig` end to end: ``Trainer(config).fit()``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.rank, local_rank, self.world_size = _distributed()
        self.is_main = self.rank == 0
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.device == "auto":
            self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
            # cudnn.benchmark stays off: bucketed batches rarely repeat a shape, and timing the
            # algorithms for every new shape halves throughput (tools/bench_train.py --cudnn-benchmark)
        if config.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {config.precision!r}")
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if config.data.augment_on not in ("auto", "loader", "device"):
            raise ValueError(f"data.augment_on must be auto, loader or device, got {config.data.augment_on!r}")
        self.augment_on_device = config.data.augment_on == "device" or (
            config.data.augment_on == "auto" and self.device.type == "cuda"
        )
        self.exp_dir = Path(config.exp_dir)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)

        self.tokenizer = Tokenizer()
        init = load_checkpoint(config.init_from) if config.init_from else None
        model_config = {"vocab_size": len(self.tokenizer), **config.model_config}
        if init is not None:
            if MODELS.get(init.model_name) != MODELS.get(config.model):
                raise ValueError(f"init_from {config.init_from} holds a {init.model_name} model, not {config.model}")
            # the architecture is the checkpoint's; the config changes what it names (dropout, augmentation)
            model_config = {**init.model_config, **config.model_config}
        self.model = build_model(config.model, model_config, verbose=self.is_main)
        self._init_weights_and_cmvn(init)
        self.model.to(self.device)
        self.frontend = LogMelFrontend(self.model.config.n_mels, dither=config.dither).to(self.device)

        augment = config.data.augment
        slowest = min(SPEEDS) if augment.speed_perturb else 1.0
        train_entries = self._load_entries(config.data.train, "train", slowest)
        self.train_set = UtteranceDataset(train_entries, self.tokenizer, augment, seed=config.seed)
        self.sampler = BucketBatchSampler(
            [e["duration"] + 2 * augment.pad_s for e in train_entries],
            config.data.max_frames,
            seed=config.seed,
            rank=self.rank,
            world_size=self.world_size,
            max_speed_factor=slowest,
            sortagrad=config.data.sortagrad,
        )
        self.valid_entries = self._load_entries(config.data.valid, "valid", 1.0) if config.data.valid else []

        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay, betas=(0.9, 0.98)
        )
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        if config.max_minutes is not None and self.world_size > 1:
            raise ValueError("max_minutes needs a single process: ranks would stop at different steps")
        self.started = None  # perf_counter at the first step, for max_minutes
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _cosine_schedule(config.optim.warmup_steps, self.total_steps, config.optim.final_lr_ratio,
                             self._time_spent if config.max_minutes is not None else None),
        )
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_wer = math.inf
        self.best_cer, self.epochs_without_gain = math.inf, 0  # for patience
        self.stopped_early = False
        self.train_seconds = 0.0  # training time over all epochs, evaluation left out (log.csv's train_s)
        self.skipped_batches = 0
        self.steps_log = None  # a csv writer on steps.csv while fit() runs with log_steps
        if config.patience is not None and not config.data.valid:
            raise ValueError("patience (early stopping) needs a validation set: set data.valid")
        self._resume()
        self.ddp_model = self.model
        if self.world_size > 1:
            if self.device.type == "cuda":  # batch norm over the global batch (NCCL only)
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    # -- setup ------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def _init_weights_and_cmvn(self, init: Checkpoint | None) -> None:
        if init is not None:
            try:
                self.model.load_state_dict(init.state_dict)
            except RuntimeError:
                raise ValueError(
                    f"init_from {self.config.init_from}: its weights do not fit this model; "
                    "model_config may change training settings (dropout, specaugment, vtlp) but not its shape"
                ) from None
            self._log(f"initialised from {self.config.init_from}")
        if self.config.cmvn:
            stats = torch.load(self.config.cmvn, weights_only=True)
            self.model.cmvn.set_stats(stats["sum"], stats["sum_sq"], stats["count"])
        elif init is None:
            self._log("computing CMVN statistics from the training data (pass cmvn=FILE to reuse)")
            stats = compute_cmvn_stats(self.config.data.train, self.model.config.n_mels,
                                       max_utterances=500, dither=self.config.dither)
            self.model.cmvn.set_stats(stats["sum"], stats["sum_sq"], stats["count"])

    def _load_entries(self, manifests: str | list[str], name: str, slowest_speed: float) -> list[dict]:
        paths = manifest_paths(manifests)
        manifest = ", ".join(paths)  # for the messages
        entries = [entry for path in paths for entry in read_manifest(path)]
        kept, dropped = filter_for_ctc(entries, self.model.output_lengths, self.config.data.max_duration, slowest_speed)
        hours = sum(e["duration"] for e in kept) / 3600
        self._log(f"{name}: {len(kept)} utterances, {hours:.2f} h from {manifest}")
        for reason, count in dropped.items():
            if count:
                self._log(f"{name}: dropped {count} utterance(s): {reason}")
        if not kept:
            raise ValueError(f"{manifest}: no usable utterances")
        return kept

    def _resume(self) -> None:
        path = self.exp_dir / "last.pt"
        if not path.exists():
            return
        ckpt = load_checkpoint(path)
        state = ckpt.trainer_state
        if state is None:
            raise ValueError(f"{path} has no trainer state; remove it or use init_from= to start from its weights")
        self.model.load_state_dict(ckpt.state_dict)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_wer, self.skipped_batches = state["best_wer"], state["skipped_batches"]
        self.best_cer, self.epochs_without_gain = state["best_cer"], state["epochs_without_gain"]
        self.stopped_early, self.train_seconds = state["stopped_early"], state["train_seconds"]
        self._truncate_steps_log()
        if state["world_size"] == self.world_size:
            _set_rng_state(state["rng"][self.rank])
        else:
            # a different world size changes which batches each rank sees; continue from the
            # same epoch position, counted in global batches
            self.batch_in_epoch = state["batch_in_epoch"] * state["world_size"] // self.world_size
            _set_rng_state(state["rng"][0])
        self._log(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}")

    # -- checkpoints -------------------------------------------------------------------------

    def _metadata(self, **extra: Any) -> dict:
        return {"epoch": self.epoch, "step": self.step, "config": asdict(self.config), **extra}

    def _save_last(self) -> None:
        rng = [_rng_state()]
        if self.world_size > 1:
            gathered: list = [None] * self.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not self.is_main:
            return
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_wer": self.best_wer,
            "best_cer": self.best_cer,
            "epochs_without_gain": self.epochs_without_gain,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "skipped_batches": self.skipped_batches,
            "world_size": self.world_size,
            "rng": rng,
        }
        save_checkpoint(self.exp_dir / "last.pt", self.model, self.config.model, self.tokenizer, self._metadata(), trainer_state)

    # -- training ----------------------------------------------------------------------------

    def _time_spent(self) -> float:
        """The fraction of max_minutes spent since training began (0 before)."""
        if self.started is None:
            return 0.0
        return (time.perf_counter() - self.started) / (60 * self.config.max_minutes)

    def _done(self) -> bool:
        return self.step >= self.total_steps or self._time_spent() >= 1.0 or self.stopped_early

    def _truncate_steps_log(self) -> None:
        """Drops steps.csv rows after the resumed step: they are trained again."""
        path = self.exp_dir / "steps.csv"
        if not self.is_main or not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= self.step]
        with atomic_write(path) as f:
            f.writelines(kept)

    def _train_step(self, batch) -> tuple[torch.Tensor, bool]:
        batch = batch.to(self.device).augmented()  # a no-op when the loader augmented it
        lengths = batch.audio_lengths.to(self.device, non_blocking=True)
        feats, feat_lengths = self.frontend(batch.audio, lengths)  # float32: log of small energies
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            log_probs, out_lengths = self.ddp_model(feats, feat_lengths)
        loss = torch.nn.functional.ctc_loss(
            log_probs.float().transpose(0, 1),
            batch.targets.to(self.device, non_blocking=True),
            out_lengths,
            batch.target_lengths.to(self.device, non_blocking=True),
            blank=self.tokenizer.blank_id,
            zero_infinity=True,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.max_grad_norm)
        # A non-finite loss gives non-finite gradients on every rank (DDP averages them), so
        # all ranks skip the same steps together.
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        else:
            self.skipped_batches += 1
        if self.steps_log is not None:
            self.steps_log.writerow([self.step, f"{loss.item():.4f}", f"{grad_norm.item():.4g}",
                                     f"{self.scheduler.get_last_lr()[0]:.3e}"])
        self.scheduler.step()
        return loss.detach(), finite

    def _loader(self, dataset, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=functools.partial(collate, augment=not self.augment_on_device),
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keeps loader start-up off the global RNG (exact resume)
            prefetch_factor=4 if self.config.data.num_workers > 0 else None,
            persistent_workers=False,
            # Forking a worker from a process whose gloo threads are live can deadlock the
            # worker at birth (seen at an epoch start under torchrun on CPU): start workers from
            # a clean fork server instead.
            multiprocessing_context="forkserver" if self.world_size > 1 and self.config.data.num_workers > 0 else None,
        )

    def fit(self) -> dict:
        """Train to ``config.epochs`` (or until ``patience`` runs out); returns the last
        validation metrics.

        Ctrl-C (one process) stops after the current step, saves ``last.pt`` at that step
        (resume continues with the next batch) and raises KeyboardInterrupt."""
        with _stop_between_steps(self.world_size == 1) as interrupted, self._open_steps_log():
            return self._fit(interrupted)

    @contextlib.contextmanager
    def _open_steps_log(self):
        """``self.steps_log``: a csv writer on steps.csv when ``log_steps`` is set (main process)."""
        if not (self.config.log_steps and self.is_main):
            yield
            return
        path = self.exp_dir / "steps.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            self.steps_log = csv.writer(f, lineterminator="\n")
            if new:
                self.steps_log.writerow(["step", "loss", "grad_norm", "lr"])
            try:
                yield
            finally:
                self.steps_log = None

    def _fit(self, interrupted) -> dict:
        config = self.config
        log_path = self.exp_dir / "log.csv"
        metrics: dict = {}
        self._log(
            f"training {self.total_steps} steps ({config.epochs} epochs x {self.steps_per_epoch} batches"
            f"{f' x {self.world_size} ranks' if self.world_size > 1 else ''}"
            f"{', ending at max_steps' if self.total_steps < config.epochs * self.steps_per_epoch else ''}"
            f"{f' or after {config.max_minutes:g} minutes' if config.max_minutes is not None else ''}) on {self.device}"
        )
        if config.max_minutes is not None:
            self.started = time.perf_counter()
        while self.epoch < config.epochs and not self._done():
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch)
            self.model.train()
            self.frontend.train()
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.batch_in_epoch,
                desc=f"epoch {self.epoch + 1}/{config.epochs}",
                disable=not self.is_main,
                mininterval=1.0 if os.isatty(2) else 30.0,
                dynamic_ncols=True,
            )
            # epoch totals for the log; the progress bar shows the mean since its last refresh
            zero = torch.zeros((), device=self.device)
            epoch_loss, epoch_count, recent_loss, recent_count = zero, 0, zero, 0
            audio_seconds, start = 0.0, time.perf_counter()
            waiting = _Waiting()
            for batch in waiting.on(self._loader(self.train_set, self.sampler)):
                self.batch_in_epoch += 1
                self.step += 1
                if batch is not None:
                    loss, finite = self._train_step(batch)
                    if finite:
                        recent_loss = recent_loss + loss  # stays on the device: no sync per step
                        recent_count += 1
                    audio_seconds += batch.augmented_seconds() * self.world_size
                bar.update(1)
                if self.step % config.log_every_steps == 0 and recent_count:
                    epoch_loss = epoch_loss + recent_loss
                    epoch_count += recent_count
                    bar.set_postfix(
                        loss=f"{recent_loss.item() / recent_count:.3f}",
                        lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                        audio_s_per_s=f"{audio_seconds / (time.perf_counter() - start):.0f}",
                        data_wait=f"{waiting.seconds / (time.perf_counter() - start):.0%}",
                        refresh=False,
                    )
                    recent_loss, recent_count = zero, 0
                if self.step % config.save_every_steps == 0:
                    self._save_last()
                if interrupted():
                    bar.close()
                    self._save_last()
                    raise KeyboardInterrupt
                if self._done():
                    break
            bar.close()
            elapsed = time.perf_counter() - start
            self.train_seconds += elapsed
            train_loss = (epoch_loss + recent_loss).item() / max(1, epoch_count + recent_count)
            self.epoch += 1
            self.batch_in_epoch = 0
            metrics = self._end_of_epoch(train_loss, audio_seconds / max(elapsed, 1e-9), log_path)
        if self.world_size > 1:
            self._check_ranks_in_sync()
        return metrics

    def _check_patience(self, valid_cer: float | None) -> None:
        """Counts epochs without a gain in valid CER (main process) and sets ``stopped_early``
        on every process when there have been ``patience`` of them."""
        if self.is_main:
            if valid_cer < self.best_cer - self.config.min_delta:
                self.best_cer, self.epochs_without_gain = valid_cer, 0
            else:
                self.epochs_without_gain += 1
            self.stopped_early = self.epochs_without_gain >= self.config.patience
            if self.stopped_early:
                self._log(f"early stop: valid_cer has not fallen below {self.best_cer:.4g} - {self.config.min_delta:g} "
                          f"for {self.epochs_without_gain} epochs")
        if self.world_size > 1:
            flag = [self.stopped_early]
            dist.broadcast_object_list(flag, src=0)
            self.stopped_early = flag[0]

    def _check_ranks_in_sync(self) -> None:
        """DDP keeps replicas identical; a difference means a bug (e.g. rank-dependent steps)."""
        flat = torch.cat([p.detach().flatten() for p in self.model.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        difference = (flat - reference).abs().max()
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        if difference.item() != 0:
            raise RuntimeError(f"DDP ranks diverged: max weight difference {difference.item():.3g}")
        self._log(f"{self.world_size} ranks hold identical weights")

    def _end_of_epoch(self, train_loss: float, audio_per_second: float, log_path: Path) -> dict:
        metrics = {"epoch": self.epoch, "step": self.step, "train_loss": round(train_loss, 4),
                   "lr": self.scheduler.get_last_lr()[0], "audio_s_per_s": round(audio_per_second, 1),
                   "train_s": round(self.train_seconds, 1), "skipped_batches": self.skipped_batches}
        if self.is_main and self.valid_entries:
            metrics.update(evaluate(self.model, self.frontend, self.valid_entries, self.tokenizer, self.device))
        if self.config.patience is not None:
            self._check_patience(metrics.get("valid_cer"))
        if self.is_main:
            improved = metrics.get("valid_wer", -self.epoch) < self.best_wer
            if improved:
                self.best_wer = metrics.get("valid_wer", -self.epoch)
            self._log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            # the whole log rewritten atomically: a full disk never leaves half a row behind
            before = log_path.read_text() if log_path.exists() else ""
            with atomic_write(log_path, newline="") as f:
                f.write(before)
                writer = csv.DictWriter(f, fieldnames=list(metrics), lineterminator="\n")
                if not before:
                    writer.writeheader()
                writer.writerow(metrics)
            epoch_path = self.exp_dir / f"epoch-{self.epoch}.pt"
            save_checkpoint(epoch_path, self.model, self.config.model, self.tokenizer, self._metadata(**metrics))
            if improved:
                save_checkpoint(self.exp_dir / "best.pt", self.model, self.config.model, self.tokenizer, self._metadata(**metrics))
            stale = self.exp_dir / f"epoch-{self.epoch - self.config.keep_epoch_checkpoints}.pt"
            stale.unlink(missing_ok=True)
        self._save_last()
        return metrics


@torch.inference_mode()
def evaluate(model, frontend, entries: list[dict], tokenizer: Tokenizer, device, max_frames: int = 60000) -> dict:
    """Greedy CER/WER and mean CTC loss of ``model`` on manifest entries."""
    was_training = model.training
    model.eval()
    frontend.eval()
    sampler = BucketBatchSampler([e["duration"] for e in entries], max(max_frames, 4000), shuffle=False)
    loader = DataLoader(UtteranceDataset(entries, tokenizer), batch_sampler=sampler, collate_fn=collate)
    refs, hyps, loss_sum, count = [], [], 0.0, 0
    for batch in loader:
        if batch is None:
            continue
        feats, feat_lengths = frontend(batch.audio.to(device), batch.audio_lengths.to(device))
        log_probs, out_lengths = model(feats, feat_lengths)
        loss = torch.nn.functional.ctc_loss(
            log_probs.float().transpose(0, 1), batch.targets.to(device), out_lengths,
            batch.target_lengths.to(device), zero_infinity=True, reduction="sum",
        )
        loss_sum += loss.item()
        count += len(batch.ids)
        refs += batch.texts
        hyps += [h.text for h in greedy_ctc_decode(log_probs, out_lengths, tokenizer)]
    model.train(was_training)
    frontend.train(was_training)
    return {
        "valid_loss": round(loss_sum / max(count, 1), 4),
        "valid_cer": round(jiwer.cer(refs, hyps), 4),
        "valid_wer": round(jiwer.wer(refs, hyps), 4),
    }
