"""tools/compare_rnns.py end to end on a tiny espeak-ng corpus with tiny models and seconds of training."""

import importlib.util
import sys
from pathlib import Path

import pytest

from asr.checkpoint import load_checkpoint
from asr.data.manifest import librispeech_tree_to_entries, write_manifest
from asr.metrics import read_transcripts, score
from conftest import requires_espeak

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


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of the table's body rows (header and separator left out)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]


@requires_espeak
def test_compare_rnns_trains_four_variants_at_one_budget(tmp_path):
    corpus = _load_tool("synthesize_corpus")
    config = corpus.CorpusConfig(train_sentences=16, dev_sentences=1, test_sentences=3, train_speakers=3,
                                 dev_speakers=1, test_speakers=2, seed=3)
    corpus.synthesize_corpus(tmp_path / "corpus", config, jobs=2, progress=False)
    data = tmp_path / "data"
    for split in ("train", "test"):
        write_manifest(data / f"{split}.jsonl", librispeech_tree_to_entries(tmp_path / "corpus" / split))
    out, plot = tmp_path / "out", tmp_path / "compare.png"

    _load_tool("compare_rnns").main([
        "--data", str(data), "--out", str(out), "--plot", str(plot), "--minutes", "0.03", "--probe-steps", "2",
        "--threads", "1",
        "model_config.hidden_size=24", "model_config.num_layers=1", "model_config.conv_channels=4",
        "data.max_frames=2000", "data.num_workers=0", "optim.warmup_steps=5",
    ])

    rows = {row[0]: row for row in table_rows((out / "compare_rnns.md").read_text())}
    assert list(rows) == ["BiLSTM", "BiGRU", "LSTM", "GRU"]
    hidden = {name: int(row[1]) for name, row in rows.items()}
    parameters = {name: int(row[2].replace(",", "")) for name, row in rows.items()}
    # the budget is the config's own BiLSTM; the others come within 10% of it
    assert hidden["BiLSTM"] == 24
    assert all(abs(n / parameters["BiLSTM"] - 1) < 0.1 for n in parameters.values()), parameters
    # fewer gate blocks (GRU: 3, LSTM: 4) and one direction instead of two buy wider layers
    assert hidden["BiLSTM"] < hidden["BiGRU"] < hidden["GRU"]
    assert hidden["BiLSTM"] < hidden["LSTM"] < hidden["GRU"]
    references = read_transcripts(data / "test.jsonl")
    for name, row in rows.items():
        steps, audio_per_second, rtf = int(row[3]), float(row[5]), float(row[6])
        assert steps >= 1 and audio_per_second > 0 and rtf > 0
        # the table reports this variant's own decoding of the whole test set and the model the
        # budget trained: a mix-up of variants, a partial decoding or a misread score fails here
        hypotheses = read_transcripts(out / name.lower() / "hyp_test.txt")
        assert set(hypotheses) == set(references), name
        report = score(references, hypotheses)
        assert (f"{report.wer:.3f}", f"{report.cer:.3f}") == (row[7], row[8]), name
        assert load_checkpoint(out / name.lower() / "last.pt").metadata["step"] == steps, name
    assert (out / "cmvn.pt").is_file(), "statistics computed once from the training manifest"
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed (pip install -e '.[plot]'): no plot to check")
    assert plot.stat().st_size > 0
