"""The parts of a training run, each built by a named function from :class:`TrainConfig` (as
icefall's ``get_model`` / ``get_params`` and wenet's ``init_*``), so that each can be built and
tested alone; :class:`asr.training.Trainer` puts them together.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from asr.audio import load_audio
from asr.checkpoint import Checkpoint, load_checkpoint
from asr.data.loader import SPEEDS, AugmentConfig, BucketBatchSampler, UtteranceDataset, filter_for_ctc
from asr.data.manifest import read_manifest
from asr.features import LogMelFrontend, accumulate_stats
from asr.fileio import save_torch
from asr.models import MODELS, build_model
from asr.text import Tokenizer

Log = Callable[[str], None]


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
    # where it trains faster (tools/bench_train.py; CTC loss and log-softmax stay in float32 either way)
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


def cosine_schedule(warmup: int, total: int, final_ratio: float, elapsed=None):
    """Linear warm-up, then cosine decay to ``final_ratio`` at step ``total``, or earlier where
    ``elapsed()`` (the fraction of a time budget spent) is further on."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, max((step - warmup) / max(1, total - warmup), elapsed() if elapsed else 0.0))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def init_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size


# ---------------------------------------------------------------------------------------------
# Builders


def get_device(config: TrainConfig, local_rank: int = 0) -> torch.device:
    """``config.device`` (auto: this rank's GPU if there is one, else the CPU), made current."""
    if config.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        # cudnn.benchmark stays off: bucketed batches rarely repeat a shape, and timing the
        # algorithms for every new shape halves throughput (tools/bench_train.py --cudnn-benchmark)
    return device


def get_precision(config: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, augmentation on the device rather than in the loader)."""
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {config.precision!r}")
    if config.data.augment_on not in ("auto", "loader", "device"):
        raise ValueError(f"data.augment_on must be auto, loader or device, got {config.data.augment_on!r}")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    on_device = config.data.augment_on == "device" or (config.data.augment_on == "auto" and device.type == "cuda")
    return bf16, on_device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def get_model(config: TrainConfig, tokenizer: Tokenizer, log: Log = print, verbose: bool = True) -> nn.Module:
    """The model ``config`` names, started from ``init_from``'s weights if given, with its CMVN
    statistics (``config.cmvn``, else the init checkpoint's, else computed from the training data)."""
    init = load_checkpoint(config.init_from) if config.init_from else None
    model_config = {"vocab_size": len(tokenizer), **config.model_config}
    if init is not None:
        if MODELS.get(init.model_name) != MODELS.get(config.model):
            raise ValueError(f"init_from {config.init_from} holds a {init.model_name} model, not {config.model}")
        # the architecture is the checkpoint's; the config changes what it names (dropout, augmentation)
        model_config = {**init.model_config, **config.model_config}
    model = build_model(config.model, model_config, verbose=verbose)
    _init_weights_and_cmvn(model, config, init, log)
    return model


def _init_weights_and_cmvn(model: nn.Module, config: TrainConfig, init: Checkpoint | None, log: Log) -> None:
    if init is not None:
        try:
            model.load_state_dict(init.state_dict)
        except RuntimeError:
            raise ValueError(
                f"init_from {config.init_from}: its weights do not fit this model; "
                "model_config may change training settings (dropout, specaugment, vtlp) but not its shape"
            ) from None
        log(f"initialised from {config.init_from}")
    if config.cmvn:
        stats = torch.load(config.cmvn, weights_only=True)
        model.cmvn.set_stats(stats["sum"], stats["sum_sq"], stats["count"])
    elif init is None:
        log("computing CMVN statistics from the training data (pass cmvn=FILE to reuse)")
        stats = compute_cmvn_stats(config.data.train, model.config.n_mels, max_utterances=500, dither=config.dither)
        model.cmvn.set_stats(stats["sum"], stats["sum_sq"], stats["count"])


def load_entries(manifests: str | list[str], name: str, model: nn.Module, max_duration: float,
                 slowest_speed: float, log: Log = print) -> list[dict]:
    """A split's manifest entries that the model can learn from with CTC (the others counted)."""
    paths = manifest_paths(manifests)
    manifest = ", ".join(paths)  # for the messages
    entries = [entry for path in paths for entry in read_manifest(path)]
    kept, dropped = filter_for_ctc(entries, model.output_lengths, max_duration, slowest_speed)
    hours = sum(e["duration"] for e in kept) / 3600
    log(f"{name}: {len(kept)} utterances, {hours:.2f} h from {manifest}")
    for reason, count in dropped.items():
        if count:
            log(f"{name}: dropped {count} utterance(s): {reason}")
    if not kept:
        raise ValueError(f"{manifest}: no usable utterances")
    return kept


def get_data(config: TrainConfig, model: nn.Module, tokenizer: Tokenizer, rank: int = 0, world_size: int = 1,
             log: Log = print) -> tuple[UtteranceDataset, BucketBatchSampler, list[dict]]:
    """The training set, its length-bucketed batch sampler (this rank's share) and the validation entries."""
    augment = config.data.augment
    slowest = min(SPEEDS) if augment.speed_perturb else 1.0
    train_entries = load_entries(config.data.train, "train", model, config.data.max_duration, slowest, log)
    train_set = UtteranceDataset(train_entries, tokenizer, augment, seed=config.seed)
    sampler = BucketBatchSampler(
        [e["duration"] + 2 * augment.pad_s for e in train_entries],
        config.data.max_frames,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        max_speed_factor=slowest,
        sortagrad=config.data.sortagrad,
    )
    valid = load_entries(config.data.valid, "valid", model, config.data.max_duration, 1.0, log) if config.data.valid else []
    return train_set, sampler, valid


def get_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                             betas=(0.9, 0.98))


def get_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                  time_spent: Callable[[], float] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine decay over ``total_steps`` (or ``time_spent()``, the fraction of a time budget)."""
    optim = config.optim
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(optim.warmup_steps, total_steps, optim.final_lr_ratio, time_spent))
