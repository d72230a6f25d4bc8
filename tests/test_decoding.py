"""Greedy and beam search CTC decoding on hand-made log-probs, with and without a word LM."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
import warnings

import pytest
import torch

from asr.decoding import (
    BeamSearchDecoder,
    BeamSearchOptions,
    greedy_ctc_decode,
    tune_lm_weights,
    write_lexicon,
)
from asr.ngram import ArpaModel, arpa_vocabulary, build_arpa
from asr.text import Tokenizer
from asr.alignment import word_spans

TOK = Tokenizer()
BLANK = "_"

requires_flashlight = pytest.mark.skipif(
    importlib.util.find_spec("flashlight") is None, reason="beam search needs flashlight-text (asr[lm])"
)


def frames(spec: list, peak: float = 0.9) -> torch.Tensor:
    """Log-probs ``(frames, vocab)``: each item is a character (``_`` = blank) that gets ``peak``,
    or a dict {character: probability}; the rest of the mass is spread evenly."""
    rows = []
    for item in spec:
        wanted = {item: peak} if isinstance(item, str) else item
        row = torch.full((len(TOK),), (1 - sum(wanted.values())) / (len(TOK) - len(wanted)))
        for char, p in wanted.items():
            row[0 if char == BLANK else TOK.tokens.index(char)] = p
        rows.append(row.log())
    return torch.stack(rows) if rows else torch.empty(0, len(TOK))


def spelled(text: str) -> list[str]:
    """One frame per character, each followed by a blank frame."""
    return [item for char in text for item in (char, BLANK)]


def batch(*utterances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with blank frames to ``(batch, frames, vocab)``; lengths ``(batch,)``."""
    longest = max(len(u) for u in utterances)
    padded = [torch.cat([u, frames([BLANK] * (longest - len(u)))]) for u in utterances]
    return torch.stack(padded), torch.tensor([len(u) for u in utterances])


# ---- greedy -------------------------------------------------------------------------------


def test_greedy_collapses_repeats_and_drops_blanks():
    log_probs, lengths = batch(frames(list("CC__AAT") + [BLANK]))
    (hyp,) = greedy_ctc_decode(log_probs, lengths, TOK)
    assert hyp.text == "CAT"
    assert hyp.frames == [0, 4, 6]
    assert hyp.tokens == TOK.encode("CAT")


def test_greedy_blank_separates_repeated_letters():
    (hyp,) = greedy_ctc_decode(*batch(frames(list("BOO_OK"))), TOK)
    assert hyp.text == "BOOK"
    assert hyp.frames == [0, 1, 4, 5]


def test_greedy_batch_with_different_lengths():
    # the padding frames of the short utterance say "X": they must be ignored
    short = torch.cat([frames(spelled("HI")), frames(["X"] * 6)])
    log_probs = torch.stack([short, frames(spelled("HELLO"))])
    hyps = greedy_ctc_decode(log_probs, torch.tensor([4, 10]), TOK)
    assert [h.text for h in hyps] == ["HI", "HELLO"]
    assert hyps[0].frames == [0, 2]


# ---- beam search ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny corpus: fixed fallback discounts
        build_arpa(["THE CAT SAT", "A CAT SAT ON THE MAT", "THE DOG SAT", "THE CAT RAN"] * 3, path, order=3)
    return str(path)


@pytest.fixture(scope="module")
def lexicon(lm, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lexicon") / "lexicon.txt"
    write_lexicon(arpa_vocabulary(lm), path)
    return str(path)


def ambiguous() -> tuple[torch.Tensor, torch.Tensor]:
    """'THE ?AT SAT' where the first letter of the second word is K (0.55) or C (0.4)."""
    return batch(frames(spelled("THE ") + [{"K": 0.55, "C": 0.4}, BLANK] + spelled("AT SAT")))


@requires_flashlight
def test_beam_without_lm_equals_greedy_on_peaky_posteriors():
    random.seed(0)
    utterances = []
    for _ in range(6):
        text = " ".join("".join(random.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ'", k=random.randint(1, 6))) for _ in range(3))
        spec = [item for char in text for item in [char] * random.randint(1, 3) + [BLANK] * random.randint(0, 2)]
        utterances.append(frames(spec, peak=random.uniform(0.6, 0.95)))
    log_probs, lengths = batch(*utterances)
    greedy = greedy_ctc_decode(log_probs, lengths, TOK)
    beam = BeamSearchDecoder(TOK).decode(log_probs, lengths)
    assert [(h.text, h.tokens, h.frames) for h in beam] == [(h.text, h.tokens, h.frames) for h in greedy]
    assert all(h.score is not None and h.score < 0 for h in beam)


@requires_flashlight
def test_beam_with_lm_fixes_an_ambiguous_spelling(lm):
    log_probs, lengths = ambiguous()
    assert greedy_ctc_decode(log_probs, lengths, TOK)[0].text == "THE KAT SAT"
    assert BeamSearchDecoder(TOK).decode(log_probs, lengths)[0].text == "THE KAT SAT"
    (hyp,) = BeamSearchDecoder(TOK, BeamSearchOptions(lm=lm)).decode(log_probs, lengths)
    assert hyp.text == "THE CAT SAT"
    assert hyp.tokens == TOK.encode("THE CAT SAT")
    assert hyp.frames == list(range(0, 22, 2))


@requires_flashlight
def test_lexicon_free_score_is_acoustic_plus_exact_lm_score(lm):
    # the in-word look-ahead must cancel out: the final score holds exact word LM scores only
    log_probs, lengths = ambiguous()
    options = BeamSearchOptions(lm=lm, lm_weight=1.5, word_score=0.7)
    (hyp,) = BeamSearchDecoder(TOK, options).decode(log_probs, lengths)
    assert hyp.text == "THE CAT SAT"
    path = [TOK.tokens.index(c) if c != BLANK else 0 for c in spelled("THE CAT SAT")]
    acoustic = sum(log_probs[0, t, token].item() for t, token in enumerate(path))
    model = ArpaModel(lm)
    words = ["THE", "CAT", "SAT", "</s>"]
    lm_score = sum(model.log10_prob(w, ["<s>", *words[:i]]) for i, w in enumerate(words))
    assert hyp.score == pytest.approx(acoustic + 1.5 * lm_score + 0.7 * 3, abs=1e-4)


@requires_flashlight
def test_forked_decoders_share_the_lm_and_search_apart(lm, lexicon):
    """A server's streams: forks interleaved frame by frame find what one decoder finds alone."""
    log_probs, lengths = ambiguous()
    utterances = [log_probs[0], torch.cat([log_probs[0], frames(spelled(" ON THE MAT"))])]
    for options in (BeamSearchOptions(), BeamSearchOptions(lm=lm, lm_weight=1.5, word_score=0.7)):
        decoder = BeamSearchDecoder(TOK, options)
        alone = [decoder.decode(u[None], torch.tensor([len(u)]))[0] for u in utterances]
        forks = [decoder.fork(), decoder.fork()]
        if options.lm is not None:
            assert forks[0]._word_lm._tables is decoder._word_lm._tables  # loaded once
        for fork in forks:
            fork.begin()
        for t in range(len(utterances[1])):
            for fork, utterance in zip(forks, utterances):
                fork.step(utterance[t : t + 1])
        for fork, expected in zip(forks, alone):
            got = fork.end()
            assert (got.text, got.tokens, got.frames) == (expected.text, expected.tokens, expected.frames)
            assert got.score == pytest.approx(expected.score)
    with pytest.raises(ValueError, match="cannot be forked"):
        BeamSearchDecoder(TOK, BeamSearchOptions(lm=lm, lexicon=lexicon)).fork()


@requires_flashlight
def test_lexicon_free_lm_still_spells_unseen_words(lm):
    log_probs, lengths = batch(frames(spelled("THE ZEBRA SAT")))
    (hyp,) = BeamSearchDecoder(TOK, BeamSearchOptions(lm=lm)).decode(log_probs, lengths)
    assert hyp.text == "THE ZEBRA SAT"


@requires_flashlight
def test_unk_score_penalises_words_outside_the_lm(lm):
    # with a negligible LM weight and no penalty the acoustics pick KAT (0.55 against 0.4) ...
    log_probs, lengths = ambiguous()
    options = BeamSearchOptions(lm=lm, lm_weight=0.01, unk_score=0.0)
    assert BeamSearchDecoder(TOK, options).decode(log_probs, lengths)[0].text == "THE KAT SAT"
    # ... unless a word outside the LM costs more than log(0.55 / 0.4) = 0.32
    options = BeamSearchOptions(lm=lm, lm_weight=0.01, unk_score=-1.0)
    assert BeamSearchDecoder(TOK, options).decode(log_probs, lengths)[0].text == "THE CAT SAT"


@requires_flashlight
def test_lexicon_decoding_is_closed_vocabulary(lm, lexicon):
    log_probs, lengths = ambiguous()
    for options in (BeamSearchOptions(lexicon=lexicon), BeamSearchOptions(lexicon=lexicon, lm=lm)):
        assert BeamSearchDecoder(TOK, options).decode(log_probs, lengths)[0].text == "THE CAT SAT"
    log_probs, lengths = batch(frames(spelled("THE ZEBRA SAT")))
    hyp = BeamSearchDecoder(TOK, BeamSearchOptions(lexicon=lexicon, lm=lm)).decode(log_probs, lengths)[0]
    assert set(hyp.text.split()) <= set(arpa_vocabulary(lm))


@requires_flashlight
def test_a_lexicon_search_keeps_a_wider_beam_by_default(lm, lexicon):
    def beam_size(**options) -> int:
        return BeamSearchDecoder(TOK, BeamSearchOptions(**options)).options.beam_size

    assert beam_size() == beam_size(lm=lm) == 32
    assert beam_size(lexicon=lexicon) == beam_size(lexicon=lexicon, lm=lm) == 500
    assert beam_size(lexicon=lexicon, beam_size=8) == 8


@requires_flashlight
def test_lexicon_completes_the_last_word_without_a_trailing_space(lexicon):
    log_probs, lengths = batch(frames(spelled("THE MAT")), frames(spelled("A DOG SAT") + [BLANK] * 3))
    hyps = BeamSearchDecoder(TOK, BeamSearchOptions(lexicon=lexicon)).decode(log_probs, lengths)
    assert [h.text for h in hyps] == ["THE MAT", "A DOG SAT"]


@requires_flashlight
def test_batch_lengths_and_frames(lm):
    # the short utterance's padding says "X": beyond its length it must be ignored
    short = torch.cat([frames(spelled("A DOG")), frames(["X"] * 4)])
    log_probs = torch.stack([short, frames(spelled("THE CAT"))])
    lengths = torch.tensor([10, 14])
    for options in (BeamSearchOptions(), BeamSearchOptions(lm=lm)):
        hyps = BeamSearchDecoder(TOK, options).decode(log_probs, lengths)
        assert [h.text for h in hyps] == ["A DOG", "THE CAT"]
        assert hyps[0].frames == [0, 2, 4, 6, 8]


@requires_flashlight
def test_nbest(lm):
    log_probs, lengths = ambiguous()
    (nbest,) = BeamSearchDecoder(TOK, BeamSearchOptions(lm=lm, nbest=3)).decode_nbest(log_probs, lengths)
    assert 1 < len(nbest) <= 3
    assert nbest[0].text == "THE CAT SAT"
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)


@requires_flashlight
def test_online_decoding_chunk_by_chunk_equals_the_whole_utterance(lm, lexicon):
    """begin/step/end, fed a few frames at a time as the streaming Recognizer feeds them, find
    exactly what decode() finds on the whole utterance; best() follows the search's leader."""
    rng = random.Random(0)
    utterance = torch.cat([ambiguous()[0][0], frames(spelled(" ON THE MAT"))])
    for options, text in ((BeamSearchOptions(), "THE KAT SAT ON THE MAT"),
                          (BeamSearchOptions(lm=lm), "THE CAT SAT ON THE MAT"),
                          (BeamSearchOptions(lm=lm, lexicon=lexicon), "THE CAT SAT ON THE MAT")):
        decoder = BeamSearchDecoder(TOK, options)
        (whole,) = decoder.decode(utterance[None], torch.tensor([len(utterance)]))
        assert whole.text == text
        for _ in range(2):  # the second utterance starts afresh
            decoder.begin()
            assert decoder.best().text == ""
            partials, start = [], 0
            while start < len(utterance):
                size = rng.randint(0, 5)
                decoder.step(utterance[start : start + size])
                partials.append(decoder.best().text)
                start += size
            online = decoder.end()
            assert (online.text, online.tokens, online.frames) == (whole.text, whole.tokens, whole.frames)
            assert online.score == pytest.approx(whole.score)
            assert partials[-1] == text and text.startswith(partials[len(partials) // 2])
    with pytest.raises(ValueError, match="expected log-probs"):
        decoder.step(utterance[None])


@requires_flashlight
def test_tune_lm_weights_prefers_the_lm(lm):
    log_probs, lengths = ambiguous()
    best_weight, best_score, table = tune_lm_weights(
        [log_probs], [lengths], ["THE CAT SAT"], TOK, BeamSearchOptions(lm=lm, unk_score=0.0),
        lm_weights=(0.0, 1.0), word_scores=(0.0, 1.0),
    )
    assert [(w, s) for w, s, _ in table] == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    assert table[0][2] == pytest.approx(1 / 3)  # LM weight 0 (and no unk_score): KAT for CAT
    assert best_weight == 1.0 and best_score == 0.0
    assert table[2][2] == 0.0


def test_write_lexicon(tmp_path):
    path = tmp_path / "lexicon.txt"
    assert write_lexicon(["<s>", "</s>", "<unk>", "CAT", "DON'T", "CAT"], path) == 2
    assert path.read_text() == "CAT\tC A T\nDON'T\tD O N ' T\n"
    with pytest.raises(ValueError, match="cannot spell 'CAFÉ'"):
        write_lexicon(["CAFÉ"], path)


@requires_flashlight
def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        BeamSearchDecoder(TOK, BeamSearchOptions(lexicon=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match=r"expected log-probs \(batch, frames, 29\)"):
        BeamSearchDecoder(TOK).decode(torch.zeros(1, 5, 10), torch.tensor([5]))


def test_missing_flashlight_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashlight.lib.text.decoder", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'asr\[lm\]'"):
        BeamSearchDecoder(TOK)


@requires_flashlight
def test_log_probs_on_any_dtype_are_accepted():
    log_probs, lengths = ambiguous()
    (hyp,) = BeamSearchDecoder(TOK).decode(log_probs.double(), lengths.int())
    assert hyp.text == "THE KAT SAT"
    assert math.isfinite(hyp.score)


@requires_flashlight
def test_cli_lm_and_tune_lm(tiny_checkpoint, tmp_path):
    """`asr lm` builds an ARPA from the transcripts of one or more manifests; `asr tune-lm` grid-searches the
    weights on a dev manifest and writes the best as decoding options."""
    import re
    import subprocess

    import soundfile as sf

    from asr.data.manifest import write_manifest

    entries = []
    for i, (audio, sentence) in enumerate(zip(tiny_checkpoint.audio, tiny_checkpoint.sentences)):
        sf.write(tmp_path / f"{i}.wav", audio.numpy(), 16000)
        entries.append({"id": f"u{i}", "audio": str(tmp_path / f"{i}.wav"), "duration": len(audio) / 16000,
                        "text": sentence, "speaker": "s"})
    write_manifest(tmp_path / "m.jsonl", entries)
    write_manifest(tmp_path / "first.jsonl", entries[:1])
    write_manifest(tmp_path / "rest.jsonl", entries[1:])
    asr = [sys.executable, "-m", "asr"]
    built = subprocess.run(asr + ["lm", "--manifest", str(tmp_path / "first.jsonl"), str(tmp_path / "rest.jsonl"),
                                  "--out", str(tmp_path / "lm.arpa")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    words = {w for s in tiny_checkpoint.sentences for w in s.upper().split()}
    assert set(arpa_vocabulary(tmp_path / "lm.arpa")) >= words
    assert re.search(rf"{len(words) + 3} 1-grams", built.stdout)  # + <s>, </s>, <unk>
    tuned = subprocess.run(
        asr + ["tune-lm", "--model", str(tiny_checkpoint.path), "--manifest", str(tmp_path / "m.jsonl"),
               "--lm", str(tmp_path / "lm.arpa"), "--lm-weights", "0.5", "1", "--word-scores", "0", "2",
               "--out", str(tmp_path / "weights.args")],
        capture_output=True, text=True, timeout=300,
    )
    assert tuned.returncode == 0, tuned.stderr
    assert len(re.findall(r"^\s*\d\.\d\d\s+\d\.\d\d \d\.\d{4}$", tuned.stdout, re.M)) == 4
    best = float(re.search(r"dev WER (\S+)\)", tuned.stdout).group(1))
    assert best < 0.1
    assert re.fullmatch(r"--lm-weight \S+ --word-score \S+\n", (tmp_path / "weights.args").read_text())


def test_cli_lexicon_lists_the_words_of_manifests(tmp_path):
    """`asr lexicon` spells each distinct word of the transcripts once; a word the tokenizer
    cannot spell is a one-line error."""
    import subprocess

    from asr.data.manifest import write_manifest

    def manifest(name, *texts):
        write_manifest(tmp_path / name, [{"id": f"{name}{i}", "audio": "x.wav", "duration": 1.0, "text": t,
                                          "speaker": "s"} for i, t in enumerate(texts)])
        return str(tmp_path / name)

    asr = [sys.executable, "-m", "asr", "lexicon", "--out", str(tmp_path / "lexicon.txt"), "--manifest"]
    done = subprocess.run(asr + [manifest("a", "Zero one", "one two."), manifest("b", "TWO don't")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lexicon.txt").read_text().splitlines() == [
        "DON'T\tD O N ' T", "ONE\tO N E", "TWO\tT W O", "ZERO\tZ E R O"]
    failed = subprocess.run(asr + [manifest("c", "3 little pigs")], capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and failed.stderr.count("\n") == 1 and "'3'" in failed.stderr

    # a word list adds the words it can spell, normalised like transcripts, and counts the rest
    (tmp_path / "words").write_text("zebra\nCafé\nDon't\n3D\nc/o\n\nzero\n", encoding="utf-8")
    done = subprocess.run(asr + [manifest("a", "Zero one"), "--words", str(tmp_path / "words")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in (tmp_path / "lexicon.txt").read_text().splitlines()] == [
        "CAFE", "DON'T", "ONE", "ZEBRA", "ZERO"]
    assert "5 words (2 from the transcripts, 3 more from the word lists; 2 list entries skipped" in done.stdout


@requires_flashlight
def test_word_spans_of_a_doubled_letter_spelled_from_one_run(tmp_path):
    """flashlight's lexicon decoder reads "LL" from one run of L frames, which CTC collapses
    into one token: each word must still get its own frames (word times once crashed on it)."""
    lexicon = tmp_path / "lexicon.txt"
    write_lexicon(["TELL", "THEM", "ALL"], lexicon)
    log_probs, lengths = batch(frames(list("T_E_LL_") + spelled("THEM") + list("A_LL")))
    (hyp,) = BeamSearchDecoder(TOK, BeamSearchOptions(lexicon=str(lexicon))).decode(log_probs, lengths)
    assert hyp.text == "TELL THEM ALL"
    assert TOK.decode(hyp.tokens).replace(" ", "") == "TELTHEMAL"
    chars = [(t, f) for t, f in zip(hyp.tokens, hyp.frames) if t != TOK.tokens.index(" ")]
    spans = word_spans(hyp.text.split(), chars, TOK)
    assert [[f for _, f in span] for span in spans] == [[0, 2, 4], [7, 9, 11, 13], [15, 17]]


def test_word_spans_keep_a_doubled_letter_that_has_its_own_frames():
    chars = [(TOK.tokens.index(c), f) for f, c in enumerate("BOOKS")]
    assert [len(s) for s in word_spans(["BOOK", "S"], chars, TOK)] == [4, 1]
    collapsed = [(TOK.tokens.index(c), f) for f, c in enumerate("BOKS")]
    assert [[f for _, f in s] for s in word_spans(["BOOK", "S"], collapsed, TOK)] == [[0, 1, 2], [3]]


# ---- a checkpoint that carries its LM ------------------------------------------------------

@requires_flashlight
def test_a_checkpoint_decodes_with_the_lm_it_carries(tiny_checkpoint, tmp_path, capfd):
    """`asr attach-lm` puts an LM, a lexicon and weights into the checkpoint: the Transcriber
    then searches with them by default, exactly as with the files given explicitly, after the
    files are gone (and without KenLM's loading chatter about its temporary copy); --greedy and
    --no-lm step around them."""
    import subprocess

    from asr.checkpoint import load_checkpoint
    from asr.transcribe import Transcriber

    # the lexicon lacks OPEN, DOOR and PLEASE of sentence 0: the search must replace them
    other_words = sorted({w for s in tiny_checkpoint.sentences[1:] for w in s.upper().split()})
    write_lexicon(other_words, tmp_path / "lexicon.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_arpa([s.upper() for s in tiny_checkpoint.sentences[1:]], tmp_path / "lm.arpa", order=2)
    attached = tmp_path / "attached.pt"
    result = subprocess.run(
        [sys.executable, "-m", "asr", "attach-lm", "--model", str(tiny_checkpoint.path), "--out", str(attached),
         "--lm", str(tmp_path / "lm.arpa"), "--lexicon", str(tmp_path / "lexicon.txt"),
         "--lm-weight", "0.5", "--word-score", "1.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    explicit = BeamSearchOptions(lm=str(tmp_path / "lm.arpa"), lexicon=str(tmp_path / "lexicon.txt"),
                                 lm_weight=0.5, word_score=1.5)
    audio = tiny_checkpoint.audio[0]
    expected = Transcriber(tiny_checkpoint.path, beam=explicit).transcribe_audio(audio).text
    assert load_checkpoint(tiny_checkpoint.path).language_model is None
    (tmp_path / "lm.arpa").unlink()
    (tmp_path / "lexicon.txt").unlink()

    capfd.readouterr()
    own = Transcriber(attached).transcribe_audio(audio).text
    assert "asr-lm-" not in capfd.readouterr().err
    assert own == expected
    assert own and set(own.split()) <= set(other_words)
    greedy = tiny_checkpoint.sentences[0].upper()
    assert Transcriber(attached, greedy=True).transcribe_audio(audio).text == greedy
    assert Transcriber(attached, beam=BeamSearchOptions(model_lm=False)).transcribe_audio(audio).text == greedy
    # a weight given overrides the carried one, the rest still comes from the checkpoint
    wider = Transcriber(attached, beam=BeamSearchOptions(beam_size=64)).beam_decoder.options
    assert (wider.beam_size, wider.lm_weight, wider.word_score, wider.lexicon is not None) == (64, 0.5, 1.5, True)
    assert Transcriber(attached, beam=BeamSearchOptions(word_score=-2.0)).beam_decoder.options.word_score == -2.0


@requires_flashlight
def test_a_model_without_flashlight_falls_back_to_greedy(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import dataclasses

    from asr.checkpoint import load_checkpoint, write_checkpoint
    from asr.decoding import read_language_model
    from asr.transcribe import Transcriber

    write_lexicon(["CAT"], tmp_path / "lexicon.txt")
    ckpt = load_checkpoint(tiny_checkpoint.path)
    lexicon_only = read_language_model(None, tmp_path / "lexicon.txt")
    write_checkpoint(tmp_path / "attached.pt", dataclasses.replace(ckpt, language_model=lexicon_only))
    # the lexicon search ran: it can say nothing but its one word (how often depends on the model)
    assert set(Transcriber(tmp_path / "attached.pt").transcribe_audio(tiny_checkpoint.audio[0]).text.split()) == {"CAT"}
    monkeypatch.setitem(sys.modules, "flashlight.lib.text.decoder", None)  # import now fails
    transcriber = Transcriber(tmp_path / "attached.pt")
    assert transcriber.transcribe_audio(tiny_checkpoint.audio[0]).text == tiny_checkpoint.sentences[0].upper()
    assert "pip install 'asr[lm]'; decoding greedily, without the model's word LM" in capsys.readouterr().err
    with pytest.raises(ImportError):  # asked for beam search: no silent fallback
        Transcriber(tmp_path / "attached.pt", beam=BeamSearchOptions(beam_size=8))


def test_attach_lm_takes_arpa_text_only(tmp_path):
    from asr.decoding import read_language_model

    (tmp_path / "lm.bin").write_bytes(b"mmap lm http://kheafield.com/code format version 5\0\0")
    with pytest.raises(ValueError, match="lm.bin: not an ARPA file"):
        read_language_model(tmp_path / "lm.bin", None)
    with pytest.raises(ValueError, match="give an LM, a lexicon or both"):
        read_language_model(None, None)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt: empty lexicon"):
        read_language_model(None, tmp_path / "empty.txt")
