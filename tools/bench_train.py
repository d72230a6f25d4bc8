"""Training throughput of an acoustic model on LibriSpeech-shaped batches, without any audio.

Batches are those the Trainer would build from LibriSpeech 960 h: utterance durations drawn
from a gamma distribution with LibriSpeech's mean (12.3 s; standard deviation 3.9 s, clipped to
1-35 s), speed-perturbed if the config says so, grouped by the Trainer's BucketBatchSampler under
``max_frames``. Features are random tensors of log-mel shape fed to the model directly (the
log-mel frontend is cheap next to the model, see tools/bench_frontend.py, and data loading is
left out), transcripts random characters at 15 per second. Each step is the Trainer's: forward
under bf16 autocast on CUDA (`--precision`), CTC loss in float32, backward, gradient clipping, AdamW.

Reports audio hours trained per device hour, step time, peak memory (CUDA: allocated by
tensors, and reserved by the caching allocator; CPU: peak resident set of the process) and,
on CUDA, GPU utilisation (the share of time a kernel was running, from nvidia-smi).

    # the recipe's 5 x 1024 BiLSTM: the library's padded batch with per-length reversal against
    # packed sequences
    python tools/bench_train.py --device cuda --compare-packing
    # a CPU-sized model
    python tools/bench_train.py --device cpu --model-config hidden_size=256 num_layers=3 --max-frames 20000 --steps 5
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

from asr.config import apply_overrides, load_config
from asr.data.loader import SPEEDS, BucketBatchSampler
from asr.features import num_frames
from asr.models import build_model, count_parameters
from asr.models.rnn_ctc import RNNCTC
from asr.text import Tokenizer
from asr.train_setup import TrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "librispeech" / "conf" / "blstm_ctc.yaml"
MEAN_SECONDS, STD_SECONDS, MIN_SECONDS, MAX_SECONDS = 12.3, 3.9, 1.0, 35.0
CHARACTERS_PER_SECOND = 15
SAMPLE_RATE = 16000


def with_recurrence(model: RNNCTC, mode: str) -> RNNCTC:
    """A copy of ``model`` whose recurrent stack runs ``mode``: "padded" (the library's way) or
    "packed" (through packed sequences)."""
    model = copy.deepcopy(model)
    if mode == "packed":
        model.encoder.forward = model.encoder.forward_packed
    return model


def librispeech_batches(count: int, max_frames: int, speed_perturb: bool, vocab_size: int, seed: int) -> list[dict]:
    """``count`` batches of utterance shapes as the Trainer builds them from LibriSpeech.

    Each batch: ``frames`` (feature frames per utterance), ``seconds`` (their audio) and
    ``text_lengths`` and ``targets`` (random character ids, 0 being CTC's blank).
    """
    rng = np.random.default_rng(seed)
    shape = (MEAN_SECONDS / STD_SECONDS) ** 2
    # a pool twice the size needed, so that the batches taken are typical ones, not the
    # sampler's leftovers
    pool = math.ceil(2 * count * max_frames / (MEAN_SECONDS * 100)) + 64
    durations = np.clip(rng.gamma(shape, MEAN_SECONDS / shape, pool), MIN_SECONDS, MAX_SECONDS)
    slowest = min(SPEEDS) if speed_perturb else 1.0
    sampler = BucketBatchSampler(durations.tolist(), max_frames, seed=seed, max_speed_factor=slowest)
    speeds = rng.choice(SPEEDS, pool) if speed_perturb else np.ones(pool)
    batches = []
    for keys in list(sampler)[:count]:
        seconds = [durations[i] / speeds[i] for i, _ in keys]
        text_lengths = [round(CHARACTERS_PER_SECOND * s) for s in seconds]
        batches.append({
            "frames": torch.tensor([num_frames(int(s * SAMPLE_RATE)) for s in seconds]),
            "seconds": sum(seconds),
            "text_lengths": torch.tensor(text_lengths),
            "targets": torch.from_numpy(rng.integers(1, vocab_size, sum(text_lengths))),
        })
    if len(batches) < count:
        raise ValueError(f"max_frames={max_frames} gives fewer than {count} batches from the pool")
    return batches


class GpuUtilisation:
    """Samples GPU utilisation in the background between :meth:`start` and :meth:`stop`:
    ``nvidia-smi`` in loop mode every 200 ms, else ``torch.cuda.utilization`` (needs NVML)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[float] = []
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        try:
            # by UUID: nvidia-smi's indices ignore CUDA_VISIBLE_DEVICES
            uuid = str(torch.cuda.get_device_properties(self.device).uuid)
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", uuid if uuid.startswith("GPU-") else f"GPU-{uuid}", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        except (OSError, AttributeError):
            self._process = None
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        if self._process is not None:
            for line in self._process.stdout:
                try:
                    self.samples.append(float(line))
                except ValueError:
                    break  # an error message
            if self.samples:
                return  # else nvidia-smi could not query this GPU: try NVML
        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # no NVML (pynvml) in this environment
                return

    def stop(self) -> float | None:
        """Mean utilisation in percent, or None when neither source worked (or never started)."""
        if self._thread is None:
            return None
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
        self._thread.join()
        return statistics.fmean(self.samples) if self.samples else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM)
        except OSError:
            pass  # then the peak is the process's since it started


def peak_memory(device: torch.device) -> str:
    gib = 1024**3
    if device.type == "cuda":
        return (f"{torch.cuda.max_memory_allocated(device) / gib:.1f} GiB allocated "
                f"({torch.cuda.max_memory_reserved(device) / gib:.1f} GiB reserved)")
    try:
        status = Path("/proc/self/status").read_text()
        kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return f"{kib * 1024 / gib:.1f} GiB peak RSS"


def train_steps(model, batches: list[dict], device: torch.device, config: TrainConfig, warmup: int, bf16: bool) -> dict:
    """Run the Trainer's step on each batch; time the ones after ``warmup``."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                  betas=(0.9, 0.98))
    n_mels = model.config.n_mels
    times, seconds = [], 0.0
    reset_peak_memory(device)
    utilisation = GpuUtilisation(device)
    try:
        for index, batch in enumerate(batches):
            if index == warmup and device.type == "cuda":
                utilisation.start()
            start = time.perf_counter()
            frames = batch["frames"].to(device)
            feats = torch.randn(len(frames), int(frames.max()), n_mels, device=device)
            # as Trainer._train_step, from the features on
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                log_probs, out_lengths = model(feats, frames)
            loss = torch.nn.functional.ctc_loss(
                log_probs.float().transpose(0, 1), batch["targets"].to(device), out_lengths,
                batch["text_lengths"].to(device), blank=0, zero_infinity=True,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
            if torch.isfinite(grad_norm):  # waits for the GPU, as the Trainer's check does
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times.append(time.perf_counter() - start)
                seconds += batch["seconds"]
    finally:
        gpu_utilisation = utilisation.stop()
    return {
        "step_s": statistics.fmean(times),
        "step_s_median": statistics.median(times),
        "audio_h_per_device_h": seconds / sum(times),
        "memory": peak_memory(device),
        "gpu_utilisation": gpu_utilisation,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training YAML: model, model_config, max_frames, "
                        "speed perturbation, optimizer (default: %(default)s)")
    parser.add_argument("--model-config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="model_config overrides, e.g. hidden_size=256 num_layers=3")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--max-frames", type=int, help="padded frames per batch (default: the config's)")
    parser.add_argument("--compare-packing", action="store_true",
                        help="time the recurrent stack both ways on the same batches: packed sequences, and the padded batch with per-length reversal")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms for each new input shape (the Trainer does not: "
                        "bucketed batches rarely repeat a shape, so the timing would recur every step)")
    parser.add_argument("--variants", nargs="+", choices=["packed", "padded"], default=["packed", "padded"],
                        help="with --compare-packing: which ways, in this order (default: %(default)s)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="as the Trainer's `precision`: auto = bf16 autocast on CUDA, float32 on CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = load_config(TrainConfig, args.config)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    tokenizer = Tokenizer()
    model_config = {"vocab_size": len(tokenizer), **apply_overrides(config.model_config, args.model_config)}
    if args.compare_packing and model_config.get("layer_norm"):
        print("--compare-packing: layer_norm off (torch's packed LSTM runs the whole stack in one call)")
        model_config["layer_norm"] = False
    torch.manual_seed(args.seed)
    model = build_model(config.model, model_config, verbose=False)
    if args.compare_packing and type(model) is not RNNCTC:
        parser.error(f"--compare-packing compares ways to run rnn_ctc's recurrent stack; {config.model} has none")
    max_frames = args.max_frames or config.data.max_frames
    try:
        batches = librispeech_batches(args.warmup + args.steps, max_frames, config.data.augment.speed_perturb,
                                      len(tokenizer), args.seed)
    except ValueError as err:
        parser.error(str(err))

    timed = batches[args.warmup:]
    utterances = statistics.fmean(len(b["frames"]) for b in timed)
    audio = statistics.fmean(b["seconds"] for b in timed)
    padding = 1 - sum(int(b["frames"].sum()) for b in timed) / sum(len(b["frames"]) * int(b["frames"].max()) for b in timed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shape = ", ".join(f"{k}={v}" for k, v in model_config.items() if k in ("hidden_size", "num_layers", "time_stride"))
    print(f"model: {config.model} ({shape}), {count_parameters(model) / 1e6:.1f}M parameters")
    print(f"device: {device} ({name}), {'bf16 autocast' if bf16 else 'float32'}")
    print(f"batches: max_frames={max_frames}, on average {utterances:.1f} utterances, {audio:.0f} s of audio, "
          f"{padding:.1%} padding; {args.steps} timed steps after {args.warmup} warm-up")

    variants = {config.model: model}
    if args.compare_packing:
        labels = {"packed": "packed", "padded": "padded+reversal"}
        variants = {labels[mode]: with_recurrence(model, mode) for mode in args.variants}
    for label, variant in variants.items():
        try:
            result = train_steps(variant, batches, device, config, args.warmup, bf16)
        except torch.OutOfMemoryError:
            print(f"{label:>15}: out of memory with max_frames={max_frames} ({peak_memory(device)} at the time)", flush=True)
            continue
        finally:
            variant.cpu()
        utilisation = result["gpu_utilisation"]
        print(
            f"{label:>15}: {result['audio_h_per_device_h']:.1f} audio h per device h, "
            f"step {result['step_s']:.3f} s (median {result['step_s_median']:.3f}), {result['memory']}"
            + (f", GPU utilisation {utilisation:.0f}%" if utilisation is not None else
               ", GPU utilisation n/a (no nvidia-smi or NVML)" if device.type == "cuda" else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
