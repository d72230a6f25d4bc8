"""The RNN study: LSTM versus GRU, bidirectional versus not, depth, layer norm and gradient
clipping, each model trained until its dev CER stops improving.

Three groups of runs, all on the same data, schedule and stopping rule:

1. **variants**: BiLSTM, BiGRU, LSTM and GRU (``rnn_ctc`` with ``cell`` and
   ``bidirectional``) at the parameter count of the config's own model, each given the hidden
   size whose count comes closest to it (a GRU layer has three gate blocks to an LSTM's four, a
   unidirectional layer one direction to a bidirectional one's two, so they get wider layers);
   one run per ``--seeds`` seed.
2. **clipping**: the config's own model with the gradient norm clipped at 5, at 1 and not at
   all; every step's gradient norm (before clipping) is logged to ``steps.csv``.
3. **depth**: the variant with the lowest mean dev CER in group 1 (dev, never test, picks it),
   at its width, with 2, 3 and 5 layers, with and without layer norm.

Schedule and stopping rule: AdamW, warm-up, then a constant learning rate (a decaying schedule
would need the run's length in advance); after each epoch the dev set is decoded greedily and
training stops when its CER has not fallen below the best so far by more than ``--min-delta``
for ``--patience`` epochs in a row, or after ``--max-epochs``. The epoch with the lowest dev
CER is the model "at convergence": it decodes the test set greedily on one thread (WER, CER,
real-time factor), as ``asr decode`` does. The unidirectional models also stream the test set
in 160 ms chunks with their recurrent state carried (:meth:`RecurrentStack.step`).

Runs go ``--jobs`` at a time, each a process of its own with ``--threads`` torch threads
(its peak resident memory is measured by the process itself). A finished run leaves
``OUT/runs/NAME/result.json`` and is not run again; an interrupted one resumes from its
``last.pt``. The report, ``OUT/compare_rnns.md``, and the figure (``--plot``; needs the
``[plot]`` extra, matplotlib) are written from whatever runs have finished.

    # the README's study on 2 CPU cores: two runs at a time, one thread each, 1,500 utterances
    python tools/compare_rnns.py --train-utterances 1500 --jobs 2 --threads 1
    # on a GPU: every run at once
    python tools/compare_rnns.py --jobs 16 --device cuda
    # report and figure from the runs finished so far
    python tools/compare_rnns.py --report-only
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from asr.checkpoint import load_checkpoint
from asr.config import config_from_dict, load_config
from asr.data.manifest import read_manifest, write_manifest
from asr.evaluate import decode_manifest
from asr.metrics import read_transcripts, score
from asr.models import MODELS, build_model, count_parameters
from asr.models.rnn_ctc import RNNCTC, RNNCTCConfig
from asr.text import Tokenizer
from asr.train_setup import TrainConfig, compute_cmvn_stats, save_cmvn_stats
from asr.training import Trainer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "synthetic" / "conf" / "blstm_ctc.yaml"
DEFAULT_DATA = REPO / "recipes" / "synthetic" / "data" / "default"
VARIANTS = {  # name -> (cell, bidirectional)
    "BiLSTM": ("lstm", True),
    "BiGRU": ("gru", True),
    "LSTM": ("lstm", False),
    "GRU": ("gru", False),
}
GROUPS = ("variants", "clipping", "depth")
CLIPS = (5.0, 1.0, None)
DEPTHS = (2, 3, 5)
STREAM_CHUNK_MS = 160


@dataclasses.dataclass
class Run:
    name: str  # folder under OUT/runs
    group: str  # variants, clipping or depth
    variant: str
    seed: int
    model_config: dict
    grad_clip: float | None


# ---------------------------------------------------------------------------------------------
# parameter budgets


def parameter_count(model_name: str, model_config: dict) -> int:
    # built on the meta device: shapes only, no memory and no weight initialisation
    with torch.device("meta"):
        return count_parameters(build_model(model_name, model_config, verbose=False))


def hidden_size_for_budget(model_name: str, model_config: dict, budget: int) -> int:
    """The ``hidden_size`` whose model comes closest to ``budget`` parameters, the other fields
    of ``model_config`` as given (the count grows with the hidden size: bisection)."""
    def parameters(hidden_size: int) -> int:
        return parameter_count(model_name, {**model_config, "hidden_size": hidden_size})

    low, high = 1, 1
    while parameters(high) < budget:
        high *= 2
    while low < high:  # the smallest hidden size that reaches the budget
        middle = (low + high) // 2
        if parameters(middle) < budget:
            low = middle + 1
        else:
            high = middle
    candidates = [size for size in (high - 1, high) if size >= 1]
    return min(candidates, key=lambda size: abs(parameters(size) - budget))


def variant_configs(model_name: str, reference: dict) -> dict[str, dict]:
    """Each variant's model config at the parameter count of ``reference``."""
    budget = parameter_count(model_name, reference)
    configs = {}
    for name, (cell, bidirectional) in VARIANTS.items():
        config = {**reference, "cell": cell, "bidirectional": bidirectional}
        config["hidden_size"] = hidden_size_for_budget(model_name, config, budget)
        configs[name] = config
    return configs


def first_runs(variants: dict[str, dict], reference_variant: str, seeds: list[int], groups: list[str]) -> list[Run]:
    """The variants at every seed, then the clipping runs: the first seed's reference run is
    clipping's run at the config's own clip, so it is among them even without the variants group."""
    runs = [Run(f"{name.lower()}-seed{seed}", "variants", name, seed, config, CLIPS[0])
            for name, config in variants.items() for seed in seeds
            if "variants" in groups or ("clipping" in groups and (name, seed) == (reference_variant, seeds[0]))]
    if "clipping" in groups:
        runs += [Run(f"clip-{clip:g}" if clip else "clip-off", "clipping", reference_variant, seeds[0],
                     variants[reference_variant], clip) for clip in CLIPS[1:]]
    return runs


def depth_runs(winner: str, config: dict, seed: int) -> list[Run]:
    """The winner at each depth, with and without layer norm, at its width; the one equal to
    the winner's own variants run is left out."""
    runs = []
    for layer_norm in (True, False):
        for layers in DEPTHS:
            changed = {**config, "num_layers": layers, "layer_norm": layer_norm}
            if changed != config:
                runs.append(Run(f"depth-{winner.lower()}-{layers}l-{'ln' if layer_norm else 'noln'}", "depth", winner,
                                seed, changed, CLIPS[0]))
    return runs


# ---------------------------------------------------------------------------------------------
# one run, in its own process


def best_epoch(log_path: Path) -> dict:
    """The log.csv row with the lowest valid CER (the earliest of equals)."""
    return min(read_log(log_path), key=lambda row: (row["valid_cer"], row["epoch"]))


def streaming_rtf(checkpoint: Path, manifest: Path, chunk_ms: int = STREAM_CHUNK_MS) -> float:
    """Seconds per audio second of a unidirectional model run chunk by chunk on one thread,
    its recurrent state carried: features, convolution and recurrence per chunk. (The
    convolution sees each chunk alone; its one-frame look-ahead changes results at chunk edges
    but not the cost.)"""
    from asr.audio import load_audio
    from asr.features import LogMelFrontend

    model = load_checkpoint(checkpoint).build_model()
    frontend = LogMelFrontend(model.config.n_mels).eval()
    chunk = 16000 * chunk_ms // 1000
    seconds = audio_seconds = 0.0
    with torch.inference_mode():
        for entry in read_manifest(manifest):
            audio = load_audio(entry["audio"])
            start, states = time.perf_counter(), None
            for begin in range(0, len(audio), chunk):
                piece = audio[begin:begin + chunk]
                feats, lengths = frontend(piece[None], torch.tensor([len(piece)]))
                x, _ = model.subsampling(model.cmvn(feats), lengths)
                if x.shape[1] == 0:
                    continue
                x, states = model.encoder.step(x, states)
                model.output(x).log_softmax(dim=-1)
            seconds += time.perf_counter() - start
            audio_seconds += len(audio) / 16000
    return seconds / audio_seconds


def run_one(spec_path: Path) -> None:
    """Trains, picks the best dev-CER epoch, decodes the test set and writes result.json."""
    spec = json.loads(spec_path.read_text())
    exp_dir = spec_path.parent
    config = config_from_dict(TrainConfig, spec["train_config"])
    trainer = Trainer(config)
    started = time.perf_counter()
    trainer.fit()
    wall_seconds = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    best = best_epoch(exp_dir / "log.csv")
    checkpoint = exp_dir / f"epoch-{int(best['epoch'])}.pt"
    shutil.copyfile(checkpoint, exp_dir / "converged.pt")
    for path in exp_dir.glob("epoch-*.pt"):  # the others take disk space and nothing reads them
        path.unlink()
    torch.set_num_threads(1)
    test = Path(spec["test"])
    started = time.perf_counter()
    decode_manifest(exp_dir / "converged.pt", test, exp_dir / "hyp_test.txt", greedy=True)
    decode_seconds = time.perf_counter() - started
    test_seconds = sum(entry["duration"] for entry in read_manifest(test))
    report = score(read_transcripts(test), read_transcripts(exp_dir / "hyp_test.txt"))
    bidirectional = config.model_config.get("bidirectional", True)
    result = {
        **spec["run"],
        "parameters": parameter_count(config.model, {"vocab_size": len(Tokenizer()), **config.model_config}),
        "epochs": trainer.epoch,
        "updates": trainer.step,
        "stopped_early": trainer.stopped_early,
        "skipped_steps": trainer.skipped_batches,
        "best_epoch": int(best["epoch"]),
        "best_updates": int(best["step"]),
        "dev_cer": best["valid_cer"],
        "dev_wer": best["valid_wer"],
        "train_seconds": trainer.train_seconds,
        "wall_seconds": wall_seconds,
        "test_wer": report.wer,
        "test_cer": report.cer,
        "decode_rtf": decode_seconds / test_seconds,
        "streaming_rtf": None if bidirectional else streaming_rtf(exp_dir / "converged.pt", test),
        # ru_maxrss is in KiB on Linux; the loader's worker processes are not counted
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": peak_gpu,
    }
    (exp_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# the study


def subset_manifest(train: Path, utterances: int | None, out: Path) -> Path:
    """The first ``utterances`` of the training manifest in a seeded shuffle (all when None)."""
    if utterances is None:
        return train
    entries = read_manifest(train)
    if utterances > len(entries):
        raise ValueError(f"--train-utterances {utterances}: {train} has only {len(entries)}")
    random.Random(0).shuffle(entries)
    write_manifest(out, entries[:utterances])
    return out


def launch(run: Run, base: TrainConfig, test: Path, out: Path, threads: int) -> subprocess.Popen:
    exp_dir = out / "runs" / run.name
    exp_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(base, exp_dir=str(exp_dir), model_config=run.model_config, seed=run.seed,
                                 optim=dataclasses.replace(base.optim, grad_clip=run.grad_clip), threads=threads)
    spec = {"run": dataclasses.asdict(run), "train_config": dataclasses.asdict(config), "test": str(test)}
    (exp_dir / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(exp_dir / "train.log", "a") as log:
        return subprocess.Popen([sys.executable, __file__, "--run", str(exp_dir / "spec.json")],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def run_all(runs: list[Run], base: TrainConfig, test: Path, out: Path, jobs: int, threads: int) -> None:
    """Runs without a result.json, ``jobs`` at a time; a failed run is reported, not fatal."""
    queue = [run for run in runs if not (out / "runs" / run.name / "result.json").exists()]
    running: dict[str, subprocess.Popen] = {}
    while queue or running:
        while queue and len(running) < jobs:
            run = queue.pop(0)
            print(f"{time.strftime('%H:%M:%S')} start {run.name} ({len(queue)} waiting)", flush=True)
            running[run.name] = launch(run, base, test, out, threads)
        time.sleep(2)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}; see train.log)"
                print(f"{time.strftime('%H:%M:%S')} {status}: {name}", flush=True)


def load_results(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*/result.json"))]


def pick_winner(results: list[dict]) -> str | None:
    """The variant with the lowest mean dev CER over its seeds, once every variant has a result."""
    by_variant = {name: [r["dev_cer"] for r in results if r["group"] == "variants" and r["variant"] == name]
                  for name in VARIANTS}
    if not all(by_variant.values()):
        return None
    return min(by_variant, key=lambda name: statistics.mean(by_variant[name]))


# ---------------------------------------------------------------------------------------------
# report


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def to_target(log: list[dict], target: float) -> tuple[int, float] | None:
    """(updates, training seconds) at the first epoch whose dev CER is at most ``target``."""
    for row in log:
        if row["valid_cer"] <= target:
            return int(row["step"]), row["train_s"]
    return None


def mean_range(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def grad_norm_summary(steps_csv: Path, clip: float | None) -> dict:
    with open(steps_csv) as f:
        rows = [(int(row["step"]), float(row["grad_norm"])) for row in csv.DictReader(f)]
    norms = sorted(norm for _, norm in rows)
    step_of_max = max(rows, key=lambda row: row[1])[0]
    median = statistics.median(norms)
    spikes = [step for step, norm in rows if norm > 10 * median]
    return {
        "median": median,
        "p99": norms[min(len(norms) - 1, int(0.99 * len(norms)))],
        "max": norms[-1],
        "max_step": step_of_max,
        "clipped": sum(norm > clip for norm in norms) / len(norms) if clip else 0.0,
        "spikes": spikes,
        "non_finite": sum(not (norm < float("inf")) for norm in norms),
    }


def with_reference(group: list[dict], results: list[dict]) -> list[dict]:
    """A depth or clipping group's runs and the variants run it varies (same variant and seed:
    the 3-layer layer-norm row, the clip-5 row)."""
    if not group:
        return []
    return group + [r for r in results if r["group"] == "variants" and r["variant"] == group[0]["variant"]
                    and r["seed"] == group[0]["seed"]]


def report(out: Path, settings: str) -> str:
    results = load_results(out)
    if not results:
        return "no finished runs yet\n"
    runs = out / "runs"
    variants = [r for r in results if r["group"] == "variants"]
    lines = [settings, ""]
    if variants:
        # the fixed dev CER for "updates to reach": the highest best-dev-CER of any variant
        # run, so every run reaches it
        target = round(max(r["dev_cer"] for r in variants) + 0.005, 2)
        lines += [
            f"### LSTM versus GRU, at equal parameter count\n",
            f"Mean over seeds, (min-max) where there are two. \"To dev CER {target}\": updates and training minutes "
            f"until the dev CER first reached {target} (the highest best dev CER of any variant run, so every run "
            "reaches it).\n",
            f"| variant | hidden | parameters | seeds | epochs | test WER | test CER | best dev CER | updates to dev CER "
            f"{target} | training min to dev CER {target} | training audio s/s | decode RTF | streaming RTF | peak RSS MB |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in VARIANTS:
            rs = [r for r in variants if r["variant"] == name]
            if not rs:
                continue
            logs = [read_log(runs / r["name"] / "log.csv") for r in rs]
            reach = [to_target(log, target) for log in logs]
            audio_rate = [trained_audio_per_second(log) for log in logs]
            stream = [r["streaming_rtf"] for r in rs if r["streaming_rtf"] is not None]
            lines.append(
                f"| {name} | {rs[0]['model_config']['hidden_size']} | {rs[0]['parameters']:,} | {len(rs)} | "
                f"{', '.join(str(r['epochs']) for r in rs)} | {mean_range([r['test_wer'] for r in rs])} | "
                f"{mean_range([r['test_cer'] for r in rs])} | {mean_range([r['dev_cer'] for r in rs])} | "
                f"{mean_range([x[0] for x in reach], 0)} | {mean_range([x[1] / 60 for x in reach], 1)} | "
                f"{mean_range(audio_rate, 0)} | {mean_range([r['decode_rtf'] for r in rs], 4)} | "
                f"{mean_range(stream, 4) if stream else '-'} | {max(r['peak_rss_mb'] for r in rs):.0f} |"
            )
        lines.append("")
    depth = with_reference([r for r in results if r["group"] == "depth"], results)
    if depth:
        winner = depth[0]["variant"]
        lines += [
            f"### Depth and layer norm ({winner}, hidden size {depth[0]['model_config']['hidden_size']}, seed "
            f"{depth[0]['seed']})\n",
            "Gradient norms before clipping; a spike is a step whose norm is over 10x the run's median.\n",
            "| layers | layer norm | parameters | epochs | updates | best dev CER | test WER | test CER | training audio s/s | "
            "decode RTF | median / max gradient norm (step) | steps clipped | spikes | skipped steps |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = sorted(depth, key=lambda r: (not r["model_config"]["layer_norm"], r["model_config"]["num_layers"]))
        for r in rows:
            g = grad_norm_summary(runs / r["name"] / "steps.csv", r["grad_clip"])
            lines.append(
                f"| {r['model_config']['num_layers']} | {'yes' if r['model_config']['layer_norm'] else 'no'} | "
                f"{r['parameters']:,} | {r['epochs']} | {r['updates']} | {r['dev_cer']:.3f} | {r['test_wer']:.3f} | "
                f"{r['test_cer']:.3f} | {trained_audio_per_second(read_log(runs / r['name'] / 'log.csv')):.0f} | "
                f"{r['decode_rtf']:.4f} | {g['median']:.2f} / {g['max']:.1f} ({g['max_step']}) | {g['clipped']:.0%} | "
                f"{len(g['spikes'])} | {r['skipped_steps']} |"
            )
        lines.append("")
    clipping = with_reference([r for r in results if r["group"] == "clipping"], results)
    if clipping:
        reference = clipping[0]["variant"]
        lines += [
            f"### Gradient clipping ({reference}, seed {clipping[0]['seed']})\n",
            "Gradient norms are measured before clipping, at every step. A spike is a step whose norm is over 10x "
            "the run's median.\n",
            "| clip | median norm | p99 norm | max norm (step) | steps clipped | spikes (first steps) | non-finite steps | "
            "epochs | best dev CER | test WER | test CER |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(clipping, key=lambda r: -(r["grad_clip"] or 0)):
            g = grad_norm_summary(runs / r["name"] / "steps.csv", r["grad_clip"])
            spikes = f"{len(g['spikes'])}" + (f" ({', '.join(map(str, g['spikes'][:5]))})" if g["spikes"] else "")
            lines.append(
                f"| {r['grad_clip'] if r['grad_clip'] else 'off'} | {g['median']:.2f} | {g['p99']:.2f} | "
                f"{g['max']:.1f} ({g['max_step']}) | {g['clipped']:.0%} | {spikes} | {g['non_finite']} | {r['epochs']} | "
                f"{r['dev_cer']:.3f} | {r['test_wer']:.3f} | {r['test_cer']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def trained_audio_per_second(rows: list[dict]) -> float:
    """The Trainer's audio seconds per second from its log.csv rows, epochs weighted by their steps."""
    steps = [int(row["step"]) for row in rows]
    epoch_steps = [end - start for start, end in zip([0] + steps, steps)]
    return sum(n * row["audio_s_per_s"] for n, row in zip(epoch_steps, rows)) / steps[-1]


def load_pyplot():
    """matplotlib's pyplot drawing to files only, or None (with a message) when not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed, so there will be no plot: pip install -e '.[plot]'", file=sys.stderr)
        return None
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as pyplot

    return pyplot


def plot(pyplot, out: Path, path: Path) -> None:
    """Dev CER per update and per training minute (variants), per update (depth), and gradient
    norms per step (clipping: the median and the maximum of every 25 steps)."""
    import numpy as np

    results = load_results(out)
    order = {name: i for i, name in enumerate(VARIANTS)}
    results.sort(key=lambda r: (order[r["variant"]], r["seed"], not r["model_config"]["layer_norm"],
                                r["model_config"]["num_layers"], r["name"]))
    runs = out / "runs"
    figure, axes = pyplot.subplots(1, 4, figsize=(19, 4.2))
    colours = dict(zip(VARIANTS, ["tab:blue", "tab:orange", "tab:cyan", "tab:red"]))
    depth = [r["name"] for r in with_reference([r for r in results if r["group"] == "depth"], results)]
    clipping = with_reference([r for r in results if r["group"] == "clipping"], results)
    for r in results:
        log = read_log(runs / r["name"] / "log.csv")
        steps, minutes, cer = [row["step"] for row in log], [row["train_s"] / 60 for row in log], [row["valid_cer"] for row in log]
        if r["group"] == "variants":
            style = dict(color=colours[r["variant"]], linestyle="-" if r["seed"] == min(
                x["seed"] for x in results if x["group"] == "variants") else "--", label=f"{r['variant']} seed {r['seed']}")
            axes[0].plot(steps, cer, **style)
            axes[1].plot(minutes, cer, **style)
        if r["name"] in depth:
            config = r["model_config"]
            axes[2].plot(steps, cer, linestyle="-" if config["layer_norm"] else "--", marker=".",
                         label=f"{config['num_layers']} layers, {'layer norm' if config['layer_norm'] else 'no layer norm'}")
    window = 25
    for r in sorted(clipping, key=lambda r: -(r["grad_clip"] or 0)):
        with open(runs / r["name"] / "steps.csv") as f:
            norms = np.array([float(row["grad_norm"]) for row in csv.DictReader(f)])
        blocks = norms[: len(norms) // window * window].reshape(-1, window)
        x = (np.arange(len(blocks)) + 0.5) * window
        label = f"clip {r['grad_clip']:g}" if r["grad_clip"] else "no clipping"
        line, = axes[3].plot(x, np.median(blocks, axis=1), label=f"{label}: median")
        axes[3].plot(x, blocks.max(axis=1), color=line.get_color(), linewidth=0.6, alpha=0.6, label=f"{label}: max")
    titles = (("LSTM vs GRU: dev CER per update", "update"), ("LSTM vs GRU: dev CER per training minute", "training minutes"),
              ("depth and layer norm: dev CER per update", "update"),
              ("gradient norm before clipping, per 25 updates", "update"))
    for ax, (title, xlabel) in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dev CER (greedy)" if ax is not axes[3] else "global L2 norm")
        if ax.lines:
            ax.legend(fontsize=7)
        if ax is not axes[3]:
            ax.set_ylim(0.3, 1.02)
    axes[3].set_yscale("log")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="training YAML; its model is the parameter budget and clipping's model (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with train.jsonl, dev.jsonl and test.jsonl manifests (default: %(default)s)")
    parser.add_argument("--train-utterances", type=int,
                        help="train on this many utterances of train.jsonl (a seeded random subset; default: all)")
    parser.add_argument("--cmvn", type=Path, help="CMVN statistics from asr compute-cmvn (default: computed from "
                        "the training utterances into OUT/cmvn.pt)")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS),
                        help="which groups of runs (default: all; depth needs the variants' results)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the variant runs (default: 0 1)")
    parser.add_argument("--max-epochs", type=int, default=40, help="the cap on each run (default: 40)")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop after this many epochs without a gain in dev CER (default: 3)")
    parser.add_argument("--min-delta", type=float, default=0.002,
                        help="the fall in dev CER that counts as a gain (default: 0.002)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default: 1)")
    parser.add_argument("--device", default="auto", help="training device (default: auto)")
    parser.add_argument("--out", type=Path, default=REPO / "exp" / "compare_rnns",
                        help="runs and compare_rnns.md (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "compare_rnns.png",
                        help="figure PNG (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="write the report and figure from finished runs")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # one run's spec.json, in a child process
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="TrainConfig overrides as for asr train, e.g. model_config.num_layers=2")
    args = parser.parse_args(argv)
    if args.run is not None:
        run_one(args.run)
        return

    for path in (args.config, args.data / "train.jsonl", args.data / "dev.jsonl", args.data / "test.jsonl", args.cmvn):
        if path is not None and not path.is_file():
            parser.error(f"{path}: no such file")
    try:
        config = load_config(TrainConfig, args.config, [
            # the study's schedule and stopping rule; the command line's overrides come after
            "optim.final_lr_ratio=1.0", f"epochs={args.max_epochs}", f"patience={args.patience}",
            f"min_delta={args.min_delta}", f"keep_epoch_checkpoints={args.max_epochs}", "log_steps=true",
            f"device={args.device}", *args.overrides,
        ])
    except ValueError as err:
        parser.error(str(err))
    if MODELS.get(config.model, (None,))[0] is not RNNCTC:
        parser.error(f"the variants are rnn_ctc's cells and directions; {args.config} trains {config.model}")
    pyplot = load_pyplot()  # now, not after the training, so that a missing matplotlib shows early
    args.out.mkdir(parents=True, exist_ok=True)
    settings = (
        f"Each run: {args.config.name}'s training settings; constant learning rate after warm-up; stops when the dev "
        f"CER has not fallen by more than {args.min_delta:g} for {args.patience} epochs (at most {args.max_epochs}); "
        f"the best dev-CER epoch decodes the test set greedily on one thread. Training data: "
        f"{args.train_utterances or 'all'} utterances of {args.data / 'train.jsonl'}; {args.threads} thread(s) per run, "
        f"{args.jobs} run(s) at a time, on {'a GPU' if torch.cuda.is_available() and args.device != 'cpu' else 'CPU'}."
    )

    if not args.report_only:
        train = subset_manifest(args.data / "train.jsonl", args.train_utterances, args.out / "train.jsonl")
        reference = {"vocab_size": len(Tokenizer()), **config.model_config}
        n_mels = config_from_dict(RNNCTCConfig, reference).n_mels
        cmvn = args.cmvn or args.out / "cmvn.pt"
        if not cmvn.is_file():
            print(f"computing CMVN statistics from {train} -> {cmvn}")
            save_cmvn_stats(compute_cmvn_stats(train, n_mels), cmvn)
        base = dataclasses.replace(config, cmvn=str(cmvn), data=dataclasses.replace(
            config.data, train=str(train), valid=str(args.data / "dev.jsonl")))
        variants = variant_configs(config.model, reference)
        reference_variant = next(name for name, (cell, bidirectional) in VARIANTS.items()
                                 if (cell, bidirectional) == (reference.get("cell", "lstm"), reference.get("bidirectional", True)))
        for name, model_config in variants.items():
            parameters = parameter_count(config.model, model_config)
            print(f"{name:>6}: hidden_size={model_config['hidden_size']}, {parameters:,} parameters")
        test = args.data / "test.jsonl"
        run_all(first_runs(variants, reference_variant, args.seeds, args.groups), base, test, args.out, args.jobs,
                args.threads)
        winner = pick_winner(load_results(args.out)) if "depth" in args.groups else None
        if "depth" in args.groups and winner is None:
            print("no result for some variant: no winner, so no depth runs", file=sys.stderr)
        elif winner is not None:
            print(f"lowest mean dev CER: {winner}; depth runs at its width")
            run_all(depth_runs(winner, variants[winner], args.seeds[0]), base, test, args.out, args.jobs, args.threads)

    text = report(args.out, settings)
    print(f"\n{text}")
    (args.out / "compare_rnns.md").write_text(text)
    print(f"wrote {args.out / 'compare_rnns.md'}")
    if pyplot is not None and load_results(args.out):
        plot(pyplot, args.out, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
