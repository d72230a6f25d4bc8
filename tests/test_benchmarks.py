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
        match = re.search(rf"^\| {k} \| (\d+) \| (\d+) \| {NUMBER} \| {NUMBER} \| (\d+) of {k} \| (\d+) \|$", out, re.M)
        assert match, f"no K={k} row in:\n{out}"
        assert float(match.group(3)) > 0  # the server did work for the streams
