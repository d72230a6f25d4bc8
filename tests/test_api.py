"""The Python API: asr.load_model(...).transcribe(...) and .stream(), on the embedded models."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import asr
from asr.audio import load_audio, resample
from asr.pretrained import SAMPLES_DIR, default_model

SAMPLE = SAMPLES_DIR / "speechocean762-023270303.ogg"


@pytest.fixture(scope="module")
def offline():
    return asr.load_model()


@pytest.fixture(scope="module")
def streaming():
    return asr.load_model(streaming=True, greedy=True)


def test_transcribe_a_file_or_its_samples_at_any_rate(offline, tmp_path):
    result = offline.transcribe(SAMPLE)
    assert result.text and result["text"] == result.text
    assert [w["word"] for w in result["words"]] == [w.word for w in result.words] == result.text.split()
    for word in result.words:
        assert 0.0 <= word.start <= word.end <= result.duration and 0.0 < word.confidence <= 1.0
    audio = load_audio(SAMPLE)
    assert offline.transcribe(audio.numpy()).text == result.text
    # 48 kHz stereo samples, channels first, resampled as a 48 kHz file is
    stereo = resample(audio, 16000, 48000).numpy()
    stereo = np.stack([stereo, stereo])
    sf.write(tmp_path / "stereo.wav", stereo.T, 48000, subtype="FLOAT")
    assert offline.transcribe(stereo, sample_rate=48000).text == offline.transcribe(tmp_path / "stereo.wav").text


def test_bad_audio_shape_is_a_clear_error(offline):
    with pytest.raises(ValueError, match="expected audio"):
        offline.transcribe(np.zeros((1, 2, 3), np.float32))


def test_stream_sessions_are_independent(streaming):
    audio = load_audio(SAMPLE).numpy()
    one, two = streaming.stream(), streaming.stream()
    chunk = 1280
    events_one, events_two = [], []
    for start in range(0, len(audio), chunk):  # interleaved: neither session sees the other's audio
        events_one += one.accept_audio(audio[start : start + chunk])
        events_two += two.accept_audio(audio[::-1][start : start + chunk].copy())
    events_one += one.finish()
    alone = streaming.stream()
    events_alone = [e for start in range(0, len(audio), chunk) for e in alone.accept_audio(audio[start : start + chunk])]
    events_alone += alone.finish()
    key = [(e.kind, e.text, e.utterance, e.start, e.end, e.words) for e in events_one]
    assert key == [(e.kind, e.text, e.utterance, e.start, e.end, e.words) for e in events_alone]
    assert any(e.kind == "partial" for e in events_one) and any(e.kind == "final" and e.text for e in events_one)


def test_offline_model_cannot_stream(offline):
    with pytest.raises(ValueError, match="cannot stream"):
        offline.stream()
    with pytest.raises(ValueError, match="cannot stream"):
        asr.load_model(default_model("offline"), streaming=True)


def test_import_asr_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, asr; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
