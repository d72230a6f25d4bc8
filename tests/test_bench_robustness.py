"""tools/bench_robustness.py: its level, noise, room, band and silence conditions, and a run on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from conftest import write_audio

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_robustness.py"
sys.path.insert(0, str(TOOL.parent))
from bench_robustness import add_silence, add_white_noise, apply_gain, in_room  # noqa: E402

sys.path.pop(0)


def test_white_noise_is_added_at_the_requested_snr_and_is_seeded():
    audio = 0.1 * torch.sin(torch.arange(16000) * 0.05)
    noisy = add_white_noise(audio, 10.0, torch.Generator().manual_seed(1))
    snr = 10 * torch.log10(audio.pow(2).mean() / (noisy - audio).pow(2).mean())
    assert abs(float(snr) - 10.0) < 0.01
    assert torch.equal(noisy, add_white_noise(audio, 10.0, torch.Generator().manual_seed(1)))
    assert not torch.equal(noisy, add_white_noise(audio, 10.0, torch.Generator().manual_seed(2)))


def test_gain_scales_and_clips_at_full_scale():
    audio = torch.tensor([0.05, -0.2, 0.5])
    assert torch.allclose(apply_gain(audio, -20.0), audio / 10)
    assert torch.allclose(apply_gain(audio, 20.0), torch.tensor([0.5, -1.0, 1.0]))


def test_a_room_rings_on_keeps_length_and_energy_and_is_seeded():
    audio = torch.cat([0.1 * torch.sin(torch.arange(8000) * 0.05), torch.zeros(8000)])
    wet = in_room(audio, 0.5, seed=1)
    assert wet.shape == audio.shape and abs(float(wet.norm() / audio.norm()) - 1) < 1e-5
    assert wet[8000:9600].pow(2).mean() > 1e-3 * wet[:8000].pow(2).mean()  # the silence now rings
    assert torch.equal(wet, in_room(audio, 0.5, seed=1)) and not torch.equal(wet, in_room(audio, 0.5, seed=2))


def test_silence_is_added_on_both_sides():
    audio = torch.tensor([0.5, -0.5])
    padded = add_silence(audio, 0.25)
    assert padded.shape == (2 + 2 * 4000,)
    assert torch.equal(padded[4000:4002], audio) and not padded[:4000].any() and not padded[4002:].any()


def test_noise_hurts_a_model_that_memorised_clean_speech(tiny_checkpoint, tmp_path):
    manifest = tmp_path / "test.jsonl"
    with open(manifest, "w") as f:
        for i, (text, audio) in enumerate(zip(tiny_checkpoint.sentences, tiny_checkpoint.audio)):
            write_audio(tmp_path / f"{i}.flac", audio)
            entry = {"id": str(i), "audio": str(tmp_path / f"{i}.flac"), "duration": len(audio) / 16000,
                     "text": text, "speaker": "s"}
            f.write(json.dumps(entry) + "\n")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--model", str(tiny_checkpoint.path), "--manifest", str(manifest),
         "--gains-db", "-6", "--snrs-db", "-5", "--rt60s-s", "0.5", "--sample-rates", "2000",
         "--silences-s", "0.3"],
        capture_output=True, text=True, check=True,
    )
    rows = {
        cells[0]: (float(cells[1]), float(cells[2]))
        for cells in (line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| "))
        if cells[1].strip() != "WER"
    }
    rows = {name.strip(): scores for name, scores in rows.items()}
    assert list(rows) == ["as recorded", "gain -6 dB", "white noise, SNR -5 dB", "room, RT60 0.5 s",
                          "recorded at 2 kHz", "silence 0.3 s before and after"]
    assert rows["as recorded"][1] <= 0.05, "the tiny model memorised these utterances"
    assert rows["white noise, SNR -5 dB"][1] > rows["as recorded"][1] + 0.1
    assert rows["recorded at 2 kHz"][1] > rows["as recorded"][1] + 0.1, "a 1 kHz band loses most consonants"
