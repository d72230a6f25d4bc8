"""The streaming core, in numpy: log-probs of a stream in, partial and final :class:`Event` s out.

Both streaming recognizers (:class:`asr.streaming.Recognizer` on a PyTorch model,
:class:`asr.runtime.StreamingRecognizer` on an ONNX export) are a frontend, a :class:`Stepper`
and this core. The core never calls the model: :func:`step_utterance` does, so a server can
step many streams' models at once and hand each stream's log-probs to its own
:class:`Endpointer`.

Decoding is greedy, or a search (:class:`Search`, e.g. :class:`asr.decoding.BeamSearchDecoder`
with the checkpoint's word LM) extended chunk by chunk so that the final hypothesis costs no
second pass. A partial shows the search's best words and, after them, the greedy path's letters
of the word being spoken, which the search does not settle into a word until it has heard the
word out (a word then shows as it is spoken, not up to half a second later). Endpoints read the
greedy path (runs of blank), which a search does not change; an event's time is that of its
own text.

An utterance ends at an *endpoint* (:class:`EndpointConfig`): enough trailing silence after
some text, or a maximum length. Its final hypothesis is emitted, and the model and search
start afresh on the following audio; the audio stream itself is never cut, so the features
the new utterance needs are replayed into a fresh model state and no sample is lost or doubled.

Never import torch here: the ONNX runtime uses this module.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from asr.alignment import word_spans
from asr.text import Tokenizer


@dataclass
class EndpointConfig:
    """When an utterance is final. Silence is read off the model's output: a run of output
    frames whose most probable token is the CTC blank (robust to background noise that an
    energy detector would take for speech)."""

    trailing_silence: float = 0.8  # seconds of blank frames after some text end the utterance
    max_utterance: float = 20.0  # seconds: an utterance this long ends even mid-speech
    # Before any text, a blank run of trailing_silence restarts the model without an event
    # (it never runs for long on silence it was not trained on) and re-reads the last
    # `silence_replay` seconds, where a word may have begun without a character yet.
    silence_replay: float = 0.3


@dataclass
class Event:
    # "partial" (the text so far, only when it changed) or "final" (the utterance's text, which
    # the LM's search may leave empty where the greedy path heard a stray character)
    kind: str
    text: str
    utterance: int  # 0, 1, ... within the session
    start: float  # stream seconds where the utterance's audio starts
    end: float  # stream seconds where the audio of the text's last character ends
    latency: float  # wall seconds from the arrival of the chunk holding `end` to this event
    # (word, start, end) in stream seconds: the audio up to the output frames that emitted the
    # word's first and last characters, read as `end` is (CTC emits a character once it has
    # heard it, so `start` is late by up to a character)
    words: list[tuple[str, float, float]] = field(default_factory=list)


class Stepper(Protocol):
    """A streaming acoustic model on numpy arrays. Every array of the state has the batch in
    its first dimension, but ``hidden`` (layers first, as ``nn.GRU``), so that the states of
    several streams can be stacked into one batched step.

    ``step`` over consecutive chunks, then ``flush``, gives the log-probs of ``forward`` over
    the whole utterance (to float tolerance)."""

    def initial_state(self) -> Any: ...

    def step(self, feats: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """``(batch, frames, n_mels)`` -> log-probs ``(batch, frames', vocab)`` of the output frames
        whose look-ahead has arrived, and the new state."""

    def flush(self, state: Any) -> np.ndarray:
        """End of the utterance: log-probs ``(batch, frames', vocab)`` of the frames still waiting."""


class Search(Protocol):
    """An incremental CTC search (:class:`asr.decoding.BeamSearchDecoder`)."""

    def begin(self) -> None: ...

    def step(self, log_probs: np.ndarray) -> None: ...

    def best(self) -> Any: ...  # a Hypothesis: text, tokens, frames

    def end(self) -> Any: ...


@dataclass
class StreamTiming:
    """How output frames map to the stream's samples."""

    stride: int  # feature frames per output frame
    hop: int = 160  # samples per feature frame
    win: int = 400  # samples in a feature frame's window
    sample_rate: int = 16000

    @property
    def frame_seconds(self) -> float:
        return self.stride * self.hop / self.sample_rate


class Endpointer:
    """One stream's endpointing, replay and events over the log-probs of its utterances.

    Per chunk of audio: :meth:`audio_arrived`; :meth:`add_features` with the chunk's features,
    which returns the features to step; :meth:`add_log_probs` with their log-probs, which
    returns None or, at an endpoint, the features to replay into a fresh model state (step
    them and call :meth:`add_log_probs` again); then :meth:`take_events`.
    :func:`step_utterance` is that loop for one stream.
    """

    def __init__(self, tokenizer: Tokenizer, timing: StreamTiming, n_mels: int,
                 endpoint: EndpointConfig | None = None, clock: Callable[[], float] = time.perf_counter,
                 search: Search | None = None) -> None:
        self.tokenizer = tokenizer
        self.timing = timing
        self.n_mels = n_mels
        self.endpoint = endpoint or EndpointConfig()
        self.clock = clock
        self.search = search
        self.frame_seconds = timing.frame_seconds
        self._replay_frames = round(self.endpoint.silence_replay / self.frame_seconds)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next chunk starts a new stream at time 0."""
        self._samples = 0  # samples received
        self._chunks: deque[tuple[int, float]] = deque()  # (end sample, arrival time) per chunk
        self._utterance = 0  # index of the current utterance (those with text count)
        self._events: list[Event] = []
        self._start_utterance(0)

    def _start_utterance(self, first_frame: int) -> None:
        self._first_frame = first_frame  # stream index of the utterance's first feature frame
        # the features the next utterance may need at an endpoint, replayed into a fresh model:
        # those no decoded output frame has seen yet, and the last `silence_replay` before them
        self._pending = np.zeros((0, self.n_mels), np.float32)
        self._pending_start = 0
        self._decoded = 0  # output frames decoded
        self._last_id = self.tokenizer.blank_id
        self._greedy = ""  # greedy hypothesis, extended character by character
        self._greedy_frame = 0  # output frame of its last character
        # its words: [output frame of the first character, text, output frame of the last]
        self._greedy_words: list[list] = []
        self._text = ""  # the hypothesis shown: the search's best, else the greedy one
        self._words: list[tuple[str, int, int]] = []  # its words: (text, first frame, last frame)
        self._last_char_frame = 0  # output frame of the shown hypothesis's last character
        self._blank_run = 0
        self._partial = ""
        start_sample = first_frame * self.timing.hop
        while self._chunks and self._chunks[0][0] <= start_sample:
            self._chunks.popleft()
        if self.search is not None:
            self.search.begin()

    def audio_arrived(self, samples: int) -> None:
        """A chunk of ``samples`` has arrived (now, by the clock): event latencies count from here."""
        self._samples += samples
        self._chunks.append((self._samples, self.clock()))

    def add_features(self, feats: np.ndarray) -> np.ndarray:
        """The chunk's features ``(frames, n_mels)``, kept for a replay; returns them, to step."""
        self._pending = np.concatenate([self._pending, feats])
        return feats

    def add_log_probs(self, log_probs: np.ndarray) -> np.ndarray | None:
        """Decode the log-probs ``(frames, vocab)`` of the features stepped. Returns None, or at an
        endpoint the features ``(frames, n_mels)`` to replay into a fresh model state (then
        given to :meth:`add_log_probs` in their turn)."""
        cut = self._decode(log_probs)
        if cut is None:
            return None
        # endpoint at output frame `cut`, which saw features up to stride * cut
        back = 0 if self._greedy else min(self._replay_frames, self._blank_run // 2)
        start = self.timing.stride * (cut - back) + 1
        feats = self._pending[start - self._pending_start :]
        self._utterance += bool(self._greedy)
        self._start_utterance(self._first_frame + start)
        return self.add_features(feats)

    def take_events(self, last: bool) -> list[Event]:
        """The events since the last call, oldest first. ``last``: the stream has ended, the
        utterance is final (then :meth:`reset`)."""
        if last:
            if self._greedy:
                self._events.append(self._final())
        else:
            keep = max(0, self.timing.stride * (self._decoded - 1 - self._replay_frames) + 1)
            self._pending = self._pending[keep - self._pending_start :]
            self._pending_start = keep
            if self._text != self._partial:
                self._partial = self._text
                self._events.append(self._event("partial"))
        events, self._events = self._events, []
        if last:
            self.reset()
        return events

    def _decode(self, log_probs: np.ndarray) -> int | None:
        """CTC over new output frames ``(frames, vocab)``, continuing the utterance's search.
        Returns the frame at which an endpoint finalised the utterance, or None."""
        blank = self.tokenizer.blank_id
        cut = None
        for index, token in enumerate(log_probs.argmax(axis=-1).tolist()):
            frame = self._decoded
            self._decoded += 1
            if token == blank:
                self._blank_run += 1
            else:
                self._blank_run = 0
                if token != self._last_id:
                    char = self.tokenizer.tokens[token]
                    if char != " " and self._greedy[-1:] in ("", " "):
                        self._greedy_words.append([frame, char, frame])
                    elif char != " ":
                        self._greedy_words[-1][1] += char
                        self._greedy_words[-1][2] = frame
                    self._greedy += char
                    self._greedy_frame = frame
            self._last_id = token
            silence = self._blank_run * self.frame_seconds >= self.endpoint.trailing_silence
            if silence or self._decoded * self.frame_seconds >= self.endpoint.max_utterance:
                cut = frame
                log_probs = log_probs[: index + 1]
                break
        if self.search is not None:
            self.search.step(log_probs)
            if cut is None:
                self._show(self.search.best(), greedy_tail=True)
        else:
            self._text, self._last_char_frame = self._greedy, self._greedy_frame
            self._words = [(text, first, last) for first, text, last in self._greedy_words]
        if cut is not None and self._greedy:
            self._events.append(self._final())
        return cut

    def _final(self) -> Event:
        if self.search is not None:
            self._show(self.search.end())
        return self._event("final")

    def _show(self, hypothesis: Any, greedy_tail: bool = False) -> None:
        """Show the search's ``hypothesis``; with ``greedy_tail``, followed by the greedy path's
        words that began after the hypothesis's last character."""
        last = hypothesis.frames[-1] if hypothesis.frames else -1
        tail = [word for word in self._greedy_words if word[0] > last] if greedy_tail else []
        self._text = " ".join([hypothesis.text, *(text for _, text, _ in tail)]).strip()
        self._last_char_frame = self._greedy_frame if tail else max(last, 0)
        words = hypothesis.text.split()
        space = self.tokenizer.tokens.index(" ")
        chars = [(token, frame) for token, frame in zip(hypothesis.tokens, hypothesis.frames) if token != space]
        spans = word_spans(words, chars, self.tokenizer) if chars else []
        self._words = [(word, span[0][1], span[-1][1]) for word, span in zip(words, spans)]
        self._words += [(text, first, last) for first, text, last in tail]

    def _event(self, kind: str) -> Event:
        # the last character's own audio (before look-ahead) ends with the window of the
        # newest feature frame its output frame saw
        timing = self.timing

        def end_sample(frame: int) -> int:
            return (self._first_frame + timing.stride * frame) * timing.hop + timing.win

        end = end_sample(self._last_char_frame)
        arrival = next((t for chunk_end, t in self._chunks if chunk_end >= end), self._chunks[-1][1])
        return Event(
            kind=kind,
            text=self._text,
            utterance=self._utterance,
            start=self._first_frame * timing.hop / timing.sample_rate,
            end=end / timing.sample_rate,
            latency=self.clock() - arrival,
            words=[(text, end_sample(first) / timing.sample_rate, end_sample(last) / timing.sample_rate)
                   for text, first, last in self._words],
        )


def step_utterance(stepper: Stepper, state: Any, endpointer: Endpointer, feats: np.ndarray,
                   last: bool) -> tuple[list[Event], Any]:
    """One stream's chunk of features ``(frames, n_mels)`` through its model and endpointer,
    replaying into a fresh state at each endpoint; ``last``: the end of the stream. Returns the
    events and the model state for the next chunk."""
    feats = endpointer.add_features(feats)
    while True:
        log_probs, state = stepper.step(feats[None], state)
        log_probs = log_probs[0]
        if last:
            log_probs = np.concatenate([log_probs, stepper.flush(state)[0]])
        feats = endpointer.add_log_probs(log_probs)
        if feats is None:
            break
        state = stepper.initial_state()
    return endpointer.take_events(last), state


class StreamingSession:
    """A streaming recognition session over one continuous audio stream: a frontend (audio
    chunks -> features ``(frames, n_mels)``, with ``accept_audio`` and ``reset``), a
    :class:`Stepper` and an :class:`Endpointer`.

    >>> for chunk in microphone:  # doctest: +SKIP
    ...     for event in session.accept_audio(chunk):
    ...         print(event.kind, event.text)
    >>> session.finish()  # doctest: +SKIP
    """

    def __init__(self, frontend: Any, stepper: Stepper, endpointer: Endpointer) -> None:
        self.frontend = frontend
        self.stepper = stepper
        self.endpointer = endpointer
        self.reset()

    @property
    def clock(self) -> Callable[[], float]:
        """Wall clock for latencies, in seconds (a server sets its own)."""
        return self.endpointer.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.endpointer.clock = clock

    def reset(self) -> None:
        """Forget everything: the next chunk starts a new stream at time 0."""
        self.frontend.reset()
        self.endpointer.reset()
        self.state = self.stepper.initial_state()

    def accept_audio(self, chunk: Any) -> list[Event]:
        """Feed mono float32 16 kHz samples ``(samples,)`` of any length; returns the new events,
        oldest first."""
        self.endpointer.audio_arrived(len(chunk))
        return self._run(self.frontend.accept_audio(chunk), last=False)

    def finish(self) -> list[Event]:
        """End of the stream: decode what the look-ahead held back and finalise; then :meth:`reset`."""
        events = self._run(np.zeros((0, self.endpointer.n_mels), np.float32), last=True)
        self.reset()
        return events

    def _run(self, feats: np.ndarray, last: bool) -> list[Event]:
        events, self.state = step_utterance(self.stepper, self.state, self.endpointer, feats, last)
        return events


def stream_audio(session: StreamingSession, audio: Any, chunk_samples: int) -> str:
    """Feed ``audio`` ``(samples,)`` through ``session`` in chunks of ``chunk_samples``, as a
    microphone would deliver it, and return its final texts joined by spaces."""
    finals = []
    for start in range(0, len(audio), chunk_samples):
        finals += [e.text for e in session.accept_audio(audio[start : start + chunk_samples]) if e.kind == "final"]
    finals += [e.text for e in session.finish() if e.kind == "final"]
    return " ".join(text for text in finals if text)
