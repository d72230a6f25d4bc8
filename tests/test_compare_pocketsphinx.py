"""tools/compare_pocketsphinx.py on two espeak-ng utterances (needs the `compare` extra)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import espeak, requires_espeak, write_audio

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["open the door please", "bring me seven green apples"]


@requires_espeak
def test_pocketsphinx_next_to_an_asr_model(tmp_path):
    pytest.importorskip("pocketsphinx", reason="pip install -e '.[compare]'")
    from asr.checkpoint import save_checkpoint
    from asr.models import build_model
    from asr.text import Tokenizer

    entries = []
    for i, sentence in enumerate(SENTENCES):
        write_audio(tmp_path / f"u{i}.wav", espeak(sentence), rate=22050)  # not 16 kHz: the tool resamples
        entries.append({"id": f"u{i}", "audio": str(tmp_path / f"u{i}.wav"), "duration": None,
                        "text": sentence.upper(), "speaker": "espeak"})
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    model = build_model("blstm_ctc", {"hidden_size": 32, "num_layers": 1, "conv_channels": 4}, verbose=False)
    save_checkpoint(tmp_path / "untrained.pt", model, "blstm_ctc", Tokenizer())  # the plumbing, not the WER

    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "compare_pocketsphinx.py"), "--manifest", str(manifest),
         "--model", str(tmp_path / "untrained.pt"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| system | WER | CER | RTF |"
    assert rows[1].startswith("| PocketSphinx 5.1.1, bundled en-us model |")
    assert rows[2].startswith(f"| asr `{tmp_path / 'untrained.pt'}`, greedy |")
    assert all(re.fullmatch(r"\| .+ \| \d\.\d{3} \| \d\.\d{3} \| \d+\.\d{3} \|", row) for row in rows[1:])
    hyps = (tmp_path / "out" / "hyp_pocketsphinx.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in hyps] == ["u0", "u1"]
    assert float(rows[1].split("|")[2]) < 1.0, "PocketSphinx hears some words of espeak-ng's clear speech"
    assert (tmp_path / "out" / "hyp_asr.txt").read_text().count("\n") == 2
    compared = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in compared] == ["u0", "u1"]
