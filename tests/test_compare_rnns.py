"""tools/compare_rnns.py: equal parameter budgets, the grid of runs, the winner, the gradient-norm
summary, and the study end to end on espeak-ng utterances with tiny models."""

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import soundfile as sf

from asr.checkpoint import load_checkpoint
from asr.config import load_config
from asr.metrics import read_transcripts, score
from asr.text import Tokenizer
from asr.train_setup import TrainConfig
from conftest import OVERFIT_SENTENCES, OVERFIT_VOICES, espeak, requires_espeak

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load_tool(name):
    # tools/ is not a package. dataclasses need the module in sys.modules; a module another test
    # loaded already is reused (a second copy would break pickling of the first one's functions)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare_rnns = _load_tool("compare_rnns")


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Cells of the body rows of the table under ``### heading...``."""
    section = markdown.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    return rows[2:]


def test_variants_have_equal_parameter_counts_at_the_study_size():
    config = load_config(TrainConfig, compare_rnns.DEFAULT_CONFIG)
    reference = {"vocab_size": len(Tokenizer()), **config.model_config}
    budget = compare_rnns.parameter_count("blstm_ctc", reference)
    variants = compare_rnns.variant_configs("blstm_ctc", reference)
    assert list(variants) == list(compare_rnns.VARIANTS)
    for name, model_config in variants.items():
        count = compare_rnns.parameter_count("blstm_ctc", model_config)
        assert abs(count / budget - 1) < 0.01, (name, count, budget)
    # fewer gate blocks (GRU: 3, LSTM: 4) and one direction instead of two buy wider layers
    hidden = {name: c["hidden_size"] for name, c in variants.items()}
    assert hidden["BiLSTM"] == reference["hidden_size"]
    assert hidden["BiLSTM"] < hidden["BiGRU"] < hidden["GRU"] and hidden["BiLSTM"] < hidden["LSTM"] < hidden["GRU"]


def test_the_grid_of_runs():
    variants = {name: {"hidden_size": 10, "num_layers": 3, "layer_norm": True, "cell": c, "bidirectional": b}
                for name, (c, b) in compare_rnns.VARIANTS.items()}
    runs = compare_rnns.first_runs(variants, "BiLSTM", [0, 1], list(compare_rnns.GROUPS))
    names = [run.name for run in runs]
    assert len(names) == len(set(names)) == 4 * 2 + 2
    clipping = [(run.variant, run.seed, run.grad_clip) for run in runs if run.group == "clipping"]
    assert clipping == [("BiLSTM", 0, 1.0), ("BiLSTM", 0, None)]
    # clipping alone still trains the reference run, its clip-5 row
    alone = compare_rnns.first_runs(variants, "BiLSTM", [0, 1], ["clipping"])
    assert [run.name for run in alone] == ["bilstm-seed0", "clip-1", "clip-off"]

    depth = compare_rnns.depth_runs("BiGRU", variants["BiGRU"], 0)
    grid = {(run.model_config["num_layers"], run.model_config["layer_norm"]) for run in depth}
    # the winner's own 3-layer layer-norm run is not trained twice
    assert grid == {(2, True), (5, True), (2, False), (3, False), (5, False)} and len(depth) == 5
    assert all(run.model_config["hidden_size"] == 10 and run.model_config["cell"] == "gru" for run in depth)


def test_the_winner_has_the_lowest_mean_dev_cer():
    results = [{"group": "variants", "variant": name, "dev_cer": cer}
               for name, cers in {"BiLSTM": [0.30, 0.40], "BiGRU": [0.33, 0.34], "LSTM": [0.5], "GRU": [0.6]}.items()
               for cer in cers]
    assert compare_rnns.pick_winner(results) == "BiGRU"  # 0.335 < 0.35, though BiLSTM has the best single run
    assert compare_rnns.pick_winner([r for r in results if r["variant"] != "GRU"]) is None


def test_grad_norm_summary_finds_the_spikes(tmp_path):
    path = tmp_path / "steps.csv"
    norms = [1.0] * 100
    norms[40], norms[70] = 50.0, 12.0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "grad_norm", "lr"])
        writer.writerows([step, 1.0, norm, 1e-3] for step, norm in enumerate(norms, 1))
    summary = compare_rnns.grad_norm_summary(path, clip=5.0)
    assert summary["spikes"] == [41, 71] and summary["max"] == 50.0 and summary["max_step"] == 41
    assert summary["clipped"] == pytest.approx(0.02) and summary["median"] == 1.0


def _memorise_fixture(tmp_path) -> Path:
    """Four espeak-ng sentences as train, dev and test at once: tiny models memorise them."""
    data = tmp_path / "data"
    data.mkdir()
    entries = []
    for i, (text, voice) in enumerate(zip(OVERFIT_SENTENCES, OVERFIT_VOICES)):
        audio = espeak(text, voice=voice).numpy()
        path = data / f"utt{i}.flac"
        sf.write(path, audio, 16000)
        entries.append({"id": f"utt{i}", "audio": str(path), "duration": len(audio) / 16000, "text": text.upper(),
                        "speaker": voice})
    # eight copies to train on: several updates per epoch, so that the dev CER is measured
    # every few updates rather than after each one
    (data / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries * 8))
    for split in ("dev", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return data


TINY = ["model_config.num_layers=1", "model_config.conv_channels=4", "model_config.dropout=0.0",
        "model_config.specaugment.freq_masks=0", "model_config.specaugment.time_masks=0", "data.augment.gain_db=0.0",
        "data.num_workers=0", "data.max_frames=2000", "optim.warmup_steps=5"]


@requires_espeak
def test_every_group_reaches_the_report(tmp_path):
    """All three groups on a one-epoch budget: every run lands in its table with its own numbers."""
    data, out = _memorise_fixture(tmp_path), tmp_path / "out"
    compare_rnns.main(["--data", str(data), "--out", str(out), "--plot", str(tmp_path / "study.png"), "--seeds", "0",
                       "--max-epochs", "1", "--jobs", "2", *TINY, "model_config.hidden_size=16"])
    markdown = (out / "compare_rnns.md").read_text()
    assert [row[0] for row in table_rows(markdown, "LSTM versus GRU")] == list(compare_rnns.VARIANTS)
    results = {r["name"]: r for r in compare_rnns.load_results(out)}
    winner = compare_rnns.pick_winner(list(results.values()))
    depth = table_rows(markdown, "Depth and layer norm")
    assert {(int(row[0]), row[1]) for row in depth} == {(n, ln) for n in (1, 2, 3, 5) for ln in ("yes", "no")} - {(1, "no")}
    assert f"({winner}," in markdown.split("### Depth and layer norm", 1)[1].splitlines()[0]
    clipping = table_rows(markdown, "Gradient clipping")
    assert [row[0] for row in clipping] == ["5.0", "1.0", "off"]
    for row, name in zip(clipping, ["bilstm-seed0", "clip-1", "clip-off"]):
        assert row[-2:] == [f"{results[name]['test_wer']:.3f}", f"{results[name]['test_cer']:.3f}"], name
    for name, result in results.items():
        steps = (out / "runs" / name / "steps.csv").read_text().splitlines()
        assert len(steps) == 1 + result["updates"], name  # every step's gradient norm
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "study.png").stat().st_size > 0


@pytest.mark.slow
@requires_espeak
def test_variants_learn_and_stop_by_the_rule(tmp_path):
    """The four variants memorise four sentences (a finite WER below 1.0 each), the table reports
    each run's own decoding, and each run stopped by the rule or at the cap."""
    data, out = _memorise_fixture(tmp_path), tmp_path / "out"
    # patience longer than CTC's all-blank plateau, which these models leave within ~100 updates
    patience, min_delta, cap = 8, 0.0, 60
    compare_rnns.main(["--data", str(data), "--out", str(out), "--plot", str(tmp_path / "study.png"), "--seeds", "0",
                       "--groups", "variants", "--max-epochs", str(cap), "--patience", str(patience),
                       "--min-delta", str(min_delta), "--jobs", "2", *TINY, "model_config.hidden_size=96",
                       "optim.lr=3e-3"])
    rows = {row[0]: row for row in table_rows((out / "compare_rnns.md").read_text(), "LSTM versus GRU")}
    assert list(rows) == list(compare_rnns.VARIANTS)
    references = read_transcripts(data / "test.jsonl")
    for name, row in rows.items():
        run = out / "runs" / f"{name.lower()}-seed0"
        result = json.loads((run / "result.json").read_text())
        wer = float(row[5])
        assert math.isfinite(wer) and wer < 1.0, (name, wer)
        report = score(references, read_transcripts(run / "hyp_test.txt"))
        assert (f"{report.wer:.3f}", f"{report.cer:.3f}") == (row[5], row[6]), name
        # the model decoded is the best dev-CER epoch's
        cers = [float(r["valid_cer"]) for r in csv.DictReader(open(run / "log.csv"))]
        assert result["dev_cer"] == min(cers) and load_checkpoint(run / "converged.pt").metadata["valid_cer"] == min(cers)
        if result["stopped_early"]:  # no gain of more than min_delta in the last `patience` epochs
            assert min(cers[-patience:]) >= min(cers[:-patience]) - min_delta, (name, cers)
        else:
            assert len(cers) == cap, (name, cers)
