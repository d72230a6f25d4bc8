"""`asr prepare keywords`: the keywords corpus's own split, its sources kept for scoring."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from asr.data.keywords import SHARED_COPY, keywords_entries

HEADER = "utt_id\taudio\ttext\tspeaker\tsource\tduration_s\n"


def make_corpus(root, rows, split):
    (root / "audio").mkdir(parents=True)
    lines = [HEADER]
    for utt_id, text, speaker, source in rows:
        sf.write(root / "audio" / f"{utt_id}.wav", 0.1 * np.sin(np.arange(8000) / 5.0), 16000)
        lines.append(f"{utt_id}\taudio/{utt_id}.wav\t{text}\t{speaker}\t{source}\t0.5\n")
    (root / "utterances.tsv").write_text("".join(lines))
    (root / "split.tsv").write_text("".join(f"{utt_id}\t{part}\n" for utt_id, part in split.items()))


def test_prepare_keywords_keeps_the_split_and_the_sources(tmp_path):
    rows = [("a1", "hey computer", "s1", "mycroft"), ("b1", "SMART MIRROR", "p1", "picovoice"),
            ("c1", "Sheila", "c1", "speechcommands")]
    make_corpus(tmp_path / "corpus", rows, {"a1": "test", "b1": "train", "c1": "train"})
    result = subprocess.run([sys.executable, "-m", "asr", "prepare", "keywords", "--data-root", str(tmp_path / "corpus"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert [(e["id"], e["text"], e["source"]) for e in train] == [("b1", "SMART MIRROR", "picovoice"),
                                                                   ("c1", "SHEILA", "speechcommands")]
    assert [(e["id"], e["text"], e["speaker"]) for e in test] == [("a1", "HEY COMPUTER", "s1")]
    assert test[0]["audio"] == str((tmp_path / "corpus" / "audio" / "a1.wav").resolve())


def test_an_utterance_without_a_split_is_refused(tmp_path):
    make_corpus(tmp_path, [("a1", "ALEXA", "s1", "picovoice")], {})
    with pytest.raises(ValueError, match="no train/test split for a1"):
        keywords_entries(tmp_path)
    result = subprocess.run([sys.executable, "-m", "asr", "prepare", "keywords", "--data-root", str(tmp_path / "nowhere"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "utterances.tsv: not found" in result.stderr


@pytest.mark.skipif(not SHARED_COPY.is_dir(), reason=f"keywords corpus not found at {SHARED_COPY}")
def test_the_shared_copy_splits_by_its_attribution():
    splits = keywords_entries(SHARED_COPY)
    assert (len(splits["train"]), len(splits["test"])) == (2436, 1011)  # ATTRIBUTION.md's totals
    assert not {e["speaker"] for e in splits["train"]} & {e["speaker"] for e in splits["test"]}
