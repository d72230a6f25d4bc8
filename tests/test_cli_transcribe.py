"""``asr transcribe`` as a user runs it: a subprocess on files at many rates and layouts."""

import subprocess
import sys

import jiwer
import pytest

from conftest import requires_espeak, write_audio

FORMATS = [(8000, 1, "wav"), (22050, 2, "flac"), (44100, 1, "flac"), (48000, 2, "wav"), (16000, 1, "wav")]


def run_asr(*args):
    return subprocess.run([sys.executable, "-m", "asr", *args], capture_output=True, text=True, timeout=300)


@requires_espeak
def test_transcribe_multi_rate_files(tiny_checkpoint, tmp_path):
    files, references = [], {}
    for i, (rate, channels, ext) in enumerate(FORMATS):
        k = i % len(tiny_checkpoint.sentences)
        path = tmp_path / f"utt{i}_{rate}_{channels}ch.{ext}"
        write_audio(path, tiny_checkpoint.audio[k], rate, channels)
        files.append(str(path))
        references[str(path)] = tiny_checkpoint.sentences[k].upper()
    result = run_asr("transcribe", "--model", str(tiny_checkpoint.path), *files)
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [path for path, _ in lines] == files
    for path, text in lines:
        # the memorised sentences come back at every rate; at 8 kHz the band above 4 kHz,
        # which this tiny full-band model relies on, is gone, so only most of it comes back
        assert jiwer.cer(references[path], text) < (0.5 if "_8000_" in path else 0.1), (path, text)


@requires_espeak
def test_failed_file_reported_others_transcribed(tiny_checkpoint, tmp_path):
    good = tmp_path / "good.wav"
    write_audio(good, tiny_checkpoint.audio[0])
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = run_asr("transcribe", "--model", str(tiny_checkpoint.path), str(empty), str(good), str(tmp_path / "nope.flac"))
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [f"{good}\t{tiny_checkpoint.sentences[0].upper()}"]
    assert f"{empty}: empty file" in result.stderr and "nope.flac: no such file" in result.stderr
    assert "2 of 3 file(s) failed" in result.stderr


def test_missing_model_is_one_line_error(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    result = run_asr("transcribe", "--model", str(tmp_path / "none.pt"), str(audio))
    assert result.returncode == 2
    assert result.stderr.strip() == f"asr transcribe: error: {tmp_path / 'none.pt'}: no such checkpoint file"


@pytest.mark.slow
@requires_espeak
def test_ten_minute_recording_in_segments(tiny_checkpoint, tmp_path, monkeypatch):
    """A 10-minute file is decoded in segments of at most 30 s cut in the pauses."""
    import torch

    from asr.transcribe import Transcriber

    sentence = torch.cat([tiny_checkpoint.audio[1], torch.zeros(16000)])
    long = sentence.repeat(int(600 * 16000 / len(sentence)) + 1)[: 600 * 16000]
    path = tmp_path / "long.flac"
    write_audio(path, long)

    transcriber = Transcriber(tiny_checkpoint.path)
    seen = []
    decode = transcriber.transcribe_audio
    monkeypatch.setattr(transcriber, "transcribe_audio", lambda audio: seen.append(audio) or decode(audio))
    result = transcriber.transcribe_file(path)
    assert abs(result.duration - 600) < 0.01
    assert sum(len(s) for s in seen) == 600 * 16000
    assert max(len(s) for s in seen) <= 30 * 16000 and len(seen) >= 20
    # every cut lands in a pause between sentences, never inside speech
    cuts = torch.tensor([len(s) for s in seen[:-1]]).cumsum(0).tolist()
    assert all(long[c - 800 : c + 800].abs().max() < 0.01 for c in cuts)
    assert result.text.startswith("SPEECH RECOGNITION")

    cli = run_asr("transcribe", "--model", str(tiny_checkpoint.path), str(path))
    assert cli.returncode == 0 and cli.stdout.split("\t")[1].strip() == result.text
