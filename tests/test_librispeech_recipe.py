"""recipes/librispeech/run.sh --quick, every stage, against a local mirror of OpenSLR archives.

The archives hold a tiny espeak-ng corpus laid out as the real ones are
(``LibriSpeech/<subset>/SPEAKER/CHAPTER/...``) and are checked against an md5sum file, as a
local mirror's own md5sum.txt would be. Learning is not asserted (tests/test_recipes.py does
that on the synthetic recipe); every stage running and the output contract are.
"""

import hashlib
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import requires_espeak, run_while_progressing
from httpserver import serve

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "recipes" / "librispeech" / "run.sh"
# synthetic split -> the LibriSpeech subset it stands in for (what --quick downloads)
SUBSETS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
STAGES = range(1, 8)


def openslr_archive(split_dir: Path, subset: str) -> bytes:
    """``<subset>.tar.gz`` as on OpenSLR: LibriSpeech/README.TXT and LibriSpeech/<subset>/..."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        readme = b"LibriSpeech stand-in synthesised with espeak-ng for tests\n"
        info = tarfile.TarInfo("LibriSpeech/README.TXT")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        tar.add(split_dir, arcname=f"LibriSpeech/{subset}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A local HTTP mirror serving 12/<subset>.tar.gz, and an md5sum file for it."""
    root = tmp_path_factory.mktemp("mirror")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "synthesize_corpus.py"), "--out", str(root / "corpus"), "--seed", "0",
         "--train-sentences", "32", "--dev-sentences", "6", "--test-sentences", "6",
         "--train-speakers", "4", "--dev-speakers", "2", "--test-speakers", "2", "--jobs", "2"],
        check=True, capture_output=True,
    )
    files = {f"12/{subset}.tar.gz": openslr_archive(root / "corpus" / split, subset) for split, subset in SUBSETS.items()}
    md5sums = root / "md5sum.txt"
    md5sums.write_text("".join(f"{hashlib.md5(data).hexdigest()}  {name}\n" for name, data in files.items()))
    with serve(files) as server:
        server.md5sums = md5sums
        yield server


def run(*args):
    result = run_while_progressing(["bash", str(RUN), *map(str, args)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stages_run(stdout):
    """Stage numbers that did their work (not skipped as done already)."""
    return {int(n) for n, rest in re.findall(r"^== stage (\d+): (.*)$", stdout, re.M) if "done already" not in rest}


@pytest.mark.slow
@requires_espeak
def test_every_stage_end_to_end_from_a_mirror(mirror, tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    options = ["--quick", "--mirror", mirror.url, "--checksums", mirror.md5sums, "--data", data, "--exp", exp]
    stdout = run(*options)

    assert stages_run(stdout) == set(STAGES)
    assert sorted(path for path, _ in mirror.requests) == sorted(f"/12/{s}.tar.gz" for s in SUBSETS.values())
    for subset in SUBSETS.values():
        assert (data / "download" / f"{subset}.done").exists()
        assert (data / f"{subset}.jsonl").stat().st_size > 0
    assert (data / "train.jsonl").read_text() == (data / "train-clean-100.jsonl").read_text()
    assert (exp / "final.pt").is_file() and (exp / "cmvn.pt").is_file()

    *_, dev_line, test_clean_line, last_line = stdout.strip().splitlines()
    assert re.fullmatch(r"WER dev-clean \d+\.\d+", dev_line), dev_line
    assert re.fullmatch(r"WER test-clean \d+\.\d+", test_clean_line), test_clean_line
    assert last_line == test_clean_line.replace("test-clean", "test")  # the contract line of every recipe
    results = (exp / "RESULTS.md").read_text()
    assert "| dev-clean |" in results and "| test-clean |" in results

    # idempotent: nothing is downloaded or recomputed again, and the same lines come out
    requests = len(mirror.requests)
    again = run(*options)
    assert stages_run(again) == set() and again.count("done already") == len(STAGES)
    assert again.strip().splitlines()[-1] == last_line
    assert len(mirror.requests) == requests

    # --data-root: an existing copy is used as it is
    copy = run("--quick", "--data-root", data / "download", "--data", tmp_path / "data2", "--exp", tmp_path / "exp2",
               "--stop-stage", "2")
    assert "nothing to download" in copy and stages_run(copy) == {1, 2}
    assert len(mirror.requests) == requests
    assert (tmp_path / "data2" / "test-clean.jsonl").read_text() == (data / "test-clean.jsonl").read_text()

    # --ngpu 2: training under torchrun, two processes (gloo on a CPU-only machine)
    ddp = run("--quick", "--ngpu", 2, "--data", data, "--exp", tmp_path / "exp_ddp", "--stage", 3, "--stop-stage", 5)
    assert stages_run(ddp) == {3, 4, 5}
    assert "2 process(es)" in ddp and "2 ranks hold identical weights" in ddp
    assert (tmp_path / "exp_ddp" / "final.pt").is_file()
