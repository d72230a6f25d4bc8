"""WER/CER with hand-computed counts, transcript files, and `asr score`."""

from __future__ import annotations

import json

import pytest

from asr.cli import main
from asr.metrics import read_transcripts, score


def test_wer_and_cer_by_hand():
    # THE CAT SAT -> THE BAT SAT ON: 1 substitution, 1 insertion over 3 words.
    # characters (spaces count): "THE CAT SAT" (11) -> "THE BAT SAT ON": C->B, +" ON" = 4 errors.
    report = score({"u1": "The cat sat."}, {"u1": "the bat, sat on"})
    assert (report.substitutions, report.deletions, report.insertions, report.hits) == (1, 0, 1, 2)
    assert report.ref_words == 3
    assert report.wer == pytest.approx(2 / 3)
    assert report.ref_chars == 11
    assert report.cer == pytest.approx(4 / 11)
    assert report.confused == {("CAT", "BAT"): 1}
    assert report.inserted == {"ON": 1}
    assert report.deleted == {}


def test_corpus_wer_pools_counts_over_utterances():
    refs = {"a": "one two three four", "b": "five six"}
    hyps = {"a": "one two three four", "b": "five"}
    report = score(refs, hyps)
    assert report.wer == pytest.approx(1 / 6)  # not the mean of per-utterance WERs (0 and 1/2)
    assert report.deleted == {"SIX": 1}
    # "FIVE SIX" (8 chars) -> "FIVE": 4 deletions over 18 + 8 characters
    assert report.cer == pytest.approx(4 / 26)


def test_missing_and_extra_hypotheses():
    refs = {"a": "hello world", "b": "good morning to you"}
    hyps = {"a": "hello world", "z": "stray"}
    report = score(refs, hyps)
    assert report.missing == ["b"] and report.extra == ["z"]
    assert report.deletions == 4 and report.wer == pytest.approx(4 / 6)
    # a run of deleted words counts word by word, so the counts add up to D
    assert report.deleted == {"GOOD": 1, "MORNING": 1, "TO": 1, "YOU": 1}
    assert sum(report.deleted.values()) == report.deletions
    summary = report.summary()
    assert "1 utterance(s) have no hypothesis and count as deleted: b" in summary
    assert "1 hypothesis id(s) have no reference and are not scored: z" in summary


def test_confusions_are_counted_over_the_corpus():
    refs = {str(i): "the cat sat" for i in range(3)}
    hyps = {"0": "a cat sat", "1": "a cat sad", "2": "the cat sad"}
    report = score(refs, hyps)
    assert report.confused.most_common() == [(("THE", "A"), 2), (("SAT", "SAD"), 2)]
    assert report.substitutions == 4 and report.wer == pytest.approx(4 / 9)


def test_alignments_per_utterance():
    report = score({"u1": "a b c", "u2": "x", "u3": "ok"}, {"u1": "a c", "u2": "x y", "u3": "ok"})
    assert report.alignments == {
        "u1": "REF: A B C\nHYP: A * C\n       D",
        "u2": "REF: X *\nHYP: X Y\n       I",
        "u3": "REF: OK\nHYP: OK",
    }


def test_summary_format():
    report = score({"u": "a b c d"}, {"u": "a x c"})
    lines = report.summary(top=5).splitlines()
    assert lines[0] == "WER 0.5000 (S=1, D=1, I=0, N=4)"
    assert lines[1].startswith("CER ")
    assert "top substitutions (ref -> hyp):" in lines
    assert any(line.strip() == "1  B -> X" for line in lines)


def test_no_reference_words_is_an_error():
    with pytest.raises(ValueError, match="no references"):
        score({}, {"a": "x"})
    with pytest.raises(ValueError, match="hold no words"):
        score({"a": ""}, {"a": "x"})


def test_read_transcripts_tsv_kaldi_and_jsonl(tmp_path):
    tsv = tmp_path / "hyp.txt"
    tsv.write_text("a.flac\tHELLO THERE\n\nb c.flac\t\nkaldi-1 SPACE SEPARATED TEXT\n", encoding="utf-8")
    assert read_transcripts(tsv) == {"a.flac": "HELLO THERE", "b c.flac": "", "kaldi-1": "SPACE SEPARATED TEXT"}
    jsonl = tmp_path / "test.jsonl"
    entries = [{"id": "u1", "audio": "/x.flac", "duration": 1.0, "text": "HI", "speaker": "s"}, {"id": 7, "text": "YO"}]
    jsonl.write_text("\n".join(json.dumps(e) for e in entries) + "\n", encoding="utf-8")
    assert read_transcripts(jsonl) == {"u1": "HI", "7": "YO"}


def test_read_transcripts_errors(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("a\tX\na\tY\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dup.txt:2: duplicate id 'a'"):
        read_transcripts(path)
    path.write_text('{"id": "a", "text": "X"}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: expected a JSON object with \"id\" and \"text\""):
        read_transcripts(path)
    path.write_text('{"id": "a", "text": "X"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: not valid JSON"):
        read_transcripts(path)


def test_cli_score(tmp_path, capsys):
    ref = tmp_path / "ref.jsonl"
    ref.write_text('{"id": "u1", "text": "THE CAT SAT"}\n{"id": "u2", "text": "HELLO"}\n', encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("u1\tthe bat sat\n", encoding="utf-8")
    alignments = tmp_path / "align.txt"
    assert main(["score", str(ref), str(hyp), "--alignments", str(alignments), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "WER 0.5000 (S=1, D=1, I=0, N=4)"
    assert out[1] == "CER 0.3750"  # C->B and the 5 letters of HELLO: 6 errors over 11 + 5 characters
    text = alignments.read_text()
    assert "=== u1 ===\nREF: THE CAT SAT\nHYP: THE BAT SAT\n" in text
    assert "=== u2 ===" in text


def test_cli_score_missing_file(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.txt"), str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.startswith("asr score: error: ")


def test_score_by_a_manifest_field(tmp_path, capsys):
    ref = tmp_path / "ref.jsonl"
    entries = [("c1", "ONE TWO", "child"), ("a1", "THREE FOUR", "adult"), ("c2", "FIVE", "child")]
    ref.write_text("".join(json.dumps({"id": i, "text": t, "age_group": g}) + "\n" for i, t, g in entries))
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("c1\tone\na1\tthree four\n")  # c2 missing: all its words deleted
    assert main(["score", str(ref), str(hyp), "--by", "age_group", "--top", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "WER 0.4000 (S=0, D=2, I=0, N=5)"
    assert out[-3:] == [
        "by age_group:",
        "  adult  WER 0.0000  CER 0.0000  (1 utterances, 2 words)",
        # "ONE TWO" -> "ONE", "FIVE" -> "": 2 of 3 words, 4 + 4 of 7 + 4 characters
        "  child  WER 0.6667  CER 0.7273  (2 utterances, 3 words)",
    ]
    assert main(["score", str(hyp), str(hyp), "--by", "age_group"]) == 2
    assert "have no field 'age_group'; give a JSONL manifest" in capsys.readouterr().err


def test_cli_output_into_a_closed_pipe_is_quiet(tmp_path):
    """`asr score ... | head -1`: the reader leaves early; no traceback, just a non-zero status.
    (20,000 deletions listed: far more than a pipe buffers, so the writer is still writing.)"""
    import subprocess
    import sys

    def spelt(i):  # letters only: asr score leaves out references with digits, as training does
        return "".join(chr(ord("A") + int(digit)) for digit in str(i))

    ref = tmp_path / "ref.txt"
    ref.write_text("".join(f"u{i}\tWORD{spelt(i)} OTHER{spelt(i)}\n" for i in range(20000)), encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("".join(f"u{i}\tWORD{spelt(i)}\n" for i in range(20000)), encoding="utf-8")
    score = subprocess.Popen([sys.executable, "-m", "asr", "score", str(ref), str(hyp), "--top", "20000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert score.stdout.readline().startswith(b"WER 0.5000")
    score.stdout.close()  # what `head -1` does after its line
    assert score.wait(timeout=120) == 1
    assert b"Traceback" not in score.stderr.read()
