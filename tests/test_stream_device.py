"""`asr stream` on real PortAudio input devices: fake microphones made with ALSA's `file` plugin,
which PortAudio lists and opens like any capture device, fed with synthetic speech.

ALSA reads ``~/.asoundrc`` when PortAudio initialises (on ``import sounddevice``), so each run
is a subprocess with HOME pointing at a temporary folder holding the fake devices. The file
plugin is not paced in real time and gives silence after the end of its file: `asr stream`
reads the speech at full speed, endpointing finalises each utterance on the silence, and
``--max-seconds`` ends the run.
"""

import os
import subprocess
import sys

import jiwer
import numpy as np
import pytest
import torch

from asr.audio import StreamResampler, resample
from asr.checkpoint import save_checkpoint
from asr.models import build_model
from asr.streaming import Recognizer
from asr.text import Tokenizer
from conftest import requires_espeak

# A 16 kHz microphone, and one that only takes 48 kHz: a `plug` whose rate converter does not
# exist can still convert sample formats and channels but not rates, like a device with a
# fixed clock, so asr must capture at 48 kHz and resample itself.
ASOUNDRC = """
pcm.fakemic_raw {{ type file  slave.pcm "null"  file "/dev/null"  infile "{infile16}"  format "raw" }}
pcm.fakemic {{
    type plug  slave {{ pcm "fakemic_raw"  format S16_LE  rate 16000  channels 1 }}
    hint {{ show on  description "Fake microphone, 16 kHz" }}
}}
pcm.fakemic48_raw {{ type file  slave.pcm "null"  file "/dev/null"  infile "{infile48}"  format "raw" }}
pcm.fakemic48 {{
    type plug  slave {{ pcm "fakemic48_raw"  format S16_LE  rate 48000  channels 1 }}
    rate_converter "no_such_converter"
    hint {{ show on  description "Fake microphone, 48 kHz only" }}
}}
"""


def _why_no_alsa_portaudio() -> str | None:
    try:
        import sounddevice as sd
    except OSError:
        return "PortAudio not installed (apt-get install libportaudio2)"
    except ImportError:
        return "sounddevice not installed (pip install 'asr[mic]')"
    if not any(api["name"] == "ALSA" for api in sd.query_hostapis()):
        return "PortAudio has no ALSA host API"
    return None


REASON = _why_no_alsa_portaudio()
requires_alsa = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def run_stream(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "asr", "stream", *args], env=env, capture_output=True, text=True, timeout=300
    )


def s16le(audio: torch.Tensor) -> bytes:
    return (audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes()


@pytest.fixture(scope="module")
def fake_mics(tmp_path_factory, tiny_streaming_checkpoint):
    """HOME with the two fake microphones, both playing: silence, sentence 0, 1.5 s of silence,
    sentence 2. Returns (home, the 16 kHz audio, the reference sentences)."""
    home = tmp_path_factory.mktemp("fakemic_home")
    audio = tiny_streaming_checkpoint.audio
    stream = torch.cat([torch.zeros(4800), audio[0], torch.zeros(24000), audio[2]])
    (home / "speech16k.raw").write_bytes(s16le(stream))
    (home / "speech48k.raw").write_bytes(s16le(resample(stream, 16000, 48000)))
    (home / ".asoundrc").write_text(
        ASOUNDRC.format(infile16=home / "speech16k.raw", infile48=home / "speech48k.raw")
    )
    sentences = [tiny_streaming_checkpoint.sentences[i].upper() for i in (0, 2)]
    return home, stream, sentences


def direct_finals(checkpoint, audio: torch.Tensor) -> list[str]:
    """What the Recognizer finalises on the same samples handed over directly."""
    recognizer = Recognizer(checkpoint)
    events = [e for start in range(0, len(audio), 2560) for e in recognizer.accept_audio(audio[start : start + 2560])]
    events += recognizer.accept_audio(torch.zeros(3 * 16000)) + recognizer.finish()
    return [e.text for e in events if e.kind == "final"]


@requires_alsa
@requires_espeak
def test_stream_from_fake_microphone(fake_mics, tiny_streaming_checkpoint):
    home, audio, sentences = fake_mics
    listing = run_stream(home, "--list-devices")
    assert listing.returncode == 0 and "fakemic" in listing.stdout, listing.stdout + listing.stderr

    result = run_stream(home, "--model", str(tiny_streaming_checkpoint.path), "--device", "fakemic", "--max-seconds", "8")
    print(result.stdout, result.stderr, sep="\n")
    assert result.returncode == 0, result.stderr
    assert "listening on 'fakemic'" in result.stderr and "resampled" not in result.stderr
    finals = result.stdout.splitlines()
    # the device hands over the file's samples bit for bit: the same finals as direct feeding
    assert finals == direct_finals(tiny_streaming_checkpoint.path, audio)
    assert jiwer.cer(sentences, finals) < 0.1, finals


@requires_alsa
@requires_espeak
def test_stream_from_48khz_only_microphone(fake_mics, tiny_streaming_checkpoint):
    home, _, sentences = fake_mics
    result = run_stream(home, "--model", str(tiny_streaming_checkpoint.path), "--device", "fakemic48", "--max-seconds", "8")
    print(result.stdout, result.stderr, sep="\n")
    assert result.returncode == 0, result.stderr
    assert "listening on 'fakemic48' at 48000 Hz, resampled to 16000 Hz" in result.stderr
    finals = result.stdout.splitlines()
    assert jiwer.cer(sentences, finals) < 0.1, finals


@requires_alsa
@requires_espeak
def test_unknown_device_is_named(fake_mics, tiny_streaming_checkpoint):
    home, _, _ = fake_mics
    result = run_stream(home, "--model", str(tiny_streaming_checkpoint.path), "--device", "no-such-mic")
    assert result.returncode == 2
    assert "asr stream: error: no input device 'no-such-mic'" in result.stderr and "fakemic" in result.stderr


@requires_alsa
def test_no_input_device_message(tmp_path):
    """No sound card (as on CI machines): PortAudio's "Error querying device -1" becomes advice."""
    listing = run_stream(tmp_path, "--list-devices")
    if listing.returncode == 0:
        pytest.skip("this machine has an input device")
    assert listing.stderr.strip() == "asr stream: error: no audio input device found"
    model = tmp_path / "untrained.pt"
    save_checkpoint(model, build_model("streaming_gru", {"hidden_size": 8, "num_layers": 1}, verbose=False),
                    "streaming_gru", Tokenizer())
    result = run_stream(tmp_path, "--model", str(model))
    assert result.returncode == 2
    assert result.stderr.startswith("asr stream: error: no audio input device found; connect a microphone"), result.stderr
    assert "Error querying device" not in result.stderr


def test_missing_portaudio_message(tmp_path):
    # sounddevice raises OSError at import when the PortAudio library is missing
    (tmp_path / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "asr", "stream", "--list-devices"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "asr stream: error: PortAudio library not found: apt-get install libportaudio2"


@pytest.mark.parametrize("rate", [44100, 48000, 8000])
def test_stream_resampler_equals_whole_signal(rate):
    rng = np.random.default_rng(rate)
    audio = torch.from_numpy(rng.standard_normal(rate * 2).astype(np.float32))
    resampler = StreamResampler(rate)
    pieces, start = [], 0
    while start < len(audio):
        size = int(rng.integers(1, rate // 5))
        pieces.append(resampler(audio[start : start + size]))
        start += size
    got = torch.cat(pieces)
    whole = resample(audio, rate)
    assert len(whole) - len(got) <= resampler.margin * 16000 // rate + 160  # only the held-back tail
    assert torch.allclose(got, whole[: len(got)], atol=1e-5)
