"""Tests for tools/tts.py: every natural voice that is installed speaks, and the warp and rate
act as the corpus needs. A voice that is not installed is skipped with the reason."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import tts  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, said the old man quietly."
WORDS = len(TEXT.split())


def _needs(voice_id: str) -> None:
    reason = tts.missing_reason(voice_id)
    if reason:
        pytest.skip(f"{voice_id}: {reason}")


def _f0(audio: np.ndarray) -> float:
    f0 = torchaudio.functional.detect_pitch_frequency(torch.from_numpy(audio), tts.SAMPLE_RATE, freq_low=60, freq_high=500)
    return float(f0.median())


@pytest.mark.parametrize("voice_id", list(tts.NATURAL_VOICES))
def test_voice_speaks_a_sentence_at_16khz_and_its_rate(voice_id):
    _needs(voice_id)
    audio = tts.speak(voice_id, TEXT, seed=1)
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / tts.SAMPLE_RATE
    assert 0.2 * WORDS < seconds < 0.7 * WORDS, seconds  # at 16 kHz: 2.8 to 9.8 s for 14 words
    assert 0.01 < np.abs(audio).max() <= 1.5 and np.sqrt(np.mean(audio**2)) > 0.003
    assert np.array_equal(audio, tts.speak(voice_id, TEXT, seed=1)), "same settings, different audio"
    faster = tts.speak(voice_id, TEXT, speed=1.25, seed=1)
    assert len(faster) / len(audio) == pytest.approx(1 / 1.25, rel=0.12)


# Male voices: torchaudio's pitch detector is reliable at their F0. One voice per resampling path:
# RHVoice 24 kHz, piper 22.05 kHz, festival's diphones 16 kHz. piper takes its speed setting only
# in part (tts.speak), so its tempo is kept less closely.
@pytest.mark.parametrize("voice_id, tempo", [("rhvoice:bdl", 0.05), ("piper:joe", 0.15), ("festival:ked", 0.05)])
def test_warp_scales_f0_and_keeps_the_tempo(voice_id, tempo):
    _needs(voice_id)
    pitch, seconds = {}, {}
    for factor in (0.9, 1.12):
        audio = tts.speak(voice_id, TEXT, warp_factor=factor)
        pitch[factor], seconds[factor] = _f0(audio), len(audio) / tts.SAMPLE_RATE
    assert pitch[1.12] / pitch[0.9] == pytest.approx(1.12 / 0.9, rel=0.08)
    assert seconds[1.12] / seconds[0.9] == pytest.approx(1.0, abs=tempo)


@pytest.mark.parametrize("voice_id", ["rhvoice:bdl", "festival:kal", "pico:en-US"])
def test_pitch_moves_f0_of_voices_whose_engine_takes_it(voice_id):
    _needs(voice_id)
    assert tts.NATURAL_VOICES[voice_id].pitch
    low, high = (_f0(tts.speak(voice_id, TEXT, pitch=p)) for p in (0.9, 1.12))
    assert high / low > 1.12  # asked for 1.24


def test_select_voices_expands_engines_and_rejects_unknown_names():
    assert tts.select_voices("rhvoice:alan, pico") == ["rhvoice:alan", "pico:en-US"]
    assert tts.select_voices("festival") == ["festival:slt", "festival:ked", "festival:kal"]
    with pytest.raises(ValueError, match="unknown voices rhvoice:lyubov"):
        tts.select_voices("rhvoice,rhvoice:lyubov")


def test_a_voice_that_is_not_installed_is_one_line(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(tts.shutil, "which", lambda name: None if name in ("RHVoice-test", "pico2wave") else real_which(name))
    monkeypatch.setattr(tts.importlib.util, "find_spec", lambda name: None)
    tts.missing_reason.cache_clear()
    try:
        for voice_id in ("rhvoice:bdl", "pico:en-US", "hibari:heart", "piper:joe"):
            reason = tts.missing_reason(voice_id)
            assert reason and "\n" not in reason and ("install_voices.sh" in reason or "pip install" in reason), reason
    finally:
        tts.missing_reason.cache_clear()
