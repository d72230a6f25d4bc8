"""The Python API: a model in one call, then files, arrays or live audio.

    >>> import asr
    >>> model = asr.load_model()  # the embedded English model
    >>> result = model.transcribe("speech.wav")  # doctest: +SKIP
    >>> result.text, result["text"], result.words[0]  # doctest: +SKIP
    ('OPEN THE DOOR', 'OPEN THE DOOR', Word(word='OPEN', start=0.31, end=0.62, confidence=0.93))
    >>> session = asr.load_model(streaming=True).stream()
    >>> for event in session.accept_audio(chunk):  # doctest: +SKIP
    ...     print(event.kind, event.text)  # partials, then a final at each endpoint

Decoding is the checkpoint's own (beam search with the word LM it carries, else greedy), as
``asr transcribe`` and ``asr stream`` decode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from asr.audio import SAMPLE_RATE, resample, split_on_silence
from asr.pretrained import resolve_model
from asr.streaming import Recognizer
from asr.transcribe import Transcriber, Transcript


class Model:
    """A checkpoint ready to transcribe (:meth:`transcribe`) and, for a streaming model, to
    stream (:meth:`stream`). Made by :func:`load_model`."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", greedy: bool = False) -> None:
        self.path = Path(path)
        self.transcriber = Transcriber(self.path, device=device, greedy=greedy)
        self.streaming = hasattr(self.transcriber.model, "step")
        self._device, self._greedy = device, greedy
        self._recognizer: Recognizer | None = None

    def transcribe(self, audio: str | os.PathLike | np.ndarray | torch.Tensor,
                   sample_rate: int = SAMPLE_RATE) -> Transcript:
        """An audio file (any format and rate soundfile reads), or samples ``(samples,)`` or
        ``(channels, samples)`` at ``sample_rate`` -> :class:`~asr.transcribe.Transcript`:
        ``.text``, ``.words`` (each with ``start``, ``end`` in seconds and ``confidence``),
        ``.duration``; ``result["text"]`` reads the same. Long audio is cut at pauses."""
        if isinstance(audio, (str, os.PathLike)):
            return self.transcriber.transcribe_file(audio)
        samples = torch.as_tensor(audio, dtype=torch.float32)
        if samples.dim() == 2:  # channels first, as soundfile's always_2d transposed
            samples = samples.mean(dim=0)
        if samples.dim() != 1:
            raise ValueError(f"expected audio (samples,) or (channels, samples), got shape {tuple(samples.shape)}")
        if sample_rate != SAMPLE_RATE:
            samples = resample(samples, sample_rate)
        limit = self.transcriber.max_segment_seconds
        return self.transcriber.transcribe_segments(split_on_silence(iter([samples]), limit, limit / 2))

    def stream(self) -> Recognizer:
        """A new streaming session: ``accept_audio(chunk)`` with mono float32 16 kHz samples of any
        length returns the new partial and final events (``.kind``, ``.text``, ``.words``, times);
        ``finish()`` ends the stream with the last final."""
        if not self.streaming:
            raise ValueError(f"{self.path}: an offline model cannot stream; load one with load_model(streaming=True)")
        if self._recognizer is None:
            self._recognizer = Recognizer(self.path, device=self._device, greedy=self._greedy)
        return self._recognizer.new_session()


def load_model(path: str | os.PathLike | None = None, streaming: bool = False, device: str = "cpu",
               greedy: bool = False) -> Model:
    """A checkpoint as a :class:`Model`; without ``path``, the embedded default (the offline one,
    or with ``streaming=True`` the streaming one).

    Raises:
        asr.checkpoint.CheckpointError: ``path`` is not a usable checkpoint.
        FileNotFoundError: no such file, or no embedded default in this installation.
        ValueError: ``streaming=True`` with an offline checkpoint.
    """
    model = Model(resolve_model(path and str(path), "streaming" if streaming else "offline"), device, greedy)
    if streaming and not model.streaming:
        raise ValueError(f"{model.path}: an offline model cannot stream; give a streaming checkpoint")
    return model
