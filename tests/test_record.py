"""`asr record`: prompts, takes cut at the speaker's pause, level checks, keep/redo/skip/quit,
and the whole verb on a fake ALSA microphone (as `asr stream` is tested)."""

import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from asr.record import (PromptError, RecordConfig, level_meter, read_prompts, record_take, run_session,
                        take_problems)
from asr.text import ALPHABET, normalize_text
from conftest import espeak, requires_espeak
from test_stream_device import requires_alsa, s16le


def tone(seconds: float, amplitude: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * 16000)) / 16000
    return amplitude * torch.sin(2 * torch.pi * 220 * t)


def chunks_of(audio: torch.Tensor, size: int = 800):
    """A microphone that plays ``audio`` then silence forever."""
    for start in range(0, len(audio), size):
        yield audio[start : start + size]
    while True:
        yield torch.zeros(size)


def test_shipped_prompts_are_writable_and_distinct():
    prompts = read_prompts()
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    for prompt in prompts:
        text, _ = normalize_text(prompt)
        assert set(text) <= set(ALPHABET) and 2 <= len(text.split()) <= 14, prompt


def test_own_prompts_and_bad_lines(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("# my list\nHello there.\n\nGood night, moon!\n")
    assert read_prompts(good) == ["Hello there.", "Good night, moon!"]
    bad = tmp_path / "bad.txt"
    bad.write_text("Fine line.\nCall me at 555 1234.\n")
    with pytest.raises(PromptError, match=r"bad.txt:2: characters a model cannot write: '1' '2' '3' '4' '5'"):
        read_prompts(bad)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(PromptError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_take_stops_at_the_pause_and_is_trimmed():
    config = RecordConfig(pause_s=0.5, margin_s=0.1)
    audio = torch.cat([torch.zeros(8000), tone(1.0), torch.zeros(1600), tone(0.5), torch.zeros(16000), tone(2.0)])
    levels = []
    take = record_take(chunks_of(audio), config, meter=lambda level, seconds: levels.append(level))
    # both bursts (a short gap is no pause), not the third; 0.1 s of silence kept each side
    assert abs(len(take) - (1.0 + 0.1 + 0.5 + 0.2) * 16000) <= 160
    assert max(levels) > -15 and min(levels) < -90


def test_take_problems():
    config = RecordConfig()
    assert take_problems(tone(1.0, 0.3), config) == []
    assert take_problems(torch.zeros(16000), config)[0].startswith("heard nothing")
    assert take_problems(tone(1.0, 1.2).clamp(-1, 1), config)[0].startswith("clipped")
    assert take_problems(tone(1.0, 0.02), config)[0].startswith("too quiet")
    nothing = record_take(chunks_of(torch.zeros(0)), RecordConfig(wait_s=0.5))
    assert len(nothing) == 0


def test_level_meter():
    assert level_meter(0.0, 1.0).startswith("|" + "#" * 30 + "|")
    assert level_meter(-30.0, 1.0).count("#") == 15 and "-30 dBFS" in level_meter(-30.0, 1.0)
    assert level_meter(-90.0, 1.0).count("#") == 0


def test_session_keep_redo_skip_quit_and_continue(tmp_path):
    prompts = ["first one", "second one", "third one", "fourth one"]
    bursts = [tone(0.6 + 0.2 * i) for i in range(6)]
    audio = torch.cat([torch.cat([b, torch.zeros(24000)]) for b in bursts])
    # prompt 1: record, keep; prompt 2: record, redo, keep the second take; prompt 3: skip; quit at 4
    answers = iter(["", "", "", "r", "", "s", "q"])
    out = open(tmp_path / "log.txt", "w+")
    written = run_session(prompts, tmp_path / "takes", chunks_of(audio), ask=lambda _: next(answers), out=out)
    assert written == 2
    assert sorted(p.name for p in (tmp_path / "takes").iterdir()) == ["1.txt", "1.wav", "2.txt", "2.wav"]
    assert (tmp_path / "takes" / "2.txt").read_text() == "second one\n"
    first, rate = sf.read(tmp_path / "takes" / "1.wav")
    second, _ = sf.read(tmp_path / "takes" / "2.wav")
    assert rate == 16000 and sf.info(tmp_path / "takes" / "1.wav").subtype == "PCM_16"
    assert abs(len(first) / 16000 - (0.6 + 0.25)) < 0.02  # burst 1 (at the very start) plus the end margin
    assert abs(len(second) / 16000 - (1.0 + 0.5)) < 0.02  # burst 3: burst 2 was redone
    out.seek(0)
    log = out.read()
    assert "[1/4] first one" in log and "[4/4] fourth one" in log and "saved 2.wav + 2.txt" in log

    # a second session passes over what is recorded and starts at prompt 3
    answers = iter(["", ""])
    out = open(tmp_path / "log2.txt", "w+")
    assert run_session(prompts, tmp_path / "takes", chunks_of(tone(1.0)), ask=lambda _: next(answers), out=out,
                       limit=1) == 1
    out.seek(0)
    log = out.read()
    assert "2 of 4 prompts already recorded" in log and "[3/4] third one" in log
    assert (tmp_path / "takes" / "3.txt").read_text() == "third one\n"


def test_nothing_heard_is_not_kept(tmp_path):
    answers = iter(["", "", "s"])  # record; Enter after "heard nothing" records again; then skip
    out = open(tmp_path / "log.txt", "w+")
    written = run_session(["a prompt"], tmp_path / "takes", chunks_of(torch.zeros(0)), ask=lambda _: next(answers),
                          out=out, config=RecordConfig(wait_s=0.3))
    out.seek(0)
    assert written == 0 and out.read().count("heard nothing") == 2
    assert list((tmp_path / "takes").iterdir()) == []


ASOUNDRC = """
pcm.fakemic_raw {{ type file  slave.pcm "null"  file "/dev/null"  infile "{infile}"  format "raw" }}
pcm.fakemic {{ type plug  slave {{ pcm "fakemic_raw"  format S16_LE  rate 16000  channels 1 }}
              hint {{ show on  description "Fake microphone" }} }}
"""


@requires_alsa
@requires_espeak
def test_record_verb_on_fake_microphone(tmp_path):
    """The fake microphone plays two sentences with pauses; `asr record` keeps both, with the
    prompts of the user's own list, through its real stdin."""
    sentences = ["open the door please", "the cat sat on the mat"]
    speech = [espeak(s) for s in sentences]
    stream = torch.cat([torch.zeros(3200), speech[0], torch.zeros(32000), speech[1], torch.zeros(32000)])
    (tmp_path / "voice.raw").write_bytes(s16le(stream))
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(infile=tmp_path / "voice.raw"))
    (tmp_path / "prompts.txt").write_text("\n".join(sentences) + "\nnever reached\n")
    result = subprocess.run(
        [sys.executable, "-m", "asr", "record", str(tmp_path / "me"), "--device", "fakemic",
         "--prompts", str(tmp_path / "prompts.txt"), "--count", "2"],
        input="\n\n\n\n", env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    print(result.stderr)
    assert result.returncode == 0, result.stderr
    assert "recording from 'fakemic'" in result.stderr and "2 take(s) written" in result.stderr
    for i, (sentence, audio) in enumerate(zip(sentences, speech), 1):
        assert (tmp_path / "me" / f"{i}.txt").read_text() == sentence + "\n"
        take, _ = sf.read(tmp_path / "me" / f"{i}.wav", dtype="float32")
        # the sentence, trimmed to its speech with a margin: never much longer than what was said
        assert 0.7 * len(audio) < len(take) < len(audio) + 0.6 * 16000, (len(take), len(audio))


def test_record_verb_without_microphone(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asr", "record", str(tmp_path / "me")],
                            env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    if result.returncode == 0:
        pytest.skip("this machine has an input device")
    assert result.returncode == 2 and result.stderr.startswith("asr record: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
