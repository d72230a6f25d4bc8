"""CTC decoding: greedy (best path), and beam search with an optional word n-gram LM.

Beam search is flashlight's, through torchaudio's ``ctc_decoder``, in two modes:

* **lexicon-free** (``lexicon=None``): any character sequence can be produced, so words never
  seen in the LM's training text can still be spelled (open vocabulary). torchaudio's
  lexicon-free decoder asks its LM for a score at *every token* (with a KenLM path it treats
  each character as a word), so a word LM is wrapped here: characters accumulate into a word
  that is scored by KenLM when the space token ends it, and at the end of the utterance, with
  a unigram look-ahead inside the word; a word outside the LM's vocabulary gets the LM's
  ``<unk>`` probability plus ``unk_score``.
* **lexicon** (a file from :func:`write_lexicon`): only the lexicon's words can be produced
  (closed vocabulary), with the LM's look-ahead smeared over the spelling trie.

Scores add the acoustic natural-log probabilities, ``lm_weight`` times the LM's log10
probabilities, and ``word_score`` per word.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from asr.audio import quiet_native_stderr
from asr.checkpoint import Checkpoint, LanguageModel
from asr.fileio import atomic_write
from asr.ngram import UNK, arpa_vocabulary
from asr.text import ALPHABET, BLANK, Tokenizer, normalize_text


@dataclass
class Hypothesis:
    text: str
    tokens: list[int]
    frames: list[int]  # output frame at which each token is emitted (for word timestamps)
    score: float | None = None  # beam search: acoustic + weighted LM score; None for greedy


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor, tokenizer: Tokenizer) -> list[Hypothesis]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    Shapes: log-probs ``(batch, frames, vocab)``, lengths ``(batch,)``.
    """
    best = log_probs.argmax(dim=-1)
    previous = torch.nn.functional.pad(best, (1, 0), value=tokenizer.blank_id)[:, :-1]
    valid = torch.arange(best.shape[1], device=best.device)[None, :] < lengths[:, None].to(best.device)
    emit = (best != previous) & (best != tokenizer.blank_id) & valid
    hyps = []
    for ids, mask in zip(best.cpu(), emit.cpu()):
        frames = mask.nonzero().flatten().tolist()
        tokens = ids[mask].tolist()
        hyps.append(Hypothesis(tokenizer.decode(tokens), tokens, frames))
    return hyps


# flashlight's word-boundary ("silence") token; our space is mapped to it because a lexicon
# file separates spelling tokens by spaces and so cannot hold a space token.
SIL_TOKEN = "|"


BEAM_SIZE, LEXICON_BEAM_SIZE = 32, 500  # defaults of BeamSearchOptions.beam_size


@dataclass
class BeamSearchOptions:
    # hypotheses kept after each frame; None: 500 over a lexicon, 32 without. A lexicon search
    # splits its beam among the words that share a prefix and needs a wider one (docs/transcribe.md)
    beam_size: int | None = None
    beam_size_token: int | None = 10  # most probable tokens tried per frame (None: all)
    beam_threshold: float = 25.0  # drop hypotheses scoring this much below the best
    lm: str | None = None  # ARPA file, or KenLM binary (binary needs a lexicon); None: no LM
    lexicon: str | None = None  # from write_lexicon; None: lexicon-free (open vocabulary)
    # without lm and lexicon, search with the LM a checkpoint carries (Transcriber), if any
    model_lm: bool = True
    lm_weight: float | None = None  # times log10 LM probability; None: the model LM's tuned weight, else 1.0
    word_score: float | None = None  # added per word (with an LM or a lexicon); None: the tuned one, else 0.0
    # lexicon-free with an LM: added per word outside the LM vocabulary, on top of the LM's
    # <unk> probability (which lumps all unseen words together, so it is too kind to any one)
    unk_score: float = -3.0
    sil_score: float = 0.0  # added per frame that emits the space token
    nbest: int = 1


def _ctc_decoder_module():
    """torchaudio's flashlight decoder, imported only when beam search is used."""
    try:
        import flashlight.lib.text.decoder  # noqa: F401  (torchaudio's decoder wraps it)
    except ImportError as err:
        raise ImportError("beam search needs flashlight-text: pip install 'asr[lm]'") from err
    from torchaudio.models import decoder

    return decoder


class BeamSearchDecoder:
    """CTC beam search over a tokenizer's characters, optionally with a lexicon and a word LM.

    >>> decoder = BeamSearchDecoder(Tokenizer(), BeamSearchOptions(lm="lm.arpa"))  # doctest: +SKIP
    >>> decoder.decode(log_probs, lengths)[0].text  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Tokenizer, options: BeamSearchOptions | None = None) -> None:
        options = options or BeamSearchOptions()
        options = dataclasses.replace(
            options,
            beam_size=options.beam_size or (LEXICON_BEAM_SIZE if options.lexicon is not None else BEAM_SIZE),
            lm_weight=1.0 if options.lm_weight is None else options.lm_weight,
            word_score=0.0 if options.word_score is None else options.word_score,
        )
        module = _ctc_decoder_module()
        if SIL_TOKEN in tokenizer.alphabet:
            raise ValueError(f"the alphabet holds {SIL_TOKEN!r}, which beam search uses for the space")
        self.tokenizer = tokenizer
        self.options = options
        self._module = module
        # flashlight token i is our id i: blank first, our space renamed to its silence token
        tokens = [SIL_TOKEN if token == " " else token for token in tokenizer.tokens]
        self._common = common = dict(
            tokens=tokens,
            nbest=options.nbest,
            beam_size=options.beam_size,
            beam_size_token=options.beam_size_token,
            beam_threshold=options.beam_threshold,
            sil_score=options.sil_score,
            blank_token=BLANK,
            sil_token=SIL_TOKEN,
            unk_word=UNK,
        )
        for name in (options.lexicon, options.lm):
            if name is not None and not os.path.isfile(name):
                raise FileNotFoundError(f"no such file: {name}")
        # KenLM announces every ARPA file it loads on stderr ("Loading the LM will be faster if
        # you build a binary file", a bar of stars): once per grid point in `asr tune-lm`. Its
        # errors still raise.
        self._word_lm = None  # the lexicon-free search's word LM, when it has one
        with quiet_native_stderr():
            if options.lexicon is not None:
                # unk_score -inf: flashlight would otherwise emit <unk> for any prefix of a lexicon word
                self._decoder = module.ctc_decoder(
                    lexicon=options.lexicon,
                    lm=options.lm,
                    lm_weight=options.lm_weight,
                    word_score=options.word_score,
                    unk_score=-math.inf,
                    **common,
                )
            else:
                if options.lm is not None:
                    self._word_lm = _word_lm_class()(options, tokenizer)
                self._decoder = self._lexicon_free_decoder(self._word_lm)

    def _lexicon_free_decoder(self, word_lm):
        # the word LM applies the weights itself, so the decoder's lm_weight is 1
        return self._module.ctc_decoder(lexicon=None, lm=word_lm, lm_weight=1.0, **self._common)

    @property
    def can_fork(self) -> bool:
        """flashlight builds a lexicon's trie, and the LM searched over it, from files only."""
        return self.options.lexicon is None

    def fork(self) -> BeamSearchDecoder:
        """A decoder with these options whose search is its own, for another stream (in another
        thread): the word LM's tables, which the search only reads, are shared rather than
        loaded again (docs/serve.md says what that saves)."""
        if not self.can_fork:
            raise ValueError("a decoder over a lexicon cannot be forked; build another")
        other = copy.copy(self)
        other._word_lm = self._word_lm.fork() if self._word_lm is not None else None
        other._decoder = other._lexicon_free_decoder(other._word_lm)
        return other

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        """Best hypothesis per utterance. Shapes: log-probs ``(batch, frames, vocab)``, lengths ``(batch,)``."""
        return [nbest[0] for nbest in self.decode_nbest(log_probs, lengths)]

    def decode_nbest(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """Up to ``options.nbest`` hypotheses per utterance, best first."""
        if log_probs.ndim != 3 or log_probs.shape[-1] != len(self.tokenizer):
            raise ValueError(
                f"expected log-probs (batch, frames, {len(self.tokenizer)}), got {tuple(log_probs.shape)}"
            )
        log_probs = log_probs.detach().to("cpu", torch.float32).contiguous()
        lengths = lengths.detach().to("cpu", torch.int64)
        results = self._decoder(log_probs, lengths)
        return [
            [self._hypothesis(result, int(length)) for result in nbest] or [Hypothesis("", [], [], -math.inf)]
            for nbest, length in zip(results, lengths)
        ]

    # Online decoding (asr.streaming): one utterance whose log-probs arrive a chunk at a time.
    # flashlight's batch decode is these same calls over all frames at once, so the final
    # hypothesis equals decode()'s on the whole utterance.
    def begin(self) -> None:
        """Start an utterance; its log-probs follow through :meth:`step`."""
        self._decoder.decode_begin()
        self._online_frames = 0

    def step(self, log_probs: torch.Tensor) -> None:
        """Extend the search over ``(frames, vocab)`` more log-probs (tensor or array) of the utterance."""
        log_probs = torch.as_tensor(log_probs)
        if log_probs.ndim != 2 or log_probs.shape[-1] != len(self.tokenizer):
            raise ValueError(f"expected log-probs (frames, {len(self.tokenizer)}), got {tuple(log_probs.shape)}")
        if log_probs.shape[0]:
            self._decoder.decode_step(log_probs.detach().to("cpu", torch.float32).contiguous())
            self._online_frames += log_probs.shape[0]

    def best(self) -> Hypothesis:
        """The best hypothesis so far (over a lexicon: its complete words)."""
        if not self._online_frames:
            return Hypothesis("", [], [])
        # torchaudio wraps only the final hypotheses; its _to_hypo reads flashlight's result alike
        result = self._decoder._to_hypo([self._decoder.decoder.get_best_hypothesis()])[0]
        return self._hypothesis(result, self._online_frames)

    def end(self) -> Hypothesis:
        """Finish the utterance (the LM's end of sentence) and return its best hypothesis."""
        self._decoder.decode_end()
        results = self._decoder.get_final_hypothesis()
        return self._hypothesis(results[0], self._online_frames) if results else Hypothesis("", [], [], -math.inf)

    def _hypothesis(self, result, length: int) -> Hypothesis:
        # flashlight's path has length + 2 steps: a silence before frame 0 (step 0), the frames
        # (steps 1..length) and a silence after the end (step length + 1); only frames are kept.
        kept = [
            (token, step - 1)
            for token, step in zip(result.tokens.tolist(), result.timesteps.tolist())
            if 0 < step <= length
        ]
        tokens = [token for token, _ in kept]
        frames = [frame for _, frame in kept]
        words = result.words if self.options.lexicon is not None else self.tokenizer.decode(tokens).split()
        return Hypothesis(" ".join(words), tokens, frames, float(result.score))


def language_model_decoder(
    tokenizer: Tokenizer, language_model: LanguageModel, options: BeamSearchOptions | None = None
) -> BeamSearchDecoder:
    """Beam search with the LM (and lexicon) a checkpoint carries, its tuned weights unless
    ``options`` sets them. flashlight reads LMs and lexicons from files, and only while the
    decoder is built, so their texts go to a temporary folder for that long."""
    options = options or BeamSearchOptions()
    # KenLM announces each load on stderr with the temporary path ("Reading /tmp/asr-lm-.../lm.txt"
    # and a progress bar), which means nothing to the user; its errors still raise
    with tempfile.TemporaryDirectory(prefix="asr-lm-") as folder, quiet_native_stderr():
        files = {}
        for name, text in (("lm", language_model.arpa), ("lexicon", language_model.lexicon)):
            if text is not None:
                files[name] = str(Path(folder) / f"{name}.txt")
                Path(files[name]).write_text(text, encoding="utf-8")
        return BeamSearchDecoder(tokenizer, dataclasses.replace(
            options,
            lm=files.get("lm"),
            lexicon=files.get("lexicon"),
            lm_weight=language_model.lm_weight if options.lm_weight is None else options.lm_weight,
            word_score=language_model.word_score if options.word_score is None else options.word_score,
        ))


def checkpoint_decoder(ckpt: Checkpoint, beam: BeamSearchOptions | None = None) -> BeamSearchDecoder | None:
    """The beam search ``beam`` asks for (with its own files, or the checkpoint's LM unless
    ``beam.model_lm`` is False), else the checkpoint's own LM search, else None (greedy)."""
    own = ckpt.language_model
    if beam is not None and (beam.lm is not None or beam.lexicon is not None or not beam.model_lm or own is None):
        return BeamSearchDecoder(ckpt.tokenizer, beam)
    if own is None:
        return None
    try:
        return language_model_decoder(ckpt.tokenizer, own, beam)
    except ImportError as err:
        if beam is not None:  # asked for: fail
            raise
        # the default: a model still transcribes where flashlight-text is missing
        print(f"warning: {err}; decoding greedily, without the model's word LM", file=sys.stderr)
        return None


def read_language_model(
    lm: str | os.PathLike | None, lexicon: str | os.PathLike | None, lm_weight: float = 1.0, word_score: float = 0.0
) -> LanguageModel:
    """An ARPA LM and/or a lexicon from :func:`write_lexicon`, with their tuned weights, to put
    in a checkpoint (``asr attach-lm``)."""
    if lm is None and lexicon is None:
        raise ValueError("give an LM, a lexicon or both")
    arpa = None
    if lm is not None:
        data = Path(lm).read_bytes()
        if not data.lstrip().startswith(b"\\data\\"):
            raise ValueError(f"{lm}: not an ARPA file (a checkpoint carries ARPA text; KenLM binaries are not portable)")
        arpa = data.decode("utf-8")
    text = None if lexicon is None else Path(lexicon).read_text(encoding="utf-8")
    if text is not None and not text.strip():
        raise ValueError(f"{lexicon}: empty lexicon")
    return LanguageModel(arpa=arpa, lexicon=text, lm_weight=lm_weight, word_score=word_score)


@dataclass(frozen=True)
class _WordTables:
    """What :class:`WordLM` reads and never changes: the KenLM model, the word ids, and each
    word prefix's look-ahead score (the best weighted unigram log10 probability of the words it
    begins; ``oov_lookahead`` for a prefix of none)."""

    kenlm: object
    index: dict[str, int]
    unk: int
    lookahead: dict[str, float]
    oov_lookahead: float

    @classmethod
    def load(cls, options: BeamSearchOptions, kenlm_class, dictionary_class) -> _WordTables:
        words = arpa_vocabulary(options.lm)
        if UNK not in words:
            words.append(UNK)
        index = {word: i for i, word in enumerate(words)}
        kenlm = kenlm_class(options.lm, dictionary_class(words))
        unigram = kenlm.start(True)  # no context: unigram probabilities
        oov_lookahead = options.lm_weight * kenlm.score(unigram, index[UNK])[1] + options.unk_score
        lookahead: dict[str, float] = {}
        for word, i in index.items():
            if word.startswith("<") and word.endswith(">"):
                continue
            score = options.lm_weight * kenlm.score(unigram, i)[1]
            for end in range(1, len(word) + 1):
                prefix = word[:end]
                lookahead[prefix] = max(score, lookahead.get(prefix, -math.inf))
        return cls(kenlm, index, index[UNK], lookahead, oov_lookahead)


@functools.cache
def _word_lm_class():
    """The word LM for the lexicon-free decoder; a class made on first use because its base
    class comes from torchaudio's decoder, which is imported only when beam search is used."""
    module = _ctc_decoder_module()
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    class WordLM(module.CTCDecoderLM):
        """Scores each word when the space token (or the end) closes it, with a look-ahead inside it.

        A word's exact score (``lm_weight`` * log10 P(word | history) + ``word_score``, plus
        ``unk_score`` outside the vocabulary) is known only when the word ends; until then the
        decoder would compare hypotheses on acoustics alone and could prune the right spelling.
        So, as flashlight does over its lexicon trie, each prefix is scored by the best unigram
        log10 probability of the words it begins (and a prefix of no word by the ``<unk>`` one),
        and the word's exact score replaces that look-ahead when the word ends.

        States form a trie over the emitted tokens (``state.child(token)``), so hypotheses with
        the same text share a state and flashlight merges them. Each state maps to
        ``(KenLM state, unfinished word, its look-ahead score, score of the step into the state)``.
        """

        def __init__(self, options: BeamSearchOptions, tokenizer: Tokenizer, tables: _WordTables | None = None) -> None:
            super().__init__()
            self._tables = tables or _WordTables.load(options, KenLM, Dictionary)
            self._tokenizer = tokenizer
            self._characters = tokenizer.tokens
            self._space = tokenizer.tokens.index(" ")
            self._options = options
            self._states: dict = {}

        def fork(self) -> WordLM:
            """The same LM with states of its own, for another decoder: the tables are shared."""
            return WordLM(self._options, self._tokenizer, self._tables)

        def start(self, start_with_nothing: bool):
            self._states.clear()  # the previous utterance's states are gone from the decoder
            state = module.CTCDecoderLMState()
            self._states[state] = (self._tables.kenlm.start(start_with_nothing), "", 0.0, 0.0)
            return state

        def score(self, state, token: int):
            child = state.child(token)
            entry = self._states.get(child)
            if entry is None:
                lm_state, partial, lookahead, _ = self._states[state]
                if token != self._space:
                    partial += self._characters[token]
                    new = self._tables.lookahead.get(partial, self._tables.oov_lookahead)
                    entry = (lm_state, partial, new, new - lookahead)
                elif partial:
                    lm_state, exact = self._score_word(lm_state, partial)
                    entry = (lm_state, "", 0.0, exact - lookahead)
                else:  # a space with no word before it (leading or doubled) closes nothing
                    entry = (lm_state, "", 0.0, 0.0)
                self._states[child] = entry
            return child, entry[3]

        def finish(self, state):
            lm_state, partial, lookahead, _ = self._states[state]
            score = 0.0
            if partial:
                lm_state, exact = self._score_word(lm_state, partial)
                score = exact - lookahead
            lm_state, end = self._tables.kenlm.finish(lm_state)
            return state, score + self._options.lm_weight * end

        def _score_word(self, lm_state, word: str):
            index = self._tables.index.get(word, self._tables.unk)
            lm_state, log10_prob = self._tables.kenlm.score(lm_state, index)
            score = self._options.lm_weight * log10_prob + self._options.word_score
            if index == self._tables.unk:
                score += self._options.unk_score
            return lm_state, score

    return WordLM


def write_lexicon(words: Iterable[str], path: str | os.PathLike, alphabet: str = ALPHABET) -> int:
    """Write a flashlight lexicon: ``WORD<TAB>W O R D`` per line, for the lexicon decoder.

    A word is spelled by its characters alone, without a trailing space token: the decoder
    emits a word at its last character and takes spaces between words on its own, so the last
    word of an utterance (which our models do not follow by a space) still completes.
    LM markers (``<s>``, ``</s>``, ``<unk>``) are skipped, so an LM's vocabulary
    (:func:`asr.ngram.arpa_vocabulary`) can be passed as it is. Returns the number of words written.
    """
    count = 0
    with atomic_write(path) as f:
        for word in dict.fromkeys(words):
            if word.startswith("<") and word.endswith(">"):
                continue
            bad = sorted(set(word) - set(alphabet.replace(" ", "")))
            if bad or not word:
                raise ValueError(f"cannot spell {word!r} with the tokenizer's characters (bad: {bad})")
            f.write(f"{word}\t{' '.join(word)}\n")
            count += 1
    return count


def read_word_list(path: str | os.PathLike) -> tuple[set[str], int]:
    """Words of a word list (one per line, e.g. Debian's /usr/share/dict/words), normalised like
    transcripts, for :func:`write_lexicon`. Entries that are not one word in the tokenizer's
    alphabet ("3D", "c/o") are skipped; returns ``(words, skipped)``."""
    words, skipped = set(), 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, unknown = normalize_text(line)
            if unknown or " " in word:
                skipped += 1
            elif word:
                words.add(word)
    return words, skipped


def tune_lm_weights(
    log_probs: Sequence[torch.Tensor],
    lengths: Sequence[torch.Tensor],
    references: Sequence[str],
    tokenizer: Tokenizer,
    options: BeamSearchOptions,
    lm_weights: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    word_scores: Sequence[float] = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0),
) -> tuple[float, float, list[tuple[float, float, float]]]:
    """Grid search of ``lm_weight`` and ``word_score`` for the lowest WER on a dev set.

    Args:
        log_probs, lengths: the model's outputs, batch by batch: ``(batch, frames, vocab)`` and ``(batch,)``.
        references: normalised transcripts, in the order of the utterances in the batches.
        options: the other beam search options (lm, lexicon, beam sizes).

    Returns:
        ``(best lm_weight, best word_score, table)`` with table rows ``(lm_weight, word_score, wer)``
        in grid order; ties go to the earlier grid point.
    """
    import jiwer

    table = []
    for lm_weight in lm_weights:
        for word_score in word_scores:
            decoder = BeamSearchDecoder(
                tokenizer, dataclasses.replace(options, lm_weight=lm_weight, word_score=word_score, nbest=1)
            )
            hypotheses = [h.text for batch, n in zip(log_probs, lengths) for h in decoder.decode(batch, n)]
            if len(hypotheses) != len(references):
                raise ValueError(f"{len(hypotheses)} utterances decoded but {len(references)} references given")
            table.append((lm_weight, word_score, jiwer.wer(list(references), hypotheses)))
    best = min(table, key=lambda row: row[2])
    return best[0], best[1], table
