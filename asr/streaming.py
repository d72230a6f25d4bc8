"""Streaming recognition with a PyTorch model: feed audio chunks as they arrive, get partial and
final hypotheses.

audio chunks -> :class:`~asr.features.StreamingLogMel` -> the streaming model's ``step``
(:class:`TorchStepper`) -> the streaming core (:class:`~asr.endpoint.Endpointer`: incremental
CTC decoding, endpoints, replay) -> :class:`~asr.endpoint.Event` s. Used by ``asr stream``
(microphone or file), ``asr serve`` and ``asr decode --chunk-ms``.

Decoding is the checkpoint's own, as offline (:class:`~asr.transcribe.Transcriber`): beam
search with the word LM it carries (``asr attach-lm``), extended chunk by chunk, else greedy.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from asr.audio import SAMPLE_RATE
from asr.checkpoint import CheckpointError, load_checkpoint
from asr.decoding import BeamSearchDecoder, BeamSearchOptions, checkpoint_decoder
from asr.endpoint import EndpointConfig, Endpointer, Event, StreamingSession, StreamTiming, stream_audio
from asr.features import HOP_LENGTH, WIN_LENGTH, StreamingLogMel
from asr.models.streaming_gru import StreamingState
from asr.text import Tokenizer

__all__ = ["EndpointConfig", "Event", "Recognizer", "TorchStepper", "stream_audio"]


class TorchStepper:
    """A streaming model (``initial_state`` / ``step`` / ``flush``) as a numpy
    :class:`~asr.endpoint.Stepper`: features ``(batch, frames, n_mels)`` and log-probs
    ``(batch, frames', vocab)`` are numpy arrays, the state stays the model's tensors."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device

    def initial_state(self, batch: int = 1) -> Any:
        return self.model.initial_state(batch)

    @torch.inference_mode()
    def step(self, feats: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        log_probs, state = self.model.step(torch.from_numpy(feats).to(self.device), state)
        return log_probs.cpu().numpy(), state

    @torch.inference_mode()
    def flush(self, state: Any) -> np.ndarray:
        return self.model.flush(state).cpu().numpy()

    # several streams stepped at once (asr.batch): their states stacked into one, and split after

    def steppable(self, stepped: int, waiting: int) -> int:
        """Of ``waiting`` features after ``stepped`` in the utterance, those to step now: ``1 +
        time_stride * k`` in all, as many as give whole output frames (output frame ``j`` needs
        the features up to ``time_stride * j``), so that the outputs come as early as when
        stepping every feature, and after the utterance's first step all states stack."""
        total, stride = stepped + waiting, self.model.config.time_stride
        return 1 + stride * ((total - 1) // stride) - stepped if total else 0

    @staticmethod
    def shapes(state: StreamingState) -> tuple:
        """What must agree for states to stack: their tensors' shapes."""
        return tuple(tensor.shape for tensor in (*state.conv_cache, state.hidden, state.lookahead))

    @staticmethod
    def stack(states: list[StreamingState]) -> StreamingState:
        return StreamingState(
            conv_cache=[torch.cat(caches) for caches in zip(*(state.conv_cache for state in states))],
            hidden=torch.cat([state.hidden for state in states], dim=1),
            lookahead=torch.cat([state.lookahead for state in states]),
        )

    @staticmethod
    def split(state: StreamingState) -> list[StreamingState]:
        return [StreamingState([cache[i : i + 1] for cache in state.conv_cache], state.hidden[:, i : i + 1],
                               state.lookahead[i : i + 1]) for i in range(state.lookahead.shape[0])]


class TorchFeatures:
    """:class:`~asr.features.StreamingLogMel` on any chunk (tensor or array) -> numpy ``(frames, n_mels)``."""

    def __init__(self, n_mels: int, dither: float, device: torch.device) -> None:
        self.device = device
        self.frontend = StreamingLogMel(n_mels, dither).to(device)

    def reset(self) -> None:
        self.frontend.reset()

    @torch.inference_mode()
    def accept_audio(self, chunk: Any) -> np.ndarray:
        chunk = torch.as_tensor(chunk, dtype=torch.float32)
        return self.frontend.accept_audio(chunk.to(self.device))[0].cpu().numpy()


class Recognizer(StreamingSession):
    """A streaming recognition session over one continuous audio stream.

    >>> recognizer = Recognizer("exp/final.pt")  # doctest: +SKIP
    >>> for chunk in microphone:  # doctest: +SKIP
    ...     for event in recognizer.accept_audio(chunk):
    ...         print(event.kind, event.text)
    >>> recognizer.finish()  # doctest: +SKIP

    Args:
        model: a checkpoint path, or a streaming model (with ``initial_state``/``step``/``flush``).
        tokenizer: the model's tokenizer (taken from the checkpoint when ``model`` is a path).
        endpoint: endpointing rules (defaults: :class:`~asr.endpoint.EndpointConfig`).
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
            self.dither = ckpt.training_config.get("dither", 0.0)
            if not hasattr(model, "step"):
                raise CheckpointError(f"{path}: a {ckpt.model_name} model cannot stream; train one with model=streaming_gru")
            self._new_decoder = (lambda: None) if greedy else (lambda: checkpoint_decoder(ckpt, beam))
        else:
            self.dither = 0.0
            if not hasattr(model, "step"):
                raise ValueError(f"{type(model).__name__} cannot stream: it has no step()")
            if tokenizer is None:
                raise ValueError("a model given without its checkpoint needs its tokenizer")
            self._new_decoder = (lambda: None) if beam is None else (lambda: BeamSearchDecoder(tokenizer, beam))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.beam_decoder: BeamSearchDecoder | None = self._new_decoder()
        timing = StreamTiming(model.config.time_stride, HOP_LENGTH, WIN_LENGTH, SAMPLE_RATE)
        endpointer = Endpointer(tokenizer, timing, model.config.n_mels, endpoint, clock, self.beam_decoder)
        super().__init__(TorchFeatures(model.config.n_mels, self.dither, self.device),
                         TorchStepper(self.model, self.device), endpointer)

    def new_session(self) -> Recognizer:
        """Another session on this one's model and decoding, starting afresh: the weights and
        the word LM's tables are shared (only read, so sessions may run in different threads),
        the frontend's samples and the search are its own. For a server's streams."""
        session = copy.copy(self)
        decoder = self.beam_decoder
        session.beam_decoder = decoder.fork() if decoder is not None and decoder.can_fork else self._new_decoder()
        session.frontend = TorchFeatures(self.model.config.n_mels, self.dither, self.device)
        ep = self.endpointer
        session.endpointer = Endpointer(ep.tokenizer, ep.timing, ep.n_mels, ep.endpoint, ep.clock, session.beam_decoder)
        session.reset()
        return session
