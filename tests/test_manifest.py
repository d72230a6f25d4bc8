import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import load_audio
from asr.audio import change_speed
from asr.data.manifest import (
    cache_audio,
    EMPTY_AUDIO,
    EMPTY_TEXT,
    MISSING_AUDIO,
    NO_DURATION,
    NO_TRANSCRIPT,
    UNKNOWN_CHARACTERS,
    UNREADABLE_AUDIO,
    ManifestError,
    librispeech_tree_to_entries,
    read_manifest,
    sample_entries,
    validate_entries,
    write_manifest,
)
from asr.text import Tokenizer


def _flac(path, seconds=1.0, seed=0):
    noise = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))
    sf.write(path, noise.astype("float32"), 16000, subtype="PCM_16")


def _chapter(root, speaker, chapter, utterances):
    """utterances: {utt: (text or None for no transcript line, audio maker or None for no audio)}."""
    folder = root / speaker / chapter
    folder.mkdir(parents=True)
    lines = []
    for utt, (text, make) in utterances.items():
        utt_id = f"{speaker}-{chapter}-{utt}"
        if text is not None:
            lines.append(f"{utt_id} {text}".rstrip())
        if make is not None:
            make(folder / f"{utt_id}.flac")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def _truncated(path):
    _flac(path, seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def planted_tree(tmp_path):
    root = tmp_path / "corpus"
    _chapter(root, "1", "2", {
        "0000": ("HELLO WORLD", _flac),
        "0001": ("it's fine, really.", lambda p: _flac(p, 0.5)),
        "0002": ("EMPTY AUDIO FILE", lambda p: p.write_bytes(b"")),
        "0003": ("TRUNCATED AUDIO FILE", _truncated),
        "0004": ("ROOM 101", _flac),
        "0005": ("SALT & PEPPER", _flac),
        "0006": ("", _flac),
        "0007": ("NO AUDIO FOR THIS LINE", None),
        "0008": (None, _flac),
    })
    _chapter(root, "3", "4", {"0000": ("ANOTHER SPEAKER", lambda p: _flac(p, 0.75))})
    return root


def test_round_trip_keeps_extra_keys(tmp_path):
    entries = [
        {"id": "a", "audio": "/x/a.flac", "duration": 1.5, "text": "CAFÉ OLÉ", "speaker": "s1", "age": 31},
        {"id": "b", "audio": "/x/b.flac", "duration": 2.0, "text": "IT'S", "speaker": "s2", "offset": 3.25},
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, entries)
    assert read_manifest(path) == entries
    write_manifest(path, entries[:1])  # atomic replace of an existing file, no temp files left
    assert read_manifest(path) == entries[:1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_bad_manifest_lines_name_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "audio": "a", "duration": 1, "text": "A", "speaker": "s"}) + "\n{oops\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not valid JSON"):
        read_manifest(path)
    path.write_text(json.dumps({"id": "a", "audio": "a"}) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: missing key\(s\) duration, text, speaker"):
        read_manifest(path)


def test_tree_to_entries(planted_tree):
    entries = librispeech_tree_to_entries(planted_tree)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids) and len(ids) == 10
    first = entries[0]
    assert first == {
        "id": "1-2-0000", "audio": str((planted_tree / "1/2/1-2-0000.flac").resolve()),
        "duration": 1.0, "text": "HELLO WORLD", "speaker": "1",
    }
    by_id = {e["id"]: e for e in entries}
    assert by_id["1-2-0001"]["text"] == "IT'S FINE REALLY"
    assert by_id["1-2-0007"]["duration"] is None  # transcript line without audio is kept
    assert by_id["1-2-0008"]["text"] is None  # audio without transcript line is kept
    assert by_id["3-4-0000"]["speaker"] == "3" and by_id["3-4-0000"]["duration"] == 0.75


def test_planted_bad_tree_counts_per_reason(planted_tree):
    entries = librispeech_tree_to_entries(planted_tree)
    kept, report = validate_entries(entries, progress=False)
    assert [e["id"] for e in kept] == ["1-2-0000", "1-2-0001", "3-4-0000"]
    assert report.total == 10 and report.kept == 3 and report.dropped == 7
    assert dict(report.counts) == {
        EMPTY_AUDIO: 1, UNREADABLE_AUDIO: 1, UNKNOWN_CHARACTERS: 2, EMPTY_TEXT: 1,
        MISSING_AUDIO: 1, NO_TRANSCRIPT: 1,
    }
    assert report.unknown_characters == {"1": 2, "0": 1, "&": 1}
    assert "1-2-0003" in report.examples[UNREADABLE_AUDIO][0] and "lost sync" in report.examples[UNREADABLE_AUDIO][0]
    summary = report.summary().splitlines()
    assert summary[0] == "kept 3 of 10 entries, dropped 7"
    assert sum(line.startswith("  ") for line in summary) == 7  # six reasons + the characters seen


def test_validation_normalises_and_does_not_modify_input(tmp_path):
    _flac(tmp_path / "a.flac")
    entry = {"id": "a", "audio": str(tmp_path / "a.flac"), "duration": None, "text": "Don’t stop!",
             "speaker": "s", "age": 40}
    kept, report = validate_entries([entry, dict(entry)], progress=False)
    assert kept == [{**entry, "text": "DON'T STOP", "duration": 1.0}]
    assert entry["text"] == "Don’t stop!" and entry["duration"] is None
    assert report.counts == {"duplicate id": 1}


def test_tokenizer_alphabet_and_no_audio_check(planted_tree):
    entries = librispeech_tree_to_entries(planted_tree)
    no_apostrophe = Tokenizer(" ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    kept, report = validate_entries(entries, tokenizer=no_apostrophe, check_audio=False)
    # without the audio check, the empty and truncated files pass on their header durations
    # (the empty one has none); the missing file has no duration either
    assert [e["id"] for e in kept] == ["1-2-0000", "1-2-0003", "3-4-0000"]
    assert report.counts[UNKNOWN_CHARACTERS] == 3 and report.counts[NO_DURATION] == 2


def test_cli_prepare_librispeech_tree(planted_tree, tmp_path, capsys):
    from asr.cli import main

    assert main(["prepare", "librispeech-tree", "--root", str(planted_tree), "--out", str(tmp_path / "m.jsonl")]) == 0
    assert [e["id"] for e in read_manifest(tmp_path / "m.jsonl")] == ["1-2-0000", "1-2-0001", "3-4-0000"]
    out = capsys.readouterr().out
    assert "kept 3 of 10 entries, dropped 7" in out and "wrote 3 entries" in out


def test_cache_audio_decodes_once_with_speed_copies(tmp_path):
    """Copies hold the audio the loader would compute (16-bit FLAC rounding aside), speed
    copies are renamed as other speakers, and a second run reuses the files it finds."""
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 16000) + 0.01 * rng.standard_normal(24000)).astype("float32")
    sf.write(tmp_path / "a.ogg", audio, 16000, format="OGG", subtype="OPUS")
    entry = {"id": "u1", "audio": str(tmp_path / "a.ogg"), "duration": 1.5, "text": "HI", "speaker": "s1", "age": 7}
    copies = cache_audio([entry], tmp_path / "flac", speeds=(0.9, 1.0, 1.1), jobs=1)

    assert [c["id"] for c in copies] == ["sp0.9-u1", "u1", "sp1.1-u1"]
    assert [c["speaker"] for c in copies] == ["sp0.9-s1", "s1", "sp1.1-s1"]
    assert all(c["age"] == 7 and c["text"] == "HI" and c["audio"].endswith(".flac") for c in copies)
    source = load_audio(entry["audio"])
    for copy, speed in zip(copies, (0.9, 1.0, 1.1)):
        expected = change_speed(source, speed)
        decoded = load_audio(copy["audio"])
        assert copy["duration"] == pytest.approx(len(expected) / 16000, abs=1e-3)
        assert copy["duration"] == pytest.approx(1.5 / speed, rel=0.01)
        assert torch.allclose(decoded, expected, atol=1.0 / 2**15 + 1e-6)

    before = [Path(c["audio"]).stat().st_mtime_ns for c in copies]
    again = cache_audio([entry], tmp_path / "flac", speeds=(0.9, 1.0, 1.1), jobs=1)
    assert again == copies
    assert [Path(c["audio"]).stat().st_mtime_ns for c in again] == before


def test_sample_is_seeded_and_keeps_manifest_order():
    entries = [{"id": str(i)} for i in range(50)]
    first = sample_entries(entries, 10, seed=0)
    assert first == sample_entries(entries, 10, seed=0) != sample_entries(entries, 10, seed=1)
    assert [int(e["id"]) for e in first] == sorted(int(e["id"]) for e in first)
    assert sample_entries(entries, None, seed=0) == entries
