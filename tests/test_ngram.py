"""Kneser-Ney ARPA builder: hand-computed probabilities, normalisation, and KenLM loading it."""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections import Counter

import pytest

from asr.ngram import BOS, EOS, UNK, ArpaModel, _discounts, arpa_vocabulary, build_arpa

# Padded: <s> A B </s> (twice), <s> B </s>. Continuation counts differ from raw counts here
# (B occurs 3 times after 2 distinct words), which is what Kneser-Ney is about.
CORPUS = ["A B", "A B", "B"]


def _build(tmp_path, sentences, order, name="lm.arpa"):
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny corpora fall back to fixed discounts (tested below)
        build_arpa(sentences, path, order)
    return path


def test_bigram_probabilities_by_hand(tmp_path):
    # Both orders are too sparse for estimated discounts: D1, D2, D3+ = 0.5, 1, 1.5.
    # Unigrams from continuation counts A:1 ({<s>}), B:2 ({<s>, A}), </s>:1 ({B}); total 4;
    # vocabulary A B </s> <unk> = 4; interpolation weight (0.5*2 + 1*1)/4 = 0.5.
    p_a, p_b, p_end, p_unk = 0.5 / 4 + 0.5 / 4, 1 / 4 + 0.5 / 4, 0.5 / 4 + 0.5 / 4, 0.5 / 4
    # Context <s>: raw counts A:2, B:1, total 3, weight (1 + 0.5)/3 = 0.5.
    expected = {
        ("A", ()): p_a,
        ("B", ()): p_b,
        (EOS, ()): p_end,
        (UNK, ()): p_unk,
        ("ZEBRA", ()): p_unk,
        ("A", (BOS,)): 1 / 3 + 0.5 * p_a,
        ("B", (BOS,)): 0.5 / 3 + 0.5 * p_b,
        (EOS, (BOS,)): 0.5 * p_end,
        ("B", ("A",)): 1 / 2 + 0.5 * p_b,  # A B x2: weight 1/2
        ("A", ("A",)): 0.5 * p_a,
        (EOS, ("B",)): 1.5 / 3 + 0.5 * p_end,  # B </s> x3: weight 1.5/3
    }
    model = ArpaModel(_build(tmp_path, CORPUS, order=2))
    for (word, context), p in expected.items():
        assert 10 ** model.log10_prob(word, context) == pytest.approx(p, rel=1e-6), (word, context)
    assert model.probs[(BOS,)] == -99.0
    assert 10 ** model.backoffs[(BOS,)] == pytest.approx(0.5)


def test_trigram_uses_continuation_counts_below_the_top_order(tmp_path):
    model = ArpaModel(_build(tmp_path, CORPUS, order=3))
    # Bigram level: "A B" has continuation count 1 (only <s> precedes it), total 1, weight 0.5;
    # "<s> A" keeps its raw count 2. p(B | A) = 0.5 + 0.5 * p(B) with p(B) = 0.375.
    p_b_given_a = 0.5 + 0.5 * 0.375
    assert 10 ** model.log10_prob("B", ["A"]) == pytest.approx(p_b_given_a, rel=1e-6)
    # Trigram "<s> A B" x2: p = (2 - 1)/2 + 0.5 * p(B | A)
    assert 10 ** model.log10_prob("B", [BOS, "A"]) == pytest.approx(0.5 + 0.5 * p_b_given_a, rel=1e-6)
    assert model.order == 3


def test_discounts_from_counts_of_counts():
    # t1..t4 = 4, 2, 1, 1: Y = 4 / (4 + 2*2) = 0.5
    table = Counter({("a",): 1, ("b",): 1, ("c",): 1, ("d",): 1, ("e",): 2, ("f",): 2, ("g",): 3, ("h",): 4})
    assert _discounts(table, 1) == pytest.approx((1 - 2 * 0.5 * 2 / 4, 2 - 3 * 0.5 * 1 / 2, 3 - 4 * 0.5 * 1 / 1))
    with pytest.warns(UserWarning, match="too few n-grams"):
        assert _discounts(Counter({("a",): 1}), 1) == (0.5, 1.0, 1.5)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_probabilities_sum_to_one(tmp_path, order):
    random.seed(order)
    words = [f"W{rank}" for rank in range(200)]
    zipf = [1 / (rank + 1) for rank in range(200)]
    sentences = [" ".join(random.choices(words, zipf, k=random.randint(1, 8))) for _ in range(400)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough n-grams to estimate every discount: no fallback
        build_arpa(sentences, tmp_path / "lm.arpa", order)
    model = ArpaModel(tmp_path / "lm.arpa")
    predicted = [w for w in model.vocabulary if w != BOS]
    assert set(predicted) == {gram[0] for s in sentences for gram in zip(s.split())} | {EOS, UNK}
    contexts = [(), (BOS,), ("W0",), ("W150",), ("ZEBRA",), (BOS, "W0"), ("W0", "W1"), ("W3", "W3"), ("W1", "ZEBRA", "W0")]
    for context in contexts:
        total = sum(10 ** model.log10_prob(w, context) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-5), context


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_context_of_a_tiny_model_is_normalised(tmp_path, order):
    model = ArpaModel(_build(tmp_path, ["THE CAT SAT", "THE DOG SAT ON THE MAT", "A CAT"], order))
    predicted = [w for w in model.vocabulary if w != BOS]
    histories = [BOS, *[w for w in predicted if w != EOS]]
    for context in itertools.chain.from_iterable(itertools.product(histories, repeat=n) for n in range(order)):
        if BOS in context[1:]:
            continue
        assert sum(10 ** model.log10_prob(w, context) for w in predicted) == pytest.approx(1.0, abs=1e-5)


def test_perplexity_and_vocabulary(tmp_path):
    path = _build(tmp_path, CORPUS, order=2)
    model = ArpaModel(path)
    # "A B </s>" = p(A|<s>) p(B|A) p(</s>|B), three words
    p = (1 / 3 + 0.5 * 0.25) * (0.5 + 0.5 * 0.375) * (0.5 + 0.5 * 0.25)
    assert model.perplexity(["A B"]) == pytest.approx(p ** (-1 / 3), rel=1e-6)
    assert arpa_vocabulary(path) == [EOS, BOS, UNK, "A", "B"]


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no words"):
        build_arpa(["", "  "], tmp_path / "lm.arpa")
    with pytest.raises(ValueError, match="reserved word"):
        build_arpa(["A <s> B"], tmp_path / "lm.arpa")
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0\xff")
    with pytest.raises(ValueError, match="not an ARPA file"):
        arpa_vocabulary(binary)


def test_kenlm_loads_it_and_agrees(tmp_path):
    pytest.importorskip("flashlight.lib.text.decoder")
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = _build(tmp_path, ["THE CAT SAT", "THE DOG SAT ON THE MAT", "A CAT"], order=3)
    model = ArpaModel(path)
    words = ["THE", "CAT", "SAT", "ZEBRA", UNK]
    kenlm = KenLM(str(path), Dictionary(words))
    state = kenlm.start(False)
    history = [BOS]
    for word in ["THE", "CAT", "ZEBRA", "SAT"]:
        state, score = kenlm.score(state, words.index(word))
        assert score == pytest.approx(model.log10_prob(word, history), abs=1e-5)
        history.append(word)
    _, score = kenlm.finish(state)
    assert score == pytest.approx(model.log10_prob(EOS, history), abs=1e-5)
    assert not math.isnan(score)

    # and torchaudio's ctc_decoder, the way asr.decoding uses it with a lexicon
    from torchaudio.models.decoder import ctc_decoder

    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("THE\tT H E\nCAT\tC A T\n", encoding="utf-8")
    ctc_decoder(lexicon=str(lexicon), tokens=["-", "|", *"ACEHT"], lm=str(path))


@pytest.mark.parametrize("prune", [(0, 1), (0, 1, 1), (0, 0, 1), (0, 2, 3)])
def test_a_pruned_model_keeps_no_rare_ngram_and_every_context_is_normalised(tmp_path, prune):
    random.seed(7)
    words = [f"W{rank}" for rank in range(30)]
    zipf = [1 / (rank + 1) for rank in range(30)]
    sentences = [" ".join(random.choices(words, zipf, k=random.randint(1, 6))) for _ in range(300)]
    full = ArpaModel(_build(tmp_path, sentences, 3, "full.arpa"))
    path = tmp_path / "pruned.arpa"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_arpa(sentences, path, 3, prune=prune)
    model = ArpaModel(path)
    counts = Counter(gram for s in sentences for n in (2, 3)
                     for gram in zip(*[[BOS, *s.split(), EOS][i:] for i in range(n)]))
    cutoffs = [*prune, prune[-1]][:3]
    for gram in full.probs:
        kept = len(gram) == 1 or counts[gram] > cutoffs[len(gram) - 1]
        assert (gram in model.probs) == kept, gram
        if kept:  # kept n-grams keep their probability; only backoffs change
            assert model.probs[gram] == pytest.approx(full.probs[gram], abs=1e-6)
    assert len(model.probs) < len(full.probs)
    predicted = [w for w in model.vocabulary if w != BOS]
    for context in [(), (BOS,), ("W0",), ("W29",), (BOS, "W0"), ("W0", "W1"), ("W1", "W0"), ("W2", "W2"), ("Q", "W0")]:
        assert sum(10 ** model.log10_prob(w, context) for w in predicted) == pytest.approx(1.0, abs=1e-5), context


def test_bad_cutoffs_are_refused(tmp_path):
    for prune in [(1,), (0, 2, 1), (0, 1, 1, 1), (0, -1)]:
        with pytest.raises(ValueError, match="prune must give"):
            build_arpa(CORPUS, tmp_path / "lm.arpa", 3, prune=prune)


def test_asr_lm_learns_from_manifests_and_gzip_text_and_prunes(tmp_path):
    import gzip
    import json
    import subprocess
    import sys

    manifest = tmp_path / "train.jsonl"
    entry = {"id": "u1", "audio": "u1.wav", "duration": 1.0, "text": "the cat sat", "speaker": "s"}
    manifest.write_text(json.dumps(entry) + "\n")
    with gzip.open(tmp_path / "book.txt.gz", "wt") as f:
        f.write("The dog sat.\n\nthe cat ran\nthe cat ran\n")
    asr = [sys.executable, "-m", "asr", "lm", "--order", "2"]
    result = subprocess.run([*asr, "--manifest", str(manifest), "--text", str(tmp_path / "book.txt.gz"),
                             "--out", str(tmp_path / "full.arpa")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    full = ArpaModel(tmp_path / "full.arpa")
    assert {"THE", "CAT", "SAT", "DOG", "RAN"} <= full.vocabulary and ("DOG", "SAT") in full.probs
    result = subprocess.run([*asr, "--text", str(tmp_path / "book.txt.gz"), "--prune", "0", "1",
                             "--out", str(tmp_path / "pruned.arpa")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pruned = ArpaModel(tmp_path / "pruned.arpa")
    assert ("CAT", "RAN") in pruned.probs and ("DOG", "SAT") not in pruned.probs  # seen twice / once
    result = subprocess.run([*asr, "--out", str(tmp_path / "none.arpa")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "asr lm: error: nothing to learn from" in result.stderr
