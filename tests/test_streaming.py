"""Streaming equals offline: the chunked frontend, the model's step/flush, and the Recognizer
built on them give what the whole-utterance path gives, whatever the chunking."""

import random
import subprocess
import sys

import jiwer
import pytest
import torch

from asr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from asr.decoding import greedy_ctc_decode
from asr.features import LogMelFrontend, StreamingLogMel, num_frames
from asr.models import build_model
from asr.streaming import EndpointConfig, Recognizer
from asr.text import Tokenizer
from conftest import espeak, requires_espeak

TOLERANCE = 1e-4


def random_chunks(audio: torch.Tensor, rng: random.Random):
    """Chunks of 10 ms to 1 s, with now and then a tiny one (a few samples)."""
    start = 0
    while start < len(audio):
        size = rng.randint(1, 100) if rng.random() < 0.1 else rng.randint(160, 16000)
        yield audio[start : start + size]
        start += size


def noise(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(int(seconds * 16000), generator=g)


def offline(model, audio: torch.Tensor) -> torch.Tensor:
    feats, lengths = LogMelFrontend(model.config.n_mels).eval()(audio[None])
    with torch.no_grad():
        return model(feats, lengths)[0][0]


def streamed(model, audio: torch.Tensor, rng: random.Random) -> torch.Tensor:
    frontend, state, outputs = StreamingLogMel(model.config.n_mels), model.initial_state(), []
    with torch.no_grad():
        for chunk in random_chunks(audio, rng):
            log_probs, state = model.step(frontend.accept_audio(chunk), state)
            outputs.append(log_probs[0])
        outputs.append(model.flush(state)[0])
    return torch.cat(outputs)


def small_model(**config):
    torch.manual_seed(0)
    return build_model("streaming_gru", {"hidden_size": 48, "num_layers": 2, "conv_channels": 8, **config}, verbose=False).eval()


@requires_espeak
def test_streaming_frontend_equals_offline():
    rng = random.Random(0)
    worst = 0.0
    for audio in [espeak("streaming features must match", voice="en-gb"), noise(2.3, 1), noise(0.03, 2)]:
        reference, _ = LogMelFrontend().eval()(audio[None])
        reference = reference[:, : num_frames(len(audio))]
        frontend = StreamingLogMel()
        got = torch.cat([frontend.accept_audio(c) for c in random_chunks(audio, rng)], dim=1)
        assert got.shape == reference.shape
        worst = max(worst, (got - reference).abs().max().item() if got.numel() else 0.0)
    print(f"streaming frontend: max abs diff {worst:.3g}")
    assert worst <= 1e-5


@requires_espeak
def test_step_and_flush_equal_forward(tiny_streaming_checkpoint):
    """The trained model on speech and noise, and untrained models of other shapes."""
    rng = random.Random(1)
    tokenizer = Tokenizer()
    trained = load_checkpoint(tiny_streaming_checkpoint.path).build_model()
    cases = [(trained, audio) for audio in tiny_streaming_checkpoint.audio] + [(trained, noise(1.7, 3))]
    for config in [{"time_stride": 2, "lookahead": 0}, {"lookahead": 1}, {"lookahead": 3}, {"layer_norm": True, "num_layers": 3}]:
        cases += [(small_model(**config), espeak("a different shape", voice="en-us+f2")), (small_model(**config), noise(1.1, 4))]
    worst = 0.0
    for model, audio in cases:
        reference = offline(model, audio)
        for _ in range(2):
            got = streamed(model, audio, rng)
            assert got.shape == reference.shape
            worst = max(worst, (got - reference).abs().max().item())
            lengths = torch.tensor([len(got)])
            assert (
                greedy_ctc_decode(got[None], lengths, tokenizer)[0].text
                == greedy_ctc_decode(reference[None], lengths, tokenizer)[0].text
            )
    print(f"step/flush vs forward: max abs diff of log-probs {worst:.3g} over {len(cases)} utterances")
    assert worst <= TOLERANCE


@pytest.mark.parametrize("layer_norm", [False, True])
def test_padding_does_not_leak_and_lengths(layer_norm):
    model = small_model(layer_norm=layer_norm)
    lengths = torch.tensor([120, 64, 33, 1])
    batched, out_lengths = model(torch.randn(4, 120, 80), lengths)
    assert out_lengths.tolist() == [-(-n // 4) for n in lengths.tolist()] == model.output_lengths(lengths).tolist()
    feats = torch.randn(4, 120, 80)
    batched, _ = model(feats, lengths)
    for i in range(4):
        alone, _ = model(feats[i : i + 1, : lengths[i]], lengths[i : i + 1])
        assert torch.allclose(alone[0], batched[i, : out_lengths[i]], atol=1e-5)


def test_step_runs_several_streams_as_one_batch():
    """The state has the batch first (hidden: second), so streams can be stepped together."""
    model = small_model().eval()
    feats = torch.randn(3, 37, 80)
    state, pieces = model.initial_state(batch=3), []
    with torch.inference_mode():
        for start in range(0, 37, 8):
            log_probs, state = model.step(feats[:, start : start + 8], state)
            pieces.append(log_probs)
        batched = torch.cat([*pieces, model.flush(state)], dim=1)
        for i in range(3):
            alone, _ = model(feats[i : i + 1], torch.tensor([37]))
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)


def test_step_needs_eval_mode():
    model = small_model().train()
    with pytest.raises(RuntimeError, match="model.eval"):
        model.step(torch.zeros(1, 4, 80), model.initial_state())


def play(recognizer: Recognizer, audio: torch.Tensor, rng: random.Random):
    events = [e for chunk in random_chunks(audio, rng) for e in recognizer.accept_audio(chunk)]
    return events + recognizer.finish()


@requires_espeak
def test_recognizer_partials_and_final_match_offline(tiny_streaming_checkpoint):
    ckpt = load_checkpoint(tiny_streaming_checkpoint.path)
    model = ckpt.build_model()
    recognizer = Recognizer(tiny_streaming_checkpoint.path)
    rng = random.Random(2)
    for audio, sentence in zip(tiny_streaming_checkpoint.audio, tiny_streaming_checkpoint.sentences):
        reference = offline(model, audio)
        expected = greedy_ctc_decode(reference[None], torch.tensor([len(reference)]), ckpt.tokenizer)[0].text
        events = play(recognizer, audio, rng)
        partials = [e for e in events if e.kind == "partial"]
        finals = [e for e in events if e.kind == "final"]
        assert [e.text for e in finals] == [expected], events
        assert jiwer.cer(sentence.upper(), expected) < 0.1
        texts = [e.text for e in partials]
        assert len(set(texts)) == len(texts)  # a partial only when the text changes
        assert all(expected.startswith(t) for t in texts)  # greedy partials only grow
        assert all(0 <= e.latency < 5 for e in events)
        assert all(0 < e.end <= len(audio) / 16000 for e in events)


@requires_espeak
def test_endpointing_splits_utterances_and_keeps_continuity(tiny_streaming_checkpoint):
    """Two sentences 1.5 s apart: the silence finalises the first, the model restarts, and the
    second is recognised as if it were alone; time stamps stay on the stream's clock."""
    audio = tiny_streaming_checkpoint.audio
    sentences = [s.upper() for s in tiny_streaming_checkpoint.sentences]
    gap = torch.zeros(24000)
    stream = torch.cat([gap[:4000], audio[0], gap, audio[2], gap, audio[1]])
    recognizer = Recognizer(tiny_streaming_checkpoint.path, endpoint=EndpointConfig(trailing_silence=0.8))
    finals = [e for e in play(recognizer, stream, random.Random(3)) if e.kind == "final"]
    print([(e.text, round(e.start, 2), round(e.end, 2)) for e in finals])
    assert [e.utterance for e in finals] == [0, 1, 2]
    assert jiwer.cer([sentences[0], sentences[2], sentences[1]], [e.text for e in finals]) < 0.05
    second = (4000 + len(audio[0]) + len(gap)) / 16000  # where the second sentence starts
    assert finals[0].end < second - 1.0 < finals[1].start <= second < finals[1].end < finals[2].start


@requires_espeak
def test_max_utterance_cuts_long_speech(tiny_streaming_checkpoint):
    audio = torch.cat(tiny_streaming_checkpoint.audio[:2])
    recognizer = Recognizer(tiny_streaming_checkpoint.path, endpoint=EndpointConfig(max_utterance=1.0))
    finals = [e for e in play(recognizer, audio, random.Random(4)) if e.kind == "final"]
    print([(e.text, round(e.start, 3), round(e.end, 3)) for e in finals])
    assert len(finals) >= 3  # 3.5 s of speech, at most 1 s each
    for a, b in zip(finals, finals[1:]):
        # each runs its full second; the next starts where it stopped (frames' windows overlap by 15 ms)
        assert a.start + 0.95 <= b.start and a.start < a.end <= b.start + 0.015 + 1e-9


@requires_espeak
def test_recognizer_searches_with_the_lm_its_checkpoint_carries(tiny_streaming_checkpoint, tmp_path):
    """A streaming checkpoint that carries a word LM and lexicon (`asr attach-lm`): each final is
    what the offline beam search finds on the whole utterance, searched chunk by chunk with no
    second pass; a partial is the search's words, then the greedy path's words the search has not
    yet settled; greedy=True steps around the LM."""
    pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text (asr[lm])")
    import dataclasses
    import warnings

    from asr.checkpoint import write_checkpoint
    from asr.decoding import read_language_model, write_lexicon
    from asr.ngram import build_arpa
    from asr.transcribe import Transcriber

    # the lexicon lacks the words of sentence 0: the search must replace them
    sentences = [s.upper() for s in tiny_streaming_checkpoint.sentences]
    other_words = {w for s in sentences[1:] for w in s.split()}
    write_lexicon(sorted(other_words), tmp_path / "lexicon.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny corpus: fixed fallback discounts
        build_arpa(sentences[1:], tmp_path / "lm.arpa", order=2)
    language_model = read_language_model(tmp_path / "lm.arpa", tmp_path / "lexicon.txt", lm_weight=0.5, word_score=1.5)
    attached = tmp_path / "attached.pt"
    write_checkpoint(attached, dataclasses.replace(load_checkpoint(tiny_streaming_checkpoint.path), language_model=language_model))

    offline_search, offline_greedy = Transcriber(attached), Transcriber(attached, greedy=True)
    recognizer, greedy = Recognizer(attached), Recognizer(attached, greedy=True)
    rng = random.Random(5)
    tails = 0  # partials that show words the search has not settled (outside the lexicon)
    for n, audio in enumerate(tiny_streaming_checkpoint.audio):
        expected = offline_search.transcribe_audio(audio).text
        events = play(recognizer, audio, rng)
        assert [e.text for e in events if e.kind == "final"] == [expected], events
        assert set(expected.split()) <= other_words
        if n == 0:
            assert expected and expected != offline_greedy.transcribe_audio(audio).text
        greedy_words = offline_greedy.transcribe_audio(audio).text.split()
        partials = [e.text.split() for e in events if e.kind == "partial"]
        assert partials and all(search_then_greedy(p, other_words, greedy_words) for p in partials), partials
        tails += sum(not set(p) <= other_words for p in partials)
        assert all(0 < e.end <= len(audio) / 16000 for e in events)
        finals = [e.text for e in play(greedy, audio, rng) if e.kind == "final"]
        assert finals == [offline_greedy.transcribe_audio(audio).text]
    assert tails


def search_then_greedy(words: list[str], lexicon: set[str], greedy_words: list[str]) -> bool:
    """Whether ``words`` are lexicon words followed by a run of consecutive greedy words, the last
    of which may still be growing."""
    def greedy_run(tail: list[str]) -> bool:
        return not tail or any(
            greedy_words[i : i + len(tail) - 1] == tail[:-1] and greedy_words[i + len(tail) - 1].startswith(tail[-1])
            for i in range(len(greedy_words) - len(tail) + 1)
        )

    return any(set(words[:split]) <= lexicon and greedy_run(words[split:]) for split in range(len(words) + 1))


def test_recognizer_rejects_non_streaming_checkpoint(tmp_path):
    path = tmp_path / "blstm.pt"
    save_checkpoint(path, build_model("blstm_ctc", {"hidden_size": 8, "num_layers": 1}, verbose=False), "blstm_ctc", Tokenizer())
    with pytest.raises(CheckpointError, match="blstm_ctc model cannot stream"):
        Recognizer(path)


@requires_espeak
def test_cli_stream_file(tiny_streaming_checkpoint, tmp_path):
    """`asr stream --file` (not a terminal): one final per line, nothing else on stdout."""
    import soundfile as sf

    audio = tiny_streaming_checkpoint.audio
    path = tmp_path / "two.wav"
    sf.write(path, torch.cat([audio[3], torch.zeros(20000), audio[0]]).numpy(), 16000)
    result = subprocess.run(
        [sys.executable, "-m", "asr", "stream", "--model", str(tiny_streaming_checkpoint.path), "--file", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    sentences = tiny_streaming_checkpoint.sentences
    assert jiwer.cer([sentences[3].upper(), sentences[0].upper()], result.stdout.splitlines()) < 0.05
    assert "2 utterance(s) finalised" in result.stderr


def test_decode_manifest_streamed_in_chunks(tiny_streaming_checkpoint, tmp_path):
    """`asr decode --chunk-ms`: each utterance through the Recognizer gives the memorised text,
    the same as the offline decode of the same model; a bad file is counted, not fatal."""
    import soundfile as sf

    from asr.data.manifest import write_manifest
    from asr.evaluate import decode_manifest

    entries = []
    for i, audio in enumerate(tiny_streaming_checkpoint.audio):
        sf.write(tmp_path / f"{i}.wav", audio.numpy(), 16000)
        entries.append({"id": f"u{i}", "audio": str(tmp_path / f"{i}.wav"), "duration": len(audio) / 16000, "speaker": "s",
                        "text": tiny_streaming_checkpoint.sentences[i].upper()})
    (tmp_path / "empty.wav").write_bytes(b"")
    entries.append({"id": "bad", "audio": str(tmp_path / "empty.wav"), "duration": 1.0, "text": "X", "speaker": "s"})
    write_manifest(tmp_path / "m.jsonl", entries)
    for name, chunk_ms in (("streamed", 80), ("offline", None)):
        failures = decode_manifest(tiny_streaming_checkpoint.path, tmp_path / "m.jsonl", tmp_path / name, chunk_ms=chunk_ms)
        assert failures == 1
    streamed = (tmp_path / "streamed").read_text().splitlines()
    assert [line.split("\t")[0] for line in streamed] == ["u0", "u1", "u2", "u3"]
    refs = [e["text"] for e in entries[:4]]
    assert jiwer.cer(refs, [line.split("\t")[1] for line in streamed]) < 0.05
    assert streamed == (tmp_path / "offline").read_text().splitlines()


@requires_espeak
def test_tiny_streaming_model_memorised(tiny_streaming_checkpoint):
    print(
        f"streaming overfit: CER {tiny_streaming_checkpoint.cer:.4f} after {tiny_streaming_checkpoint.steps} steps, "
        f"{tiny_streaming_checkpoint.seconds:.1f} s"
    )
    assert tiny_streaming_checkpoint.cer < 0.05
