"""Streams stepped in batches (asr.batch): each stream's log-probs and transcript are those it
gets alone, whatever the other streams do (join, leave, differ in length, arrive in other chunks)."""

from __future__ import annotations

import asyncio
import json
import random
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asr.batch import Batcher, Lane, Streams
from asr.streaming import Recognizer

# a batched product may round differently from one of a single row: log-probs agree to this
TOLERANCE = 1e-4


def utterances(checkpoint, rng: random.Random, count: int) -> list[torch.Tensor]:
    """Streams of one or two memorised sentences with pauses of random length (some long enough
    for an endpoint), so that they differ in length and in where their endpoints fall."""
    audio = checkpoint.audio
    streams = []
    for _ in range(count):
        parts = [torch.zeros(rng.randint(0, 8000))]
        for _ in range(rng.randint(1, 2)):
            parts += [audio[rng.randrange(len(audio))], torch.zeros(rng.randint(2000, 20000))]
        streams.append(torch.cat(parts))
    return streams


def finals(events) -> list[tuple[str, float, float]]:
    return [(e.text, e.start, e.end) for e in events if e.kind == "final"]


def alone(session, audio: torch.Tensor, chunks: list[int]):
    events, start = [], 0
    for size in chunks:
        events += session.accept_audio(audio[start : start + size])
        start += size
    return events + session.finish()


def chunk_sizes(rng: random.Random, samples: int) -> list[int]:
    sizes = []
    while sum(sizes) < samples:
        sizes.append(rng.choice([160, 333, 1280, 1280, 2560, 4000]))
    return sizes


def test_batched_step_gives_each_stream_its_own_log_probs(tiny_streaming_checkpoint):
    """Five streams with different features stepped as one batch, chunk after chunk (from states
    of the same shapes), equal each stream stepped alone; stack and split are inverses."""
    stepper = Recognizer(tiny_streaming_checkpoint.path, greedy=True).stepper
    feats = np.random.default_rng(0).standard_normal((5, 41, 80)).astype(np.float32)
    steps = [(0, 1), (1, 8), (9, 12), (21, 12), (33, 8)]  # 1, then whole output frames (as a Lane steps)
    singles = []
    for row in feats:
        state, out = stepper.initial_state(), []
        for start, size in steps:
            log_probs, state = stepper.step(row[None, start : start + size], state)
            out.append(log_probs)
        singles.append(np.concatenate(out + [stepper.flush(state)], axis=1)[0])
    state, out = stepper.stack([stepper.initial_state() for _ in range(5)]), []
    for start, size in steps:
        log_probs, state = stepper.step(feats[:, start : start + size], state)
        out.append(log_probs)
    batched = np.concatenate(out + [stepper.flush(state)], axis=1)
    parts = stepper.split(state)
    assert len(parts) == 5 and all(part.hidden.shape[1] == 1 and stepper.shapes(part) == stepper.shapes(parts[0]) for part in parts)
    again = stepper.stack(parts)
    assert torch.equal(again.hidden, state.hidden) and torch.equal(again.lookahead, state.lookahead)
    for single, row in zip(singles, batched):
        assert single.shape == row.shape and len(single) == 11
        assert np.abs(single - row).max() < TOLERANCE
        assert np.array_equal(single.argmax(-1), row.argmax(-1))


@pytest.mark.parametrize("runtime, max_batch", [("torch", 4), ("torch", 1), ("onnx", 4)])
def test_interleaved_streams_get_the_finals_they_get_alone(tiny_streaming_checkpoint, runtime, max_batch, tmp_path):
    """Six streams of different lengths join at different times, in chunks of random sizes,
    one leaves mid-stream: each remaining stream's finals (text, start, end) are its own alone,
    with the PyTorch model and with its ONNX export."""
    if runtime == "torch":
        recognizer = Recognizer(tiny_streaming_checkpoint.path, greedy=True)
        new_session = recognizer.new_session
    else:
        pytest.importorskip("onnxruntime")
        from asr.export import export_checkpoint
        from asr.runtime import ExportedModel, StreamingRecognizer

        export_checkpoint(tiny_streaming_checkpoint.path, tmp_path / "export")
        exported = ExportedModel(tmp_path / "export")
        recognizer = StreamingRecognizer(exported)
        new_session = lambda: StreamingRecognizer(exported)  # noqa: E731
    rng = random.Random(max_batch)
    audios = utterances(tiny_streaming_checkpoint, rng, 6)
    chunks = [chunk_sizes(rng, len(a)) for a in audios]
    expected = [finals(alone(new_session(), a.numpy(), c)) for a, c in zip(audios, chunks)]
    assert sum(len(e) for e in expected) >= 6 and all(text for e in expected for text, _, _ in e)

    batcher = Batcher(recognizer, max_batch)
    sizes = []  # streams per call of the model
    stepper = batcher.stepper
    batcher.stepper = SimpleNamespace(step=lambda feats, state: (sizes.append(len(feats)), stepper.step(feats, state))[1],
                                      stack=stepper.stack, split=stepper.split, shapes=stepper.shapes,
                                      steppable=stepper.steppable)
    lanes: dict[int, Lane] = {}
    taken = {n: 0 for n in range(len(audios))}
    got, joined, rounds = {}, 0, 0
    while len(got) < len(audios):
        if joined < len(audios) and (rounds % 3 == 0 or not lanes):
            lanes[joined] = Lane(new_session())
            joined += 1
        for n, lane in lanes.items():
            if taken[n] < len(chunks[n]):
                start = sum(chunks[n][: taken[n]])
                lane.accept_audio(audios[n][start : start + chunks[n][taken[n]]].numpy())
                taken[n] += 1
        if rounds == 12:  # stream 1 leaves mid-stream: dropped, as a server drops a closed connection
            del lanes[1]
            got[1] = None
        while stepped := batcher.step(list(lanes.values())):
            for s in stepped:
                s.lane.consume(s.log_probs)
        for n in [n for n, lane in lanes.items() if taken[n] == len(chunks[n])]:
            lanes[n].finish()
            got[n] = finals(lanes.pop(n).events)
        rounds += 1
    assert max(sizes) == max_batch  # streams were stepped together, up to max_batch
    for n in range(len(audios)):
        if n != 1:
            assert got[n] == expected[n], n


@pytest.mark.parametrize("decoding", ["greedy", "search"])
def test_streams_stepped_by_groups_get_their_own_events(tiny_streaming_checkpoint, decoding):
    """asr serve's scheduler (Streams: two groups, each stepping its streams together; a beam
    search runs in the pool between steps): four streams fed concurrently in random chunks, at
    their own paces, get the finals they get alone; then each stream's outbox ends with None."""
    pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text (asr[lm])")
    from asr.decoding import BeamSearchOptions

    recognizer = Recognizer(tiny_streaming_checkpoint.path, **({"greedy": True} if decoding == "greedy" else
                                                                {"beam": BeamSearchOptions(beam_size=8)}))
    rng = random.Random(7)
    audios = utterances(tiny_streaming_checkpoint, rng, 4)
    chunks = [chunk_sizes(rng, len(a)) for a in audios]
    expected = [finals(alone(recognizer.new_session(), a, c)) for a, c in zip(audios, chunks)]

    async def feed(streams: Streams, n: int) -> list:
        await asyncio.sleep(0.05 * n)  # they join one after another
        stream = streams.open(recognizer.new_session(), 16000, 16000 * 30)
        start = 0
        for size in chunks[n]:
            stream.put(audios[n][start : start + size].numpy())
            start += size
            await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
        stream.close()
        events = []
        while (event := await stream.outbox.get()) is not None:
            assert not isinstance(event, BaseException), event
            events.append(event)
        streams.drop(stream)
        return events

    async def run() -> list:
        with ThreadPoolExecutor(2) as pool:
            streams = Streams(recognizer, workers=2, max_batch=8, pool=pool)
            streams.start()
            try:
                return await asyncio.wait_for(asyncio.gather(*(feed(streams, n) for n in range(len(audios)))), 120)
            finally:
                streams.stop()

    got = asyncio.run(run())
    for n, events in enumerate(got):
        assert finals(events) == expected[n], n
        assert all(e.latency >= 0 for e in events)
    assert np.mean([len(e) for e in expected]) >= 1


def test_exported_step_graph_steps_a_batch_of_streams(tmp_path):
    """The ONNX step graph's batch axis is dynamic: three streams in one call give each the
    log-probs it gets alone (fp32: the same numbers; int8 quantizes activations per call, so
    over the batch's range: close, not equal)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from asr.checkpoint import save_checkpoint
    from asr.export import ExportConfig, export_checkpoint
    from asr.models import build_model
    from asr.text import Tokenizer

    torch.manual_seed(0)
    model = build_model("streaming_gru", {"layer_norm": True, "hidden_size": 64, "num_layers": 2}, verbose=False)
    save_checkpoint(tmp_path / "model.pt", model, "streaming_gru", Tokenizer())
    feats = np.random.default_rng(0).standard_normal((3, 4, 8, model.config.n_mels)).astype(np.float32)
    for quantize, tolerance in ((None, 0.0), ("int8", 0.1)):
        export_checkpoint(tmp_path / "model.pt", tmp_path / str(quantize), ExportConfig(quantize=quantize))
        directory = tmp_path / str(quantize)
        session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        shapes = json.loads((directory / "model.json").read_text())["streaming"]["state"]  # batch 1

        def run(chunks: np.ndarray) -> np.ndarray:
            batch = len(chunks)
            state = {name: np.zeros(shape, np.float32).repeat(batch, axis=1 if name == "hidden" else 0)
                     for name, shape in shapes.items()}
            out = []
            for chunk in range(chunks.shape[1]):
                log_probs, *new = session.run(None, {"feats": chunks[:, chunk], "valid": np.full(batch, 2), **state})
                state = dict(zip(shapes, new))
                out.append(log_probs)
            return np.concatenate(out, axis=1)

        batched = run(feats)
        for stream in range(3):
            assert np.abs(batched[stream] - run(feats[stream : stream + 1])[0]).max() <= tolerance, quantize


def test_features_of_many_streams_in_one_call_are_each_streams_own():
    """StreamingLogMel.accept_audio_many: chunks of any size (none, shorter than a window, many
    frames) for 16 streams at once give each stream its own frames, as one call each would."""
    from asr.features import StreamingLogMel

    torch.manual_seed(0)
    rng = random.Random(0)
    alone, together = [StreamingLogMel() for _ in range(16)], [StreamingLogMel() for _ in range(16)]
    frames = 0
    for _ in range(12):
        chunks = [torch.randn(rng.choice([0, 1, 160, 399, 1280, 4000])) for _ in range(16)]
        expected = [stream.accept_audio(chunk) for stream, chunk in zip(alone, chunks)]
        for want, got in zip(expected, StreamingLogMel.accept_audio_many(together, chunks)):
            assert got.shape == want.shape
            assert torch.allclose(got, want, rtol=0, atol=1e-5)  # one FFT call for all may round differently
            frames += got.shape[1]
    assert frames > 1000 and all(torch.equal(a.tail, b.tail) for a, b in zip(alone, together))
