"""The streaming core (asr.endpoint) over a stand-in model: endpoints, replay, events, and
several streams stepped as one batch."""

import numpy as np
import pytest

from asr.endpoint import EndpointConfig, Endpointer, StreamingSession, StreamTiming, step_utterance
from asr.text import Tokenizer

TOK = Tokenizer()
TIMING = StreamTiming(stride=1, hop=1, win=1, sample_rate=100)  # a "sample" is a frame of 10 ms
ENDPOINT = EndpointConfig(trailing_silence=0.05, max_utterance=20.0, silence_replay=0.02)


class EchoStepper:
    """Each feature frame's first value is the token its output frame emits; the state counts
    the frames each stream has seen since its (re)start, batch first."""

    def initial_state(self, batch=1):
        return {"frames": np.zeros((batch, 1), np.int64)}

    def step(self, feats, state):
        tokens = feats[:, :, 0].astype(int)
        log_probs = np.full((*tokens.shape, len(TOK)), -10.0, np.float32)
        np.put_along_axis(log_probs, tokens[:, :, None], 0.0, axis=2)
        return log_probs, {"frames": state["frames"] + feats.shape[1]}

    def flush(self, state):
        return np.zeros((state["frames"].shape[0], 0, len(TOK)), np.float32)


class FrameFrontend:
    """Audio samples are feature frames here: one sample -> one frame holding its token."""

    def reset(self):
        pass

    def accept_audio(self, chunk):
        feats = np.zeros((len(chunk), 4), np.float32)
        feats[:, 0] = chunk
        return feats


def frames_of(text: str, silence: int = 0) -> np.ndarray:
    """Each character held for two frames, then ``silence`` blank frames."""
    return np.array([t for t in TOK.encode(text) for _ in range(2)] + [0] * silence, np.float32)


def session() -> StreamingSession:
    return StreamingSession(FrameFrontend(), EchoStepper(), Endpointer(TOK, TIMING, 4, ENDPOINT, clock=lambda: 0.0))


def test_endpoints_split_a_stream_into_finals_with_their_times():
    audio = np.concatenate([frames_of("HI", silence=8), frames_of("OK", silence=2)])
    recognizer = session()
    events = [e for start in range(len(audio)) for e in recognizer.accept_audio(audio[start : start + 1])]
    events += recognizer.finish()
    finals = [e for e in events if e.kind == "final"]
    assert [(e.text, e.utterance) for e in finals] == [("HI", 0), ("OK", 1)]
    assert [e.kind for e in events if e.utterance == 0][-1] == "final"  # partials first
    assert any(e.kind == "partial" and e.text == "H" for e in events)
    # the second utterance starts after the endpoint (the 5th blank frame after "HI"), not at 0
    assert finals[1].start == pytest.approx((4 + 5) / 100)
    assert finals[0].words == [("HI", pytest.approx(1 / 100), pytest.approx((2 + 1) / 100))]


def test_silence_before_any_text_restarts_without_an_event_and_replays():
    audio = np.concatenate([np.zeros(12, np.float32), frames_of("A", silence=6)])
    recognizer = session()
    events = recognizer.accept_audio(audio) + recognizer.finish()
    assert [(e.kind, e.text, e.utterance) for e in events] == [("final", "A", 0)]
    # restarts at frames 3, 6 and 9 (each 5 blank frames re-reading the last 2): "A" is at 12
    assert events[0].start == pytest.approx(9 / 100)
    assert events[0].words == [("A", pytest.approx(13 / 100), pytest.approx(13 / 100))]  # one emission


def test_streams_stepped_as_one_batch_give_each_stream_its_own_events():
    """A server's loop: each stream's core takes its features, one batched model call steps them
    all, each core gets its rows of log-probs back (replays, rare, step alone)."""
    streams = [frames_of("HI", silence=8), frames_of("YES", silence=1), frames_of("NO", silence=9)]
    length = max(map(len, streams))
    streams = [np.pad(s, (0, length - len(s))) for s in streams]
    alone = []
    for audio in streams:
        recognizer = session()
        alone.append([e for k in range(0, length, 4) for e in recognizer.accept_audio(audio[k : k + 4])]
                     + recognizer.finish())
    stepper, frontend = EchoStepper(), FrameFrontend()
    cores = [Endpointer(TOK, TIMING, 4, ENDPOINT, clock=lambda: 0.0) for _ in streams]
    states = [stepper.initial_state() for _ in streams]
    together: list[list] = [[] for _ in streams]
    for k in range(0, length, 4):
        feats = []
        for core, audio in zip(cores, streams):
            core.audio_arrived(len(audio[k : k + 4]))
            feats.append(core.add_features(frontend.accept_audio(audio[k : k + 4])))
        batch_state = {"frames": np.concatenate([s["frames"] for s in states])}
        log_probs, batch_state = stepper.step(np.stack(feats), batch_state)
        for i, core in enumerate(cores):
            states[i] = {"frames": batch_state["frames"][i : i + 1]}
            replay = core.add_log_probs(log_probs[i])
            while replay is not None:  # an endpoint: the rest of the chunk into a fresh state, alone
                replayed, states[i] = stepper.step(replay[None], stepper.initial_state())
                replay = core.add_log_probs(replayed[0])
            together[i] += core.take_events(last=False)
    for i, core in enumerate(cores):
        together[i] += step_utterance(stepper, states[i], core, np.zeros((0, 4), np.float32), last=True)[0]
    key = [[(e.kind, e.text, e.utterance, e.start, e.end, e.words) for e in events] for events in alone]
    assert [[(e.kind, e.text, e.utterance, e.start, e.end, e.words) for e in events] for events in together] == key
    assert [[e.text for e in events if e.kind == "final"] for events in together] == [["HI"], ["YES"], ["NO"]]
