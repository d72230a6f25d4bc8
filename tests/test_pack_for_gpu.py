"""tools/pack_for_gpu.py: the travel budget, the synthetic fill, and a tiny pack whose manifests
load from wherever the pack lands."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from conftest import write_audio

TOOL = Path(__file__).resolve().parents[1] / "tools" / "pack_for_gpu.py"
sys.path.insert(0, str(TOOL.parent))
from pack_for_gpu import compression_level, fill, main, travel_budget  # noqa: E402

sys.path.pop(0)


def test_fill_keeps_a_seeded_subset_within_the_budget_in_manifest_order():
    entries = [{"id": str(i), "duration": 1.0 + i % 3} for i in range(30)]
    chosen = fill(entries, bytes_per_second=1000, budget=20_000)
    assert sum(e["duration"] for e in chosen) * 1000 <= 20_000
    assert sum(e["duration"] for e in chosen) >= 18  # fills it, not just the first few
    assert [int(e["id"]) for e in chosen] == sorted(int(e["id"]) for e in chosen)
    assert chosen == fill(entries, 1000, 20_000) and chosen != fill(entries, 1000, 20_000, seed=1)
    assert fill(entries, 1000, 500) == [] and len(fill(entries, 1000, 10**9)) == 30


def test_travel_budget_takes_off_the_tracked_files_the_wheels_and_the_margin(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/.whl/\n/.carry/\n")
    (tmp_path / "code.py").write_bytes(b"x" * 1000)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "a.whl").write_bytes(b"w" * 300)
    (tmp_path / ".carry").mkdir()
    (tmp_path / ".carry" / "old.opus").write_bytes(b"o" * 5000)  # ignored: replaced by the new pack
    budget, parts = travel_budget(tmp_path, limit=10_000, margin=100)
    assert parts == {"limit": 10_000, "repository": 1000 + len("/.whl/\n/.carry/\n"), "wheels": 300, "margin": 100}
    assert budget == 10_000 - parts["repository"] - 300 - 100


def test_compression_level_maps_the_bitrate_onto_libsndfiles_range():
    assert compression_level(256) == 0.0 and compression_level(6) == 1.0 and compression_level(1) == 1.0
    assert compression_level(12) == pytest.approx(0.976)


def test_a_tiny_pack_refuses_to_exceed_its_budget_and_loads_from_anywhere(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(4):
        t = np.arange(16000) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(len(t))
        write_audio(tmp_path / f"u{i}.wav", audio.astype("float32"))
        entries.append({"id": f"u{i}", "audio": str(tmp_path / f"u{i}.wav"), "duration": 1.0, "text": "A", "speaker": "s"})
    (tmp_path / "real.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    for split in ("train", "dev"):
        (synthetic / f"{split}.jsonl").write_text("".join(json.dumps({**e, "id": f"{split}{e['id']}"}) + "\n" for e in entries))
    args = ["--real", f"real={tmp_path / 'real.jsonl'}", "--synthetic", str(synthetic), "--kbps", "12"]

    assert main(["--out", str(tmp_path / "small"), "--budget-mib", "0.005", *args]) == 1  # 5 kB: the real set alone is more
    assert main(["--out", str(tmp_path / "pack"), "--budget-mib", str(40_000 / 2**20), *args]) == 0
    pack = json.loads((tmp_path / "pack" / "pack.json").read_text())
    assert pack["total_bytes"] <= pack["budget_bytes"] == 40_000
    assert pack["sets"]["real"]["utterances"] == 4 and pack["sets"]["synthetic_dev"]["utterances"] == 4
    assert 0 < pack["sets"]["synthetic_train"]["utterances"] <= 4
    moved = shutil.move(tmp_path / "pack", tmp_path / "elsewhere")
    for name in ("real", "synthetic_dev", "synthetic_train"):
        packed = read_manifest(Path(moved) / f"{name}.jsonl")
        assert not Path(json.loads((Path(moved) / f"{name}.jsonl").read_text().splitlines()[0])["audio"]).is_absolute()
        audio = load_audio(packed[0]["audio"])
        assert abs(len(audio) - 16000) < 400 and audio.abs().max() > 0.1


def test_the_padding_after_opus_tags_is_stripped_and_the_audio_is_unchanged():
    import io

    import soundfile as sf

    from pack_for_gpu import strip_tag_padding

    audio = (0.3 * np.sin(np.arange(8000) * 0.1)).astype("float32")
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="OGG", subtype="OPUS", compression_level=0.976)
    padded = buffer.getvalue()
    stripped = strip_tag_padding(padded)
    assert len(padded) - len(stripped) > 500  # libsndfile's zeros, most of a short clip's file
    assert np.array_equal(sf.read(io.BytesIO(padded))[0], sf.read(io.BytesIO(stripped))[0])
    assert strip_tag_padding(stripped) == stripped and strip_tag_padding(b"RIFF" + bytes(60)) == b"RIFF" + bytes(60)
