"""Streaming recognition: feed audio chunks as they arrive, get partial and final hypotheses.

audio chunks -> :class:`~asr.features.StreamingLogMel` -> streaming model ``step`` ->
incremental CTC decoding -> :class:`Event` s. Used by ``asr stream`` (microphone or file).

Decoding is the checkpoint's own, as offline (:class:`~asr.transcribe.Transcriber`): beam
search with the word LM it carries (``asr attach-lm``), extended chunk by chunk so that the
final hypothesis costs no second pass, else greedy. A partial shows the search's best words
and, after them, the greedy path's letters of the word being spoken, which the search does not
settle into a word until it has heard the word out (a word then shows as it is spoken, not up
to half a second later). Endpoints read the greedy path (runs of blank), which the beam search
does not change; an event's time is that of its own text.

An utterance ends at an *endpoint* (:class:`EndpointConfig`): enough trailing silence after
some text, or a maximum length. Its final hypothesis is emitted, and the model and decoder
start afresh on the following audio; the audio stream itself is never cut, so the features
the new utterance needs are replayed into the fresh model and no sample is lost or doubled.
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from asr.audio import SAMPLE_RATE
from asr.checkpoint import CheckpointError, load_checkpoint
from asr.decoding import BeamSearchDecoder, BeamSearchOptions, Hypothesis, checkpoint_decoder
from asr.features import HOP_LENGTH, WIN_LENGTH, StreamingLogMel
from asr.text import Tokenizer
from asr.alignment import word_spans


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


class Recognizer:
    """A streaming recognition session over one continuous audio stream.

    >>> recognizer = Recognizer("exp/final.pt")  # doctest: +SKIP
    >>> for chunk in microphone:  # doctest: +SKIP
    ...     for event in recognizer.accept_audio(chunk):
    ...         print(event.kind, event.text)
    >>> recognizer.finish()  # doctest: +SKIP

    Args:
        model: a checkpoint path, or a streaming model (with ``initial_state``/``step``/``flush``).
        tokenizer: the model's tokenizer (taken from the checkpoint when ``model`` is a path).
        endpoint: endpointing rules (defaults: :class:`EndpointConfig`).
        device: where the model runs.
        clock: wall clock for latencies, in seconds.
        beam: beam search options (:class:`~asr.decoding.BeamSearchOptions`), as for
            :class:`~asr.transcribe.Transcriber`; by default the checkpoint's own decoding.
        greedy: decode greedily, whatever the checkpoint carries.
    """

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        tokenizer: Tokenizer | None = None,
        endpoint: EndpointConfig | None = None,
        device: str | torch.device = "cpu",
        clock: Callable[[], float] = time.perf_counter,
        beam: BeamSearchOptions | None = None,
        greedy: bool = False,
    ) -> None:
        if greedy and beam is not None:
            raise ValueError("greedy decoding takes no beam search options")
        if isinstance(model, (str, os.PathLike)):
            ckpt = load_checkpoint(model)
            path, model, tokenizer = model, ckpt.build_model(device), ckpt.tokenizer
            dither = ckpt.training_config.get("dither", 0.0)
            if not hasattr(model, "step"):
                raise CheckpointError(f"{path}: a {ckpt.model_name} model cannot stream; train one with model=streaming_gru")
            self._new_decoder = (lambda: None) if greedy else (lambda: checkpoint_decoder(ckpt, beam))
            self.beam_decoder = self._new_decoder()
        else:
            dither = 0.0
            if not hasattr(model, "step"):
                raise ValueError(f"{type(model).__name__} cannot stream: it has no step()")
            if tokenizer is None:
                raise ValueError("a model given without its checkpoint needs its tokenizer")
            self._new_decoder = (lambda: None) if beam is None else (lambda: BeamSearchDecoder(tokenizer, beam))
            self.beam_decoder: BeamSearchDecoder | None = self._new_decoder()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.endpoint = endpoint or EndpointConfig()
        self.clock = clock
        self.device = torch.device(device)
        self.stride = model.config.time_stride  # feature frames per output frame
        self.frame_seconds = self.stride * HOP_LENGTH / SAMPLE_RATE
        self._replay_frames = round(self.endpoint.silence_replay / self.frame_seconds)
        self.frontend = StreamingLogMel(model.config.n_mels, dither).to(self.device)
        self.reset()

    def new_session(self) -> Recognizer:
        """Another session on this one's model and decoding, starting afresh: the weights and
        the word LM's tables are shared (only read, so sessions may run in different threads),
        the frontend's samples and the search are its own. For a server's streams."""
        session = copy.copy(self)
        session.frontend = StreamingLogMel(self.frontend.n_mels, self.frontend.frontend.dither).to(self.device)
        decoder = self.beam_decoder
        session.beam_decoder = decoder.fork() if decoder is not None and decoder.can_fork else self._new_decoder()
        session.reset()
        return session

    def reset(self) -> None:
        """Forget everything: the next chunk starts a new stream at time 0."""
        self.frontend.reset()
        self._samples = 0  # samples received
        self._chunks: deque[tuple[int, float]] = deque()  # (end sample, arrival time) per chunk
        self._utterance = 0  # index of the current utterance (those with text count)
        self._start_utterance(0)

    def _start_utterance(self, first_frame: int) -> None:
        self._first_frame = first_frame  # stream index of the utterance's first feature frame
        self._state = self.model.initial_state()
        # the features the next utterance may need at an endpoint, replayed into a fresh model:
        # those no decoded output frame has seen yet, and the last `silence_replay` before them
        self._pending = torch.zeros(1, 0, self.model.config.n_mels, device=self.device)
        self._pending_start = 0
        self._decoded = 0  # output frames decoded
        self._last_id = self.tokenizer.blank_id
        self._greedy = ""  # greedy hypothesis, extended character by character
        self._greedy_frame = 0  # output frame of its last character
        # its words: [output frame of the first character, text, output frame of the last]
        self._greedy_words: list[list] = []
        self._text = ""  # the hypothesis shown: the beam search's best, else the greedy one
        self._words: list[tuple[str, int, int]] = []  # its words: (text, first frame, last frame)
        self._last_char_frame = 0  # output frame of the shown hypothesis's last character
        self._blank_run = 0
        self._partial = ""
        start_sample = first_frame * HOP_LENGTH
        while self._chunks and self._chunks[0][0] <= start_sample:
            self._chunks.popleft()
        if self.beam_decoder is not None:
            self.beam_decoder.begin()

    @torch.inference_mode()
    def accept_audio(self, chunk: torch.Tensor) -> list[Event]:
        """Feed mono float32 16 kHz samples ``(samples,)`` (tensor or array) of any length;
        returns the new events, oldest first."""
        arrival = self.clock()
        chunk = torch.as_tensor(chunk, dtype=torch.float32)
        self._samples += chunk.shape[-1]
        self._chunks.append((self._samples, arrival))
        return self._run(self.frontend.accept_audio(chunk.to(self.device)), last=False)

    @torch.inference_mode()
    def finish(self) -> list[Event]:
        """End of the stream: decode what the look-ahead held back and finalise; then :meth:`reset`."""
        events = self._run(self._pending[:, :0], last=True)
        self.reset()
        return events

    def _run(self, feats: torch.Tensor, last: bool) -> list[Event]:
        events: list[Event] = []
        while True:
            self._pending = torch.cat([self._pending, feats], dim=1)
            log_probs, self._state = self.model.step(feats, self._state)
            if last:
                log_probs = torch.cat([log_probs, self.model.flush(self._state)], dim=1)
            cut = self._decode(log_probs[0], events)
            if cut is None:
                break
            # endpoint at output frame `cut`, which saw features up to stride * cut
            back = 0 if self._greedy else min(self._replay_frames, self._blank_run // 2)
            start = self.stride * (cut - back) + 1
            feats = self._pending[:, start - self._pending_start :]
            self._utterance += bool(self._greedy)
            self._start_utterance(self._first_frame + start)
        if last:
            if self._greedy:
                events.append(self._final())
        else:
            keep = max(0, self.stride * (self._decoded - 1 - self._replay_frames) + 1)
            self._pending = self._pending[:, keep - self._pending_start :]
            self._pending_start = keep
            if self._text != self._partial:
                self._partial = self._text
                events.append(self._event("partial"))
        return events

    def _decode(self, log_probs: torch.Tensor, events: list[Event]) -> int | None:
        """CTC over new output frames ``(frames, vocab)``, continuing the utterance's search.
        Returns the frame at which an endpoint finalised the utterance, or None."""
        blank = self.tokenizer.blank_id
        cut = None
        for index, token in enumerate(log_probs.argmax(dim=-1).tolist()):
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
        if self.beam_decoder is not None:
            self.beam_decoder.step(log_probs)
            if cut is None:
                self._show(self.beam_decoder.best(), greedy_tail=True)
        else:
            self._text, self._last_char_frame = self._greedy, self._greedy_frame
            self._words = [(text, first, last) for first, text, last in self._greedy_words]
        if cut is not None and self._greedy:
            events.append(self._final())
        return cut

    def _final(self) -> Event:
        if self.beam_decoder is not None:
            self._show(self.beam_decoder.end())
        return self._event("final")

    def _show(self, hypothesis: Hypothesis, greedy_tail: bool = False) -> None:
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
        def seconds(frame: int) -> float:
            return ((self._first_frame + self.stride * frame) * HOP_LENGTH + WIN_LENGTH) / SAMPLE_RATE

        end = (self._first_frame + self.stride * self._last_char_frame) * HOP_LENGTH + WIN_LENGTH
        arrival = next((t for chunk_end, t in self._chunks if chunk_end >= end), self._chunks[-1][1])
        return Event(
            kind=kind,
            text=self._text,
            utterance=self._utterance,
            start=self._first_frame * HOP_LENGTH / SAMPLE_RATE,
            end=end / SAMPLE_RATE,
            latency=self.clock() - arrival,
            words=[(text, seconds(first), seconds(last)) for text, first, last in self._words],
        )


def stream_audio(recognizer: Recognizer, audio: torch.Tensor, chunk_samples: int) -> str:
    """Feed ``audio`` ``(samples,)`` through ``recognizer`` in chunks of ``chunk_samples``, as a
    microphone would deliver it, and return its final texts joined by spaces."""
    finals = []
    for start in range(0, audio.shape[-1], chunk_samples):
        finals += [e.text for e in recognizer.accept_audio(audio[start : start + chunk_samples]) if e.kind == "final"]
    finals += [e.text for e in recognizer.finish() if e.kind == "final"]
    return " ".join(text for text in finals if text)
