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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.data.loader import BucketBatchSampler, UtteranceDataset, collate
from asr.decoding import greedy_ctc_decode
from asr.features import LogMelFrontend
from asr.fileio import atomic_write
from asr.text import Tokenizer
from asr.train_setup import (
    TrainConfig, get_data, get_device, get_model, get_optimizer, get_precision, get_scheduler, init_distributed,
    seed_everything,
)


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


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Runs :class:`TrainConfig` end to end: ``Trainer(config).fit()``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.rank, local_rank, self.world_size = init_distributed()
        self.is_main = self.rank == 0
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = get_device(config, local_rank)
        self.bf16, self.augment_on_device = get_precision(config, self.device)
        if config.max_minutes is not None and self.world_size > 1:
            raise ValueError("max_minutes needs a single process: ranks would stop at different steps")
        if config.patience is not None and not config.data.valid:
            raise ValueError("patience (early stopping) needs a validation set: set data.valid")
        self.exp_dir = Path(config.exp_dir)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed)

        self.tokenizer = Tokenizer()
        self.model = get_model(config, self.tokenizer, self._log, verbose=self.is_main).to(self.device)
        self.frontend = LogMelFrontend(self.model.config.n_mels, dither=config.dither).to(self.device)
        self.train_set, self.sampler, self.valid_entries = get_data(
            config, self.model, self.tokenizer, self.rank, self.world_size, self._log)
        self.optimizer = get_optimizer(config, self.model)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.started = None  # perf_counter at the first step, for max_minutes
        self.scheduler = get_scheduler(config, self.optimizer, self.total_steps,
                                       self._time_spent if config.max_minutes is not None else None)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_wer = math.inf
        self.best_cer, self.epochs_without_gain = math.inf, 0  # for patience
        self.stopped_early = False
        self.train_seconds = 0.0  # training time over all epochs, evaluation left out (log.csv's train_s)
        self.skipped_batches = 0
        self.steps_log = None  # a csv writer on steps.csv while fit() runs with log_steps
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
