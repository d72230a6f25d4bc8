"""Word n-gram language models in ARPA format: build with Kneser-Ney smoothing, read and score.

The decoder (flashlight's KenLM, see :mod:`asr.decoding`) reads the ARPA files written here.
No maintained package writes ARPA from text in this environment: the ``kenlm`` wheel has no
``lmplz``, Debian has no KenLM, and the small pure-Python builders on PyPI either leave out
``<unk>`` (so unseen words get KenLM's -100 and an open vocabulary is impossible) or write
interpolated models with backoff weights of 1 (not normalised). This module is small enough to
check by hand.

Smoothing is interpolated modified Kneser-Ney (Chen & Goodman, 1999), the method of KenLM's
``lmplz``: it has the lowest perplexity of the standard methods on small corpora, because
lower orders are estimated from how many distinct contexts a word follows rather than from how
often it occurs. As in ``lmplz``, the unigrams are interpolated with a uniform distribution over
the vocabulary plus ``<unk>``, so that a word never seen in training gets a real probability.

Sentences are padded as ``<s> w1 ... wn </s>``; ``<s>`` is a context only (log10 prob -99).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from asr.fileio import atomic_write

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

Ngram = tuple[str, ...]

# lmplz's --discount_fallback values, for corpora too small to estimate discounts from.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def build_arpa(sentences: Iterable[str], path: str | os.PathLike, order: int = 3,
               prune: Sequence[int] = ()) -> list[int]:
    """Estimate an interpolated modified Kneser-Ney model and write it as an ARPA file.

    Args:
        sentences: one sentence per item, words separated by spaces, already normalised the way
            the decoder spells words (:func:`asr.text.normalize_text`: upper case). Empty ones
            are skipped.
        path: the ARPA file to write.
        order: the longest n-gram.
        prune: count cutoffs per order, unigrams first, as ``lmplz --prune``: n-grams of order
            n seen at most ``prune[n - 1]`` times are left out (see :func:`estimate_kneser_ney`).

    Returns:
        The number of n-grams of each order written (unigrams first).
    """
    model = estimate_kneser_ney(sentences, order, prune)
    write_arpa(model, path)
    return [len(table) for table in model]


def estimate_kneser_ney(sentences: Iterable[str], order: int = 3,
                        prune: Sequence[int] = ()) -> list[dict[Ngram, tuple[float, float | None]]]:
    """Interpolated modified Kneser-Ney estimates, in backoff form.

    ``prune`` (count cutoffs per order, unigrams first; the last one holds for higher orders) leaves out the
    n-grams of order n seen at most ``prune[n - 1]`` times: a book-sized corpus gives hundreds of
    thousands of trigrams seen once, which would make the model too large to ship. The cutoffs
    must not fall with the order and unigrams are never pruned, so that every kept n-gram's
    context and suffix are kept too. The kept n-grams keep their probabilities and each
    context's backoff weight is recomputed so that its distribution still sums to one (as
    SRILM does after pruning).

    Returns:
        For each order n (index n - 1), n-gram -> ``(log10 prob, log10 backoff)``; the backoff is
        None for n-grams that are never a context (the highest order, those ending in ``</s>``).
        The probabilities are the interpolated ones, and the backoff of a context is its
        interpolation weight, so that backing off reproduces the interpolated model exactly.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    cutoffs = [*prune, *[prune[-1] if prune else 0] * order][:order]  # the last cutoff holds for higher orders
    if len(prune) > order or cutoffs[0] != 0 or any(a > b for a, b in zip(cutoffs, cutoffs[1:])) or min(cutoffs) < 0:
        raise ValueError(f"prune must give at most {order} cutoffs, 0 for unigrams, never falling with the order: "
                         f"got {list(prune)}")
    counts = _count_ngrams(sentences, order)
    if not counts[0]:
        raise ValueError("no words to build a language model from")
    adjusted = _adjusted_counts(counts)
    vocab_size = len(adjusted[0]) + 1  # every word seen (and </s>) plus <unk>; <s> is never predicted

    probs: list[dict[Ngram, float]] = []
    weights: list[dict[Ngram, float]] = []  # interpolation weight of each context
    for n, table in enumerate(adjusted, start=1):
        discounts = _discounts(table, n)
        totals: dict[Ngram, int] = Counter()
        mass: dict[Ngram, float] = defaultdict(float)  # discounted mass: what goes to the lower order
        for gram, count in table.items():
            totals[gram[:-1]] += count
            mass[gram[:-1]] += discounts[min(count, 3) - 1]
        gamma = {context: mass[context] / total for context, total in totals.items()}
        level = {}
        for gram, count in table.items():
            context = gram[:-1]
            lower = 1.0 / vocab_size if n == 1 else probs[-1][gram[1:]]
            level[gram] = (count - discounts[min(count, 3) - 1]) / totals[context] + gamma[context] * lower
        if n == 1:
            level[(UNK,)] = gamma[()] / vocab_size
        probs.append(level)
        weights.append(gamma)
    if any(cutoffs):
        _prune(probs, weights, counts, cutoffs)

    model = []
    for n, level in enumerate(probs, start=1):
        table = {}
        contexts = weights[n] if n < order else {}
        for gram, p in level.items():
            bow = contexts.get(gram)
            table[gram] = (math.log10(p), None if bow is None else math.log10(bow))
        if n == 1:
            bow = contexts.get((BOS,))
            table[(BOS,)] = (-99.0, None if bow is None else math.log10(bow))
        model.append(table)
    return model


def _prune(probs: list[dict[Ngram, float]], weights: list[dict[Ngram, float]], counts: list[Counter[Ngram]],
           cutoffs: Sequence[int]) -> None:
    """Drop the n-grams at or under their order's cutoff (in place) and renormalise each context:
    its backoff becomes (1 - kept mass) / (1 - the lower order's mass of the kept words)."""

    def lower(gram: Ngram) -> float:  # P(gram[-1] | gram[:-1]) in the pruned model of order len(gram)
        backoff = 1.0
        while len(gram) > 1 and gram not in probs[len(gram) - 1]:
            backoff *= weights[len(gram) - 1].get(gram[:-1], 1.0)
            gram = gram[1:]
        return backoff * probs[len(gram) - 1][gram]

    for n in range(2, len(probs) + 1):
        probs[n - 1] = {gram: p for gram, p in probs[n - 1].items() if counts[n - 1][gram] > cutoffs[n - 1]}
        kept_mass: dict[Ngram, float] = defaultdict(float)
        lower_mass: dict[Ngram, float] = defaultdict(float)
        for gram, p in probs[n - 1].items():
            kept_mass[gram[:-1]] += p
            lower_mass[gram[:-1]] += lower(gram[1:])
        weights[n - 1] = {context: max(1.0 - kept_mass[context], 0.0) / max(1.0 - lower_mass[context], 1e-12)
                          for context in weights[n - 1] if context in probs[n - 2] or n == 2 and context == (BOS,)}


def _count_ngrams(sentences: Iterable[str], order: int) -> list[Counter[Ngram]]:
    counts: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    for sentence in sentences:
        words = sentence.split()
        if not words:
            continue
        if {BOS, EOS, UNK}.intersection(words):
            raise ValueError(f"sentence holds a reserved word ({BOS}, {EOS} or {UNK}): {sentence!r}")
        padded = (BOS, *words, EOS)
        for n in range(1, order + 1):
            # the unigram <s> is not counted: it is only ever a context
            for start in range(1 if n == 1 else 0, len(padded) - n + 1):
                counts[n - 1][padded[start : start + n]] += 1
    return counts


def _adjusted_counts(counts: list[Counter[Ngram]]) -> list[Counter[Ngram]]:
    """Kneser-Ney counts: raw counts at the highest order and for n-grams that start with <s>
    (nothing can precede them); elsewhere the number of distinct words seen just before."""
    adjusted = [Counter() for _ in counts]
    adjusted[-1] = counts[-1]
    for n in range(len(counts) - 1, 0, -1):
        continuation = Counter(gram[1:] for gram in counts[n])
        for gram, count in counts[n - 1].items():
            adjusted[n - 1][gram] = count if gram[0] == BOS else continuation[gram]
    return adjusted


def _discounts(table: Counter[Ngram], n: int) -> tuple[float, float, float]:
    """Chen & Goodman's estimates of the discounts for counts 1, 2 and 3+ from counts of counts."""
    t = Counter(count for count in table.values() if count <= 4)
    if all(t[k] > 0 for k in (1, 2, 3, 4)):
        y = t[1] / (t[1] + 2 * t[2])
        discounts = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
        if all(0 < d < k for k, d in zip((1, 2, 3), discounts)):
            return discounts
    warnings.warn(
        f"order {n}: too few n-grams to estimate Kneser-Ney discounts (counts of counts "
        f"{[t[k] for k in (1, 2, 3, 4)]}); using {FALLBACK_DISCOUNTS}",
        stacklevel=3,
    )
    return FALLBACK_DISCOUNTS


def write_arpa(model: Sequence[dict[Ngram, tuple[float, float | None]]], path: str | os.PathLike) -> None:
    """Write ``model`` (as returned by :func:`estimate_kneser_ney`) in ARPA format."""
    with atomic_write(path) as f:
        f.write("\n\\data\\\n")
        for n, table in enumerate(model, start=1):
            f.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(model, start=1):
            f.write(f"\n\\{n}-grams:\n")
            for gram in sorted(table):
                logp, bow = table[gram]
                line = f"{logp:.7f}\t{' '.join(gram)}"
                f.write(line + ("\n" if bow is None else f"\t{bow:.7f}\n"))
        f.write("\n\\end\\\n")


class ArpaModel:
    """A backoff n-gram model read from an ARPA file, scored in pure Python.

    For checking models and measuring perplexity; the decoder uses KenLM for speed.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.probs: dict[Ngram, float] = {}
        self.backoffs: dict[Ngram, float] = {}
        self.order = 0
        with open(path, encoding="utf-8") as f:
            section = None
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line or line.startswith("ngram "):
                    continue
                if line.startswith("\\"):
                    section = line
                    if line.endswith("-grams:"):
                        self.order = int(line[1:-7])
                    continue
                if section is None or not section.endswith("-grams:"):
                    raise ValueError(f"{path}:{number}: not an ARPA file (text outside an n-gram section)")
                fields = line.split()
                gram = tuple(fields[1 : 1 + self.order])
                if len(fields) not in (self.order + 1, self.order + 2) or len(gram) != self.order:
                    raise ValueError(f"{path}:{number}: expected {self.order} words, a log10 prob and an optional backoff")
                self.probs[gram] = float(fields[0])
                if len(fields) == self.order + 2:
                    self.backoffs[gram] = float(fields[-1])
        if not self.order:
            raise ValueError(f"{path}: not an ARPA file (no n-gram sections)")
        self.vocabulary = {gram[0] for gram in self.probs if len(gram) == 1}

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 P(word | context); words outside the vocabulary are ``<unk>``."""
        word = word if word in self.vocabulary else UNK
        context = tuple(w if w in self.vocabulary else UNK for w in context)
        context = context[max(0, len(context) - self.order + 1) :]
        backoff = 0.0
        for start in range(len(context) + 1):
            history = context[start:]
            if history + (word,) in self.probs:
                return backoff + self.probs[history + (word,)]
            backoff += self.backoffs.get(history, 0.0)
        raise ValueError(f"{word!r} has no unigram and the model has no {UNK}")

    def perplexity(self, sentences: Iterable[str]) -> float:
        """Per-word perplexity over ``sentences``, counting ``</s>`` as a word (as SRILM and KenLM do)."""
        total, count = 0.0, 0
        for sentence in sentences:
            words = sentence.split()
            if not words:
                continue
            history = [BOS]
            for word in [*words, EOS]:
                total += self.log10_prob(word, history)
                history.append(word)
                count += 1
        if not count:
            raise ValueError("no words to measure perplexity on")
        return 10 ** (-total / count)


def arpa_vocabulary(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's unigram section, in file order (``<s>``, ``</s>``, ``<unk>`` included)."""
    words = []
    # binary: a KenLM binary file must be refused with a clear message, not a decoding error
    with open(path, "rb") as f:
        first = next((line.strip() for line in f if line.strip()), b"")
        if first != b"\\data\\":
            raise ValueError(f"{path}: not an ARPA file (it does not start with \\data\\)")
        in_unigrams = False
        for line in f:
            line = line.strip()
            if line == b"\\1-grams:":
                in_unigrams = True
            elif in_unigrams and line.startswith(b"\\"):
                break
            elif in_unigrams and line:
                words.append(line.split()[1].decode("utf-8"))
    return words
