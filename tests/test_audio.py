import math

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioError, band_limit, iter_audio_blocks, load_audio, split_on_silence


def _tone(seconds=1.0, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * math.pi * freq * t)).astype("float32")


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_load_any_format_and_rate_to_mono_16k(tmp_path, rate, fmt):
    stereo = np.stack([_tone(1.0, rate), _tone(1.0, rate)], axis=1)
    path = tmp_path / f"x.{fmt}"
    sf.write(path, stereo, rate)
    audio = load_audio(path)
    assert audio.dtype == torch.float32 and audio.dim() == 1
    assert abs(len(audio) - 16000) <= 0.02 * 16000  # lossy codecs may pad a few ms
    # a 440 Hz tone stays a 440 Hz tone after resampling and downmixing
    spectrum = torch.fft.rfft(audio[:16000] if len(audio) >= 16000 else audio, n=16000).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 2


def test_stereo_is_averaged(tmp_path):
    left, right = _tone(0.5), np.zeros(8000, dtype="float32")
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert torch.allclose(load_audio(tmp_path / "s.wav"), torch.from_numpy(left) / 2)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"definitely not audio" * 50), "cannot read audio"),
        (lambda p: sf.write(p, np.zeros(0, "float32"), 16000), "no audio samples"),
        (lambda p: (sf.write(p, _tone(2.0), 16000), _truncate(p)), "truncated"),
        (lambda p: sf.write(p, np.array([0.1, np.nan] * 800, "float32"), 16000, subtype="FLOAT"), "NaN or infinite"),
    ],
    ids=["missing", "empty", "garbage", "zero-samples", "truncated", "nan"],
)
def test_bad_input_gives_one_line_error(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as err:
        load_audio(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_flac_is_rejected(tmp_path):
    path = tmp_path / "bad.flac"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, 32000).astype("float32"), 16000)
    _truncate(path)
    with pytest.raises(AudioError, match="truncated or corrupt"):
        load_audio(path)


@pytest.mark.parametrize("rate", [16000, 44100, 22050])
def test_blocks_equal_whole_file(tmp_path, rate):
    noise = np.random.default_rng(1).normal(0, 0.1, rate * 7).astype("float32")
    sf.write(tmp_path / "n.flac", noise, rate, subtype="PCM_24")
    whole = load_audio(tmp_path / "n.flac")
    blocks = torch.cat(list(iter_audio_blocks(tmp_path / "n.flac", seconds=1.3)))
    assert blocks.shape == whole.shape
    assert (blocks - whole).abs().max() < 1e-5


def test_split_on_silence_cuts_in_the_gap():
    loud = torch.from_numpy(_tone(9.0))
    gap = torch.zeros(8000)
    audio = torch.cat([loud, gap, loud])  # silence at 9.0-9.5 s
    segments = list(split_on_silence(iter([audio]), max_seconds=12.0, min_seconds=6.0))
    assert len(segments) == 2
    start, second = segments[1]
    assert 9.0 <= start <= 9.5
    assert sum(len(s) for _, s in segments) == len(audio)


def test_band_limiting_removes_what_an_8_khz_recording_cannot_hold():
    t = torch.arange(16000) / 16000
    low, high = torch.sin(2 * torch.pi * 1000 * t), torch.sin(2 * torch.pi * 6000 * t)
    limited = band_limit(low + high, 8000)
    assert limited.shape == low.shape
    # the 6 kHz tone (amplitude 1) is gone, the 1 kHz one kept, away from the edges
    assert torch.allclose(limited[2000:-2000], low[2000:-2000], atol=1e-2)
