"""``asr transcribe`` inputs (files, directories, manifests) and outputs (text, JSON, SRT, VTT)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import torch

from conftest import requires_espeak, write_audio

SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d"
VTT_TIME = r"\d\d:\d\d:\d\d\.\d\d\d"


def run_asr(*args):
    return subprocess.run([sys.executable, "-m", "asr", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def audio_dir(tiny_checkpoint, tmp_path):
    """The four memorised utterances, two of them in a subdirectory, plus a file that is not audio."""
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    paths = [root / "utt0.wav", root / "sub" / "utt1.flac", root / "utt2.flac", root / "sub" / "utt3.WAV"]
    for path, audio in zip(paths, tiny_checkpoint.audio):
        write_audio(path, audio)
    (root / "notes.txt").write_text("not audio")
    return root


def sentence(tiny_checkpoint, stem):
    return tiny_checkpoint.sentences[int(stem[-1])].upper()


def close(reference, hypothesis):
    """The memorised sentence, give or take the character the tiny model may get wrong."""
    return jiwer.cer(reference, hypothesis) < 0.1


@requires_espeak
def test_json_for_a_directory_into_output_dir(tiny_checkpoint, audio_dir, tmp_path):
    out = tmp_path / "out"
    result = run_asr("transcribe", "--model", str(tiny_checkpoint.path), "--format", "json", "--output-dir", str(out), str(audio_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["utt0.json", "utt1.json", "utt2.json", "utt3.json"]
    for path in out.iterdir():
        doc = json.loads(path.read_text())
        assert Path(doc["audio"]).stem == path.stem
        assert close(sentence(tiny_checkpoint, path.stem), doc["text"])
        assert [w["word"] for w in doc["words"]] == doc["text"].split()
        times = [t for w in doc["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= doc["duration"]
        assert all(w["start"] < w["end"] and 0 < w["confidence"] <= 1 for w in doc["words"])


@requires_espeak
def test_srt_to_stdout_and_vtt_to_output_dir(tiny_checkpoint, audio_dir, tmp_path):
    audio = str(audio_dir / "utt0.wav")
    srt = run_asr("transcribe", "--model", str(tiny_checkpoint.path), "--format", "srt", audio)
    assert srt.returncode == 0, srt.stderr
    cues = srt.stdout.strip().split("\n\n")
    for number, cue in enumerate(cues, start=1):
        index, times, text = cue.split("\n")
        assert index == str(number)
        assert re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", times), times
        assert text
    assert close(tiny_checkpoint.sentences[0].upper(), " ".join(cue.split("\n")[2] for cue in cues))

    vtt = run_asr("transcribe", "--model", str(tiny_checkpoint.path), "--format", "vtt", "--output-dir", str(tmp_path / "vtt"), audio)
    assert vtt.returncode == 0, vtt.stderr
    text = (tmp_path / "vtt" / "utt0.vtt").read_text()
    assert text.startswith("WEBVTT\n\n")
    cue_times = re.findall(f"^({VTT_TIME}) --> ({VTT_TIME})$", text, flags=re.M)
    assert cue_times and len(cue_times) == len(cues)


@requires_espeak
def test_manifest_input_batched(tiny_checkpoint, audio_dir, tmp_path):
    from asr.data.manifest import write_manifest

    paths = sorted(audio_dir.rglob("utt*"))
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [
        {"id": f"id-{p.stem}", "audio": str(p), "duration": 2.0, "text": "", "speaker": "s"} for p in paths
    ])
    result = run_asr("transcribe", "--model", str(tiny_checkpoint.path), "--manifest", str(manifest), "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [key for key, _ in lines] == [f"id-{p.stem}" for p in paths]
    assert all(close(sentence(tiny_checkpoint, p.stem), text) for p, (_, text) in zip(paths, lines))


@requires_espeak
def test_batches_give_the_same_result(tiny_checkpoint, tmp_path):
    """Padding in a batch changes nothing: short files and the segments of a longer one."""
    from asr.transcribe import Transcriber

    paths = []
    for i, audio in enumerate(tiny_checkpoint.audio):
        paths.append(tmp_path / f"utt{i}.wav")
        write_audio(paths[-1], audio)
    paths.append(tmp_path / "long.wav")  # cut into several segments of unequal lengths
    write_audio(paths[-1], torch.cat([torch.cat([a, torch.zeros(8000)]) for a in tiny_checkpoint.audio]))

    transcriber = Transcriber(tiny_checkpoint.path, max_segment_seconds=3.0)
    one = list(transcriber.transcribe_files(paths, batch_size=1))
    three = list(transcriber.transcribe_files(paths, batch_size=3))
    assert [path for path, _ in three] == [str(p) for p in paths]
    assert [t.text for _, t in one] == [t.text for _, t in three]
    assert all(close(s.upper(), t.text) for s, (_, t) in zip(tiny_checkpoint.sentences, one))
    for (_, a), (_, b) in zip(one, three):
        assert [(w.word, w.start, w.end) for w in a.words] == [(w.word, w.start, w.end) for w in b.words]
        assert a.duration == b.duration


@requires_espeak
def test_failures_listed_at_the_end(tiny_checkpoint, audio_dir, tmp_path):
    bad = audio_dir / "sub" / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    result = run_asr(
        "transcribe", "--model", str(tiny_checkpoint.path), "--format", "json", "--output-dir", str(out),
        "--batch-size", "2", str(audio_dir), str(tmp_path / "missing.flac"), str(tmp_path / "empty"),
    )
    assert result.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["utt0.json", "utt1.json", "utt2.json", "utt3.json"]
    summary = result.stderr[result.stderr.index("3 of 7 file(s) failed:"):].splitlines()[1:]
    assert len(summary) == 3
    assert any(f"{bad}: cannot read audio" in line for line in summary)
    assert any("missing.flac: no such file" in line for line in summary)
    assert any(f"{tmp_path / 'empty'}: no audio files" in line for line in summary)


def test_subtitle_cues_respect_length_duration_and_pauses():
    from asr.cli.writers import subtitle_cues, to_srt, to_vtt
    from asr.transcribe import Transcript, Word

    words = [Word(f"W{i:02d}", 3600 + 0.5 * i, 3600 + 0.5 * i + 0.4, 0.9) for i in range(30)]
    words += [Word("LATER", 3700.0, 3700.5, 0.9)]
    cues = subtitle_cues(words)
    assert all(len(text) <= 42 and end - start <= 7.0 for start, end, text in cues)
    assert " ".join(text for _, _, text in cues) == " ".join(w.word for w in words)
    assert cues[-1][2] == "LATER"  # after a long pause, a cue of its own
    transcript = Transcript(" ".join(w.word for w in words), 3701.0, words)
    assert to_srt(transcript).startswith("1\n01:00:00,000 --> 01:00:")
    assert to_srt(transcript).rstrip().endswith("01:01:40,000 --> 01:01:40,500\nLATER")
    assert to_vtt(transcript).startswith("WEBVTT\n\n01:00:00.000 --> ")
