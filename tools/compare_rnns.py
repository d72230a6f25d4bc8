"""LSTM versus GRU, measured: BiLSTM, BiGRU, unidirectional LSTM and unidirectional GRU at the
same parameter budget, each trained for the same wall-clock time on the synthetic recipe.

The four are the ``blstm_ctc`` model with ``cell`` and ``bidirectional`` set; everything else
comes from the training config. The budget is the parameter count of the config's own model
(the synthetic recipe's 3 x 256 BiLSTM by default); each variant gets the hidden size whose
count comes closest to it (a GRU layer has three gate blocks to an LSTM's four, a
unidirectional layer one direction to a bidirectional one's two, so they get wider layers).

Equal time, not equal steps: each variant first trains a few batches of the training manifest
to time its step (data loading included), then ``max_steps`` is set so that the real run fills
``--minutes``. The step count, not a wall-clock cut-off, ends training: the learning-rate
schedule spans the run and the run stays deterministic. Each variant then decodes the test
set greedily on one thread, as ``asr decode`` does.

Prints and writes ``OUT/compare_rnns.md``: parameters, steps, training minutes, training audio
seconds per second (the Trainer's own measure), real-time factor of decoding (wall time /
audio duration, files read and cut as ``asr transcribe`` does), test WER and CER; and a bar
chart of WER, training throughput and RTF per variant at ``--plot`` (needs the ``[plot]``
extra, matplotlib).

    # the README's comparison: 4 minutes of training each, on a quiet machine (estimated 25 minutes in all)
    python tools/compare_rnns.py --minutes 4
    # smaller models, same budget for each: TrainConfig overrides as for asr train
    python tools/compare_rnns.py --minutes 2 --threads 2 model_config.num_layers=2 model_config.hidden_size=192
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from asr.config import config_from_dict, load_config
from asr.data.manifest import read_manifest
from asr.metrics import read_transcripts, score
from asr.models import build_model, count_parameters
from asr.models.blstm_ctc import BLSTMCTCConfig
from asr.text import Tokenizer
from asr.training import TrainConfig, Trainer, compute_cmvn_stats, save_cmvn_stats
from asr.transcribe import decode_manifest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "synthetic" / "conf" / "blstm_ctc.yaml"
DEFAULT_DATA = REPO / "recipes" / "synthetic" / "data" / "default"
DEFAULT_CMVN = REPO / "recipes" / "synthetic" / "exp" / "cmvn.pt"
VARIANTS = {  # name -> (cell, bidirectional)
    "BiLSTM": ("lstm", True),
    "BiGRU": ("gru", True),
    "LSTM": ("lstm", False),
    "GRU": ("gru", False),
}
PROBE_WARMUP_STEPS = 2  # untimed: the first steps pay for memory allocation and the loader's start


@dataclasses.dataclass
class VariantResult:
    name: str
    hidden_size: int
    parameters: int
    steps: int
    train_seconds: float
    audio_per_second: float  # audio seconds trained per second
    rtf: float
    wer: float
    cer: float


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


def resolve_cmvn(cmvn: Path | None, data: Path, train_manifest: Path, n_mels: int, out: Path) -> Path:
    """The CMVN statistics every variant starts from, so that none computes its own."""
    if cmvn is not None:
        return cmvn
    if data.resolve() == DEFAULT_DATA and DEFAULT_CMVN.is_file():
        return DEFAULT_CMVN
    path = out / "cmvn.pt"
    print(f"computing CMVN statistics from {train_manifest} -> {path}")
    save_cmvn_stats(compute_cmvn_stats(train_manifest, n_mels), path)
    return path


def seconds_per_step(config: TrainConfig, probe_steps: int, scratch: Path) -> tuple[float, int]:
    """Mean wall time of a training step, data loading included, over ``probe_steps`` batches
    after warm-up, and the number of batches per epoch.

    The probe takes the run's own first batches. Under the ``max_frames`` cap every batch holds
    about the same padded frames, so later batches take about as long.
    """
    steps = PROBE_WARMUP_STEPS + 1 + probe_steps
    # epochs=steps: enough epochs for the steps whatever the size of one (each has a batch at least)
    trainer = Trainer(dataclasses.replace(config, exp_dir=str(scratch), max_steps=steps, epochs=steps))
    stamps: list[float] = []
    trainer.optimizer.register_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    trainer.fit()
    timed = stamps[PROBE_WARMUP_STEPS:]
    if len(timed) < 2:
        raise RuntimeError("non-finite losses skipped the probe's steps: nothing to time")
    return (timed[-1] - timed[0]) / (len(timed) - 1), trainer.steps_per_epoch


def trained_audio_per_second(log_path: Path) -> float:
    """The Trainer's audio seconds per second from its log.csv, epochs weighted by their steps."""
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in rows]
    epoch_steps = [end - start for start, end in zip([0] + steps, steps)]
    return sum(n * float(row["audio_s_per_s"]) for n, row in zip(epoch_steps, rows)) / steps[-1]


def decode_test_set(checkpoint: Path, manifest: Path, hyp_path: Path) -> tuple[float, float, float]:
    """Greedy decoding of ``manifest`` on one thread, as ``asr decode`` does it:
    (real-time factor, WER, CER)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        decode_manifest(checkpoint, manifest, hyp_path, greedy=True)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    audio_seconds = sum(entry["duration"] for entry in read_manifest(manifest))
    report = score(read_transcripts(manifest), read_transcripts(hyp_path))
    return seconds / audio_seconds, report.wer, report.cer


def run_variant(name: str, config: TrainConfig, test_manifest: Path, minutes: float, probe_steps: int,
                out: Path) -> VariantResult:
    exp_dir = out / name.lower()
    if exp_dir.exists():  # the Trainer would resume an earlier comparison's run from its last.pt
        print(f"{name}: removing the earlier run in {exp_dir}")
        shutil.rmtree(exp_dir)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".probe-{name.lower()}-") as scratch:
        step_seconds, steps_per_epoch = seconds_per_step(config, probe_steps, Path(scratch))
    max_steps = max(1, int(minutes * 60 / step_seconds))
    epochs = math.ceil(max_steps / steps_per_epoch)
    print(f"{name}: {step_seconds:.3f} s per step -> {max_steps} steps ({epochs} epoch(s) of at most "
          f"{steps_per_epoch} batches) in {minutes:g} min")
    run = dataclasses.replace(config, exp_dir=str(exp_dir), max_steps=max_steps, epochs=epochs)
    trainer = Trainer(run)
    start = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - start
    rtf, wer, cer = decode_test_set(exp_dir / "last.pt", test_manifest, exp_dir / "hyp_test.txt")
    return VariantResult(name, run.model_config["hidden_size"], parameter_count(run.model, run.model_config),
                         max_steps, train_seconds, trained_audio_per_second(exp_dir / "log.csv"), rtf, wer, cer)


def markdown_table(results: list[VariantResult]) -> str:
    lines = [
        "| variant | hidden size | parameters | steps | training min | training audio s/s | RTF (1 thread) | test WER | test CER |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.hidden_size} | {r.parameters:,} | {r.steps} | {r.train_seconds / 60:.1f} | "
        f"{r.audio_per_second:.0f} | {r.rtf:.4f} | {r.wer:.3f} | {r.cer:.3f} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


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


def plot_results(pyplot, results: list[VariantResult], title: str, path: Path) -> None:
    """Bars per variant: test WER, training throughput, decoding RTF."""
    names = [r.name for r in results]
    panels = [
        ("test WER (lower is better)", [r.wer for r in results], "{:.3f}"),
        ("training audio s/s (higher is better)", [r.audio_per_second for r in results], "{:.0f}"),
        ("decoding RTF, 1 thread (lower is better)", [r.rtf for r in results], "{:.4f}"),
    ]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(11, 3.4))
    colours = ["tab:blue", "tab:orange", "tab:cyan", "tab:red"]
    for ax, (label, values, number) in zip(axes, panels):
        bars = ax.bar(names, values, color=colours[: len(names)])
        ax.bar_label(bars, labels=[number.format(v) for v in values], fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.15)  # room for the numbers above the bars
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="training YAML; its model's parameter count is the budget (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with train.jsonl and test.jsonl manifests (default: %(default)s)")
    parser.add_argument("--cmvn", type=Path, help="CMVN statistics from asr compute-cmvn (default: "
                        f"{DEFAULT_CMVN} with the default --data, if it exists; else computed from the training "
                        "manifest into OUT/cmvn.pt)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training time of each variant (default: 4)")
    parser.add_argument("--probe-steps", type=int, default=10,
                        help="timed steps that set each variant's max_steps (default: 10)")
    parser.add_argument("--threads", type=int, help="torch CPU threads for training (default: torch's choice); "
                        "decoding always runs on one")
    parser.add_argument("--out", type=Path, default=REPO / "exp" / "compare_rnns",
                        help="experiment folders and compare_rnns.md (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "compare_rnns.png",
                        help="bar chart PNG (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="TrainConfig overrides as for asr train, e.g. model_config.num_layers=2")
    args = parser.parse_args(argv)

    train_manifest, test_manifest = args.data / "train.jsonl", args.data / "test.jsonl"
    for path in (args.config, train_manifest, test_manifest, args.cmvn):
        if path is not None and not path.is_file():
            parser.error(f"{path}: no such file")
    try:
        config = load_config(TrainConfig, args.config, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    if config.model != "blstm_ctc":
        parser.error(f"the variants are blstm_ctc's cells and directions; {args.config} trains {config.model}")
    pyplot = load_pyplot()  # now, not after the training, so that a missing matplotlib shows early
    args.out.mkdir(parents=True, exist_ok=True)

    reference = {"vocab_size": len(Tokenizer()), **config.model_config}
    budget = parameter_count(config.model, reference)
    print(f"budget: {budget:,} parameters ({args.config.name}: {config.model_config})")
    variant_configs = {}
    for name, (cell, bidirectional) in VARIANTS.items():
        model_config = {**reference, "cell": cell, "bidirectional": bidirectional}
        model_config["hidden_size"] = hidden_size_for_budget(config.model, model_config, budget)
        parameters = parameter_count(config.model, model_config)
        print(f"{name:>6}: hidden_size={model_config['hidden_size']}, {parameters:,} parameters "
              f"({parameters / budget - 1:+.1%})")
        variant_configs[name] = model_config

    n_mels = config_from_dict(BLSTMCTCConfig, reference).n_mels
    cmvn = resolve_cmvn(args.cmvn, args.data, train_manifest, n_mels, args.out)
    # no validation set: the comparison scores the test set once, after the run
    data = dataclasses.replace(config.data, train=str(train_manifest), valid=None)
    results = []
    for name, model_config in variant_configs.items():
        variant = dataclasses.replace(config, model_config=model_config, data=data, cmvn=str(cmvn), threads=args.threads)
        results.append(run_variant(name, variant, test_manifest, args.minutes, args.probe_steps, args.out))

    threads = f"{args.threads} thread(s)" if args.threads else f"torch's default threads ({torch.get_num_threads()})"
    setup = (f"{args.minutes:g} min of training each ({threads}) with {args.config.name} on {train_manifest}; "
             f"greedy decoding of {test_manifest} on one thread.")
    report = f"{setup}\n\n{markdown_table(results)}"
    print(f"\n{report}")
    (args.out / "compare_rnns.md").write_text(report)
    print(f"wrote {args.out / 'compare_rnns.md'}")
    if pyplot is not None:
        plot_results(pyplot, results, f"{args.minutes:g} min of training each, about {budget:,} parameters",
                     args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
