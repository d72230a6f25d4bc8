"""`asr prepare keywords | an4 | librispeech-clips`: each corpus's own split, sources kept for scoring."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from asr.data.shared_corpus import CORPORA, corpus_entries, hold_out_speakers, shared_copy

HEADER = "utt_id\taudio\ttext\tspeaker\tsource\tduration_s\n"


def make_corpus(root, rows, split):
    (root / "audio").mkdir(parents=True)
    lines = [HEADER]
    for utt_id, text, speaker, source in rows:
        sf.write(root / "audio" / f"{utt_id}.wav", 0.1 * np.sin(np.arange(8000) / 5.0), 16000)
        lines.append(f"{utt_id}\taudio/{utt_id}.wav\t{text}\t{speaker}\t{source}\t0.5\n")
    (root / "utterances.tsv").write_text("".join(lines))
    (root / "split.tsv").write_text("".join(f"{utt_id}\t{part}\n" for utt_id, part in split.items()))


def prepare(*args):
    return subprocess.run([sys.executable, "-m", "asr", "prepare", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_keywords_keeps_the_split_and_the_sources(tmp_path):
    rows = [("a1", "hey computer", "s1", "mycroft"), ("b1", "SMART MIRROR", "p1", "picovoice"),
            ("c1", "Sheila", "c1", "speechcommands")]
    make_corpus(tmp_path / "corpus", rows, {"a1": "test", "b1": "train", "c1": "train"})
    result = prepare("keywords", "--data-root", tmp_path / "corpus", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    train, test = read(tmp_path / "out" / "train.jsonl"), read(tmp_path / "out" / "test.jsonl")
    assert [(e["id"], e["text"], e["source"]) for e in train] == [("b1", "SMART MIRROR", "picovoice"),
                                                                   ("c1", "SHEILA", "speechcommands")]
    assert [(e["id"], e["text"], e["speaker"]) for e in test] == [("a1", "HEY COMPUTER", "s1")]
    assert test[0]["audio"] == str((tmp_path / "corpus" / "audio" / "a1.wav").resolve())


def test_librispeech_clips_has_an_adapt_part_and_a_dev_set_of_whole_speakers(tmp_path):
    rows = [(f"{spk}-1-{i}", "A WORD", spk, "x:train-clean-100") for spk in ("s1", "s2", "s3", "s4") for i in range(2)]
    rows += [("t-1-0", "ANOTHER WORD", "t", "x:test-other"), ("a-1-0", "MY VOICE", "a", "x:train-clean-100")]
    split = {r[0]: "train" for r in rows[:8]} | {"t-1-0": "test", "a-1-0": "adapt"}
    make_corpus(tmp_path / "corpus", rows, split)
    result = prepare("librispeech-clips", "--data-root", tmp_path / "corpus", "--dev-speakers", 1, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    parts = {p: read(tmp_path / "out" / f"{p}.jsonl") for p in ("train", "dev", "test", "adapt")}
    assert [e["id"] for e in parts["adapt"]] == ["a-1-0"] and [e["id"] for e in parts["test"]] == ["t-1-0"]
    dev_speakers = {e["speaker"] for e in parts["dev"]}
    assert len(dev_speakers) == 1 and len(parts["dev"]) == 2
    assert not dev_speakers & {e["speaker"] for e in parts["train"]} and len(parts["train"]) == 6


def test_an_utterance_without_a_known_part_is_refused(tmp_path):
    make_corpus(tmp_path, [("a1", "ALEXA", "s1", "picovoice")], {"a1": "adapt"})
    with pytest.raises(ValueError, match="no train/test part for a1"):
        corpus_entries(tmp_path, CORPORA["an4"].parts)
    result = prepare("an4", "--data-root", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.returncode == 1 and "utterances.tsv: not found" in result.stderr


def test_holding_out_speakers_is_seeded_and_whole():
    entries = [{"id": f"{s}{i}", "speaker": s} for s in "abcdefgh" for i in range(3)]
    kept, held = hold_out_speakers(entries, 2)
    assert (kept, held) == hold_out_speakers(entries, 2)
    assert len({e["speaker"] for e in held}) == 2 and len(held) == 6 and len(kept) == 18
    with pytest.raises(ValueError, match="cannot hold out 8 of 8 speakers"):
        hold_out_speakers(entries, 8)


# the shared copies' totals, as each ATTRIBUTION.md gives them
SHARED_TOTALS = {"keywords": {"train": 2436, "test": 1011}, "an4": {"train": 948, "test": 130},
                 "librispeech-clips": {"train": 267, "test": 100, "adapt": 367}}


@pytest.mark.parametrize("name", sorted(SHARED_TOTALS))
def test_the_shared_copies_split_by_their_attribution(name):
    if not shared_copy(name).is_dir():
        pytest.skip(f"{name} not found at {shared_copy(name)}")
    splits = corpus_entries(shared_copy(name), CORPORA[name].parts)
    assert {part: len(entries) for part, entries in splits.items()} == SHARED_TOTALS[name]
    speakers = {part: {e["speaker"] for e in entries} for part, entries in splits.items()}
    assert not speakers["train"] & speakers["test"]
    assert not speakers["train"] & speakers.get("adapt", set())
