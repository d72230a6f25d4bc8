"""The benchmark scripts run end to end at a tiny size and print the tables their docs quote.

They measure speed, so nothing here asserts a time: only that every row is there with numbers,
and what must hold whatever the machine (parity of the exported graph, partials arriving).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
NUMBER = r"(\d+\.\d+(?:e[-+]\d+)?)"


def run_tool(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_bench_export_prints_every_runtime_row():
    pytest.importorskip("onnxruntime")
    out = run_tool("bench_export.py", "--kinds", "streaming", "--seconds", "3", "--cold-runs", "1")
    rows = {}
    for row in ("PyTorch fp32", "ONNX fp32", "ONNX int8", "TorchScript"):
        match = re.search(rf"^\| {row} \| " + r" \| ".join([NUMBER] * 7) + r" \|$", out, re.M)
        assert match, f"no {row} row in:\n{out}"
        rows[row] = [float(x) for x in match.groups()]
    assert rows["PyTorch fp32"][2] == 1.0  # the ratio column is against PyTorch
    assert rows["ONNX fp32"][6] <= 1e-4 and rows["TorchScript"][6] <= 1e-4  # log-prob parity
    assert rows["ONNX int8"][0] < rows["ONNX fp32"][0] / 2  # size


@pytest.mark.slow
def test_bench_serve_prints_a_row_per_level_with_partials():
    pytest.importorskip("aiohttp")
    out = run_tool("bench_serve.py", "--streams", "1", "2", "--seconds", "4")
    for k in (1, 2):
        match = re.search(rf"^\| {k} \| (\d+) \| (\d+) \| {NUMBER} \| {NUMBER} \| (\d+) of {k} \| (\d+) \| (\d+) \| (\d+) \|$",
                          out, re.M)
        assert match, f"no K={k} row in:\n{out}"
        assert float(match.group(3)) > 0  # the server did work for the streams
        assert int(match.group(6)) > 100  # the server's resident memory, in MiB (torch alone is more)


@pytest.mark.slow
def test_bench_loader_on_a_fake_tree_prints_the_loader_rows_and_the_end_to_end_line(tmp_path):
    tree = tmp_path / "fake"
    small = ["--set", "data.max_frames=4000", "model_config.hidden_size=32", "model_config.num_layers=1"]
    out = run_tool("bench_loader.py", "--fake-tree", str(tree), "--fake-utterances", "12", "--fake-repeat", "4",
                   "--jobs", "2", "--device", "cpu", "--batches", "2", "--warmup", "1", *small)
    assert len(list(tree.rglob("*.flac"))) == 12 and len(list(tree.rglob("*.trans.txt"))) == 1
    for place in ("loader", "device"):
        match = re.search(rf"^\| 1 \| {place} \| (\d+) \| (\d+) \| {NUMBER} \| {NUMBER} s \| ", out, re.M)
        assert match, f"no {place} row in:\n{out}"
        assert int(match.group(2)) > 0  # audio per worker CPU-second
    out = run_tool("bench_loader.py", "--manifest", str(tree / "train.jsonl"), "--train", "--device", "cpu",
                   "--steps", "2", "--warmup", "1", *small)
    match = re.search(rf"^end to end, 1 worker\(s\), augmentation on the loader, 2 steps after 1: {NUMBER} audio h "
                      r"per device h .* loader wait (\d+\.\d+) s .*GPU busy n/a$", out, re.M)
    assert match, out
