"""The recipes end to end at their --quick size, as a user runs them (CI runs these)."""

import re
import subprocess
from pathlib import Path

import pytest

from conftest import requires_espeak

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO.parent / "shared" / "data" / "fsdd"


def run_recipe(name, tmp_path, *extra, env=None):
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / name / "run.sh"), "--quick", "--data", str(tmp_path / "data"),
         "--exp", str(tmp_path / "exp"), *extra],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def score_of(path):
    text = path.read_text()
    return float(re.search(r"^WER (\S+)", text, re.M).group(1)), float(re.search(r"^CER (\S+)", text, re.M).group(1))


@pytest.mark.slow
@requires_espeak
def test_synthetic_recipe_quick_learns(tmp_path):
    result = run_recipe("synthetic", tmp_path)
    last_line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"WER test \d+\.\d+", last_line), last_line
    wer, cer = score_of(tmp_path / "exp" / "decode_test" / "score.txt")
    print(f"synthetic --quick: test WER {wer}, CER {cer}")
    assert cer < 0.45, "the quick model should have learned to spell unseen voices' sentences"
    assert (tmp_path / "exp" / "final.pt").is_file()
    assert "| test |" in (tmp_path / "exp" / "RESULTS.md").read_text()

    # idempotent: a second run skips every stage and prints the same last line
    again = run_recipe("synthetic", tmp_path)
    assert "done already" in again.stdout and again.stdout.strip().splitlines()[-1] == last_line


@pytest.mark.slow
@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD}")
def test_fsdd_recipe_quick_learns(tmp_path):
    result = run_recipe("fsdd", tmp_path)
    wer, cer = score_of(tmp_path / "exp" / "decode_test" / "score.txt")
    print(f"fsdd --quick: unseen-speaker WER {wer}, CER {cer}")
    assert wer < 0.5
    assert result.stdout.strip().splitlines()[-1].startswith("WER test ")
