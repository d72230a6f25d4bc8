"""Run an exported model (``asr export``) with onnxruntime, numpy and soundfile only: no torch.

    >>> from asr.runtime import Transcriber, StreamingRecognizer  # doctest: +SKIP
    >>> Transcriber("exported/").transcribe_file("speech.wav")  # doctest: +SKIP
    'OPEN THE DOOR PLEASE'

The parts mirror the library's: :class:`LogMel` is :class:`asr.features.LogMelFrontend` in
numpy (tests/test_export.py holds them equal), :func:`greedy_decode` is greedy CTC,
:class:`Transcriber` transcribes files and :class:`StreamingRecognizer` is
:class:`asr.streaming.Recognizer` (greedy) with the same endpointing and events. Decoding is
greedy: the word LM and lexicon the export directory may hold are for a beam search
(flashlight-text), which this module leaves to the caller.

Shapes: audio ``(samples,)`` float32 at 16 kHz; features ``(frames, n_mels)``; log-probs
``(frames', vocab)`` (one utterance: the runtime serves one stream at a time).

Never import torch (or any asr module that does) here: tests/test_export.py runs this module
with torch blocked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import soundfile

from asr.endpoint import EndpointConfig, Endpointer, Event, StreamingSession, StreamTiming, stream_audio
from asr.text import Tokenizer

__all__ = ["EndpointConfig", "Event", "ExportDirError", "ExportedModel", "OnnxStepper", "StreamingRecognizer",
           "Transcriber", "greedy_decode", "load_audio", "stream_audio"]

EXPORT_FORMAT = "asr-export-2"  # the model.json this runtime reads (asr.export writes it)


class ExportDirError(ValueError):
    """An export directory or input the runtime cannot use (one-line message)."""


# --- frontend ------------------------------------------------------------------------------


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """HTK-scale triangular filters without normalisation, ``(n_fft // 2 + 1, n_mels)``: what
    ``torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")`` returns."""
    freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    points = 700.0 * (10.0 ** (np.linspace(mel(f_min), mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    slopes = points[None, :] - freqs[:, None]
    widths = np.diff(points)
    down, up = -slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(down, up))


class LogMel:
    """Log-mel features of 25 ms Hann windows every 10 ms, no edge padding (frame ``t`` covers
    samples ``[160 t, 160 t + 400)``), mel energies floored at the training dither's noise
    energy: :class:`asr.features.LogMelFrontend` in eval mode, from the export's settings.

    Shapes: ``(samples,)`` -> ``(frames, n_mels)``, ``frames = 1 + (samples - 400) // 160`` (0 if shorter).
    """

    def __init__(self, settings: dict) -> None:
        self.win, self.hop, self.n_fft = settings["win_length"], settings["hop_length"], settings["n_fft"]
        self.n_mels = settings["n_mels"]
        window = np.hanning(self.win)  # symmetric, as torch.hann_window(periodic=False)
        fb = mel_filterbank(self.n_mels, self.n_fft, settings["sample_rate"], settings["f_min"], settings["f_max"])
        noise = settings["dither"] ** 2 * np.sum(window**2) * fb.sum(axis=0)
        # float32, as torch computes them: the features agree to rounding (about 1e-4 in the log)
        self.window, self.fb = window.astype(np.float32), fb.astype(np.float32)
        self.floor = np.maximum(noise, settings["log_floor"]).astype(np.float32)
        self._frame_index: dict[int, np.ndarray] = {}

    def num_frames(self, samples: int) -> int:
        return max(0, (samples - self.win) // self.hop + 1)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        frames = self.num_frames(len(audio))
        if frames == 0:
            return np.zeros((0, self.n_mels), np.float32)
        # a gather of the frames' samples: cheaper than sliding_window_view for a streaming chunk's
        # few frames; a stream asks for the same few frame counts again and again
        if (index := self._frame_index.get(frames)) is None:
            index = self._frame_index[frames] = self.hop * np.arange(frames)[:, None] + np.arange(self.win)
        windows = np.asarray(audio, np.float32)[index]
        windows *= self.window
        spectrum = np.fft.rfft(windows, n=self.n_fft)
        power = spectrum.real**2 + spectrum.imag**2
        mel = power.astype(np.float32, copy=False) @ self.fb
        return np.log(np.maximum(mel, self.floor, out=mel), out=mel)


class StreamingLogMel:
    """:class:`LogMel` on audio arriving in chunks of any size: each call returns the frames
    whose window is complete, so all calls together give the frames of the whole signal."""

    def __init__(self, frontend: LogMel) -> None:
        self.frontend = frontend
        self.reset()

    def reset(self) -> None:
        self.tail = np.zeros(0, np.float32)

    def accept_audio(self, chunk: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self.tail, np.asarray(chunk, np.float32)])
        frames = self.frontend.num_frames(len(audio))
        self.tail = audio[frames * self.frontend.hop :]
        return self.frontend(audio[: (frames - 1) * self.frontend.hop + self.frontend.win] if frames else audio[:0])


# --- model and decoding ----------------------------------------------------------------------


def greedy_decode(log_probs: np.ndarray, tokens: list[str], blank: int = 0) -> str:
    """Best path of ``(frames, vocab)`` log-probs: argmax per frame, repeats collapsed, blanks dropped."""
    best = log_probs.argmax(axis=-1)
    keep = (best != blank) & (best != np.concatenate([[blank], best[:-1]]))
    return " ".join("".join(tokens[i] for i in best[keep]).split())


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """A 16 kHz audio file -> mono float32 ``(samples,)`` (channels averaged). The runtime does
    not resample: convert other rates first (``sox in.wav -r 16000 out.wav``)."""
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, soundfile.LibsndfileError) as err:
        raise ExportDirError(f"{path}: cannot read audio ({err})") from None
    if rate != 16000:
        raise ExportDirError(f"{path}: {rate} Hz; the runtime reads 16 kHz audio only (convert it, e.g. sox in -r 16000 out.wav)")
    return audio.mean(axis=1)


class ExportedModel:
    """An export directory: its settings (``model.json``), frontend and onnxruntime session.

    Args:
        directory: written by ``asr export --format onnx``.
        threads: onnxruntime's intra-op threads (1: the small streaming model gains nothing from more).
    """

    def __init__(self, directory: str | os.PathLike, threads: int = 1) -> None:
        directory = Path(directory)
        try:
            self.meta = json.loads((directory / "model.json").read_text())
        except (OSError, ValueError):
            raise ExportDirError(f"{directory}: not an export directory (no readable model.json; see asr export)") from None
        if self.meta.get("format") != EXPORT_FORMAT:
            raise ExportDirError(f"{directory}: an export of format {self.meta.get('format')!r}; this runtime reads "
                                 f"{EXPORT_FORMAT!r}: export the checkpoint again with this version of asr")
        if not self.meta.get("model_file", "").endswith(".onnx"):
            raise ExportDirError(f"{directory}: holds a {self.meta.get('model_file')} model; the runtime runs ONNX exports")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(directory / self.meta["model_file"]), options,
                                                    providers=["CPUExecutionProvider"])
        self.tokens, self.blank = self.meta["tokens"], self.meta["blank_id"]
        self.frontend = LogMel(self.meta["frontend"])
        self.stride = self.meta["time_stride"]
        self.streaming = self.meta.get("streaming")
        self.frame_seconds = self.stride * self.frontend.hop / self.meta["frontend"]["sample_rate"]

    def output_frames(self, frames: int) -> int:
        return -(-frames // self.stride)

    def log_probs(self, feats: np.ndarray) -> np.ndarray:
        """Features ``(frames, n_mels)`` of one utterance -> log-probs ``(ceil(frames / stride), vocab)``."""
        if self.streaming is None:
            out, _ = self.session.run(None, {"feats": feats[None], "lengths": np.array([len(feats)], np.int64)})
            return out[0]
        stepper = OnnxStepper(self)
        log_probs, state = stepper.step(feats[None], stepper.initial_state())
        return np.concatenate([log_probs, stepper.flush(state)], axis=1)[0]


class OnnxStepper:
    """The exported streaming step as a :class:`~asr.endpoint.Stepper`: features of any count
    in, log-probs of the output frames whose look-ahead has arrived out.

    The graph takes fixed chunks of ``chunk_frames``, so features wait in the state until a
    chunk is full; its first ``lookahead`` outputs precede the stream and are dropped
    (asr.export.StreamingStep). The state is the graph's (``hidden`` has the layers first)
    plus that bookkeeping, every array with the batch first.
    """

    def __init__(self, model: ExportedModel) -> None:
        self.model = model
        spec = model.streaming
        self.chunk, self.lookahead = spec["chunk_frames"], spec["lookahead"]
        self.graph_state = list(spec["state"])
        self.vocab = len(model.tokens)

    def initial_state(self) -> dict[str, np.ndarray]:
        state = {name: np.zeros(shape, np.float32) for name, shape in self.model.streaming["state"].items()}
        state["buffer"] = np.zeros((1, 0, self.model.frontend.n_mels), np.float32)  # features short of a chunk
        state["to_drop"] = np.array([self.lookahead])  # outputs still to drop at the start
        state["frames"] = np.array([0])  # feature frames received
        state["emitted"] = np.array([0])  # output frames returned
        return state

    def _run(self, feats: np.ndarray, valid: int, state: dict[str, np.ndarray]) -> np.ndarray:
        log_probs, *graph_state = self.model.session.run(
            None, {"feats": feats, "valid": np.full(len(feats), valid, np.int64), **{k: state[k] for k in self.graph_state}})
        state.update(zip(self.graph_state, graph_state))
        return log_probs

    def _emit(self, log_probs: np.ndarray, state: dict[str, np.ndarray], limit: int | None = None) -> np.ndarray:
        drop = min(int(state["to_drop"][0]), log_probs.shape[1])
        state["to_drop"] = state["to_drop"] - drop
        log_probs = log_probs[:, drop:]
        if limit is not None:
            log_probs = log_probs[:, : max(0, limit - int(state["emitted"][0]))]
        state["emitted"] = state["emitted"] + log_probs.shape[1]
        return log_probs

    def step(self, feats: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(batch, frames, n_mels)`` -> ``(batch, frames', vocab)`` and the new state (streams
        stepped together: states of the same :meth:`shapes`)."""
        state = dict(state)
        state["frames"] = state["frames"] + feats.shape[1]
        buffer = np.concatenate([state["buffer"], feats], axis=1)
        out = []
        while buffer.shape[1] >= self.chunk:
            out.append(self._emit(self._run(buffer[:, : self.chunk], self.chunk // self.model.stride, state), state))
            buffer = buffer[:, self.chunk :]
        state["buffer"] = buffer
        return (np.concatenate(out, axis=1) if out else np.zeros((len(feats), 0, self.vocab), np.float32)), state

    # several streams stepped at once (asr.batch): their states stacked into one, and split after

    def steppable(self, stepped: int, waiting: int) -> int:
        """Of ``waiting`` features after ``stepped`` in the utterance, those to step now: whole
        chunks, so that no features wait in the state and the states of streams stack."""
        return (stepped + waiting) // self.chunk * self.chunk - stepped

    @staticmethod
    def shapes(state: dict[str, np.ndarray]) -> tuple:
        """What must agree for states to stack: their arrays' shapes, and the outputs still to drop."""
        return tuple(array.shape for array in state.values()) + (int(state["to_drop"][0]),)

    @staticmethod
    def stack(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {name: np.concatenate([state[name] for state in states], axis=1 if name == "hidden" else 0)
                for name in states[0]}

    @staticmethod
    def split(state: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{name: array[:, i : i + 1] if name == "hidden" else array[i : i + 1] for name, array in state.items()}
                for i in range(len(state["buffer"]))]

    def flush(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """The rest of the utterance ``(1, frames', vocab)``: the buffered features (the chunk padded
        with zeros, whose outputs the graph zeroes as ``forward`` does past the end), then chunks
        with no valid frame, which give the frames still waiting for their look-ahead."""
        frames = int(state["frames"][0])
        if not frames:  # nothing received, nothing to give
            return np.zeros((1, 0, self.vocab), np.float32)
        state, buffered = dict(state), state["buffer"].shape[1]
        padded = np.zeros((1, self.chunk, self.model.frontend.n_mels), np.float32)
        padded[:, :buffered] = state["buffer"]
        pieces = [self._run(padded, self.model.output_frames(buffered), state)] if buffered else []
        per_chunk = self.chunk // self.model.stride
        for _ in range(-(-self.lookahead // per_chunk)):  # a chunk shorter than the look-ahead takes more
            pieces.append(self._run(np.zeros_like(padded), 0, state))
        return self._emit(np.concatenate(pieces, axis=1), state, limit=self.model.output_frames(frames))


class Transcriber:
    """Files or waveforms -> text, greedy, with an exported model (offline or streaming: a
    streaming model is run over the whole utterance, as ``forward``).

    Each recording is one utterance (``asr transcribe`` cuts files longer than 30 s at pauses;
    this does not). A model trained with silence padding hears half of it on each side, as there.
    """

    def __init__(self, directory: str | os.PathLike, threads: int = 1) -> None:
        self.model = ExportedModel(directory, threads)

    def transcribe(self, audio: np.ndarray) -> str:
        """Mono float32 16 kHz ``(samples,)`` -> text."""
        edge = self.model.meta["edge_samples"]
        audio = np.pad(np.asarray(audio, np.float32), (edge, edge))
        feats = self.model.frontend(audio)
        if not len(feats):
            return ""
        return greedy_decode(self.model.log_probs(feats), self.model.tokens, self.model.blank)

    def transcribe_file(self, path: str | os.PathLike) -> str:
        return self.transcribe(load_audio(path))


# --- streaming with endpointing ----------------------------------------------------------------


class StreamingRecognizer(StreamingSession):
    """:class:`asr.streaming.Recognizer` with greedy decoding on an exported streaming model:
    feed chunks of any size with ``accept_audio``, get partial and final :class:`Event` s;
    ``finish`` at the end of the stream. The endpointing, replay and events are the same code
    (:mod:`asr.endpoint`), and so are the finals. A partial can come up to one graph chunk later
    than there: the exported step runs on whole chunks of ``chunk_frames`` features, where the
    PyTorch step emits each output frame as soon as its features are in.
    """

    def __init__(self, directory: str | os.PathLike | ExportedModel, endpoint: EndpointConfig | None = None,
                 threads: int = 1, clock: Callable[[], float] = time.perf_counter) -> None:
        model = directory if isinstance(directory, ExportedModel) else ExportedModel(directory, threads)
        if model.streaming is None:
            raise ExportDirError(f"a {model.meta['model']} export cannot stream; export a streaming_gru model")
        self.model = model
        settings = model.meta["frontend"]
        timing = StreamTiming(model.stride, settings["hop_length"], settings["win_length"], settings["sample_rate"])
        endpointer = Endpointer(Tokenizer("".join(model.tokens[1:])), timing, model.frontend.n_mels, endpoint, clock)
        super().__init__(StreamingLogMel(model.frontend), OnnxStepper(model), endpointer)


def iter_file_chunks(path: str | os.PathLike, chunk_samples: int) -> Iterator[np.ndarray]:
    """A 16 kHz file in chunks of ``chunk_samples`` (the last may be shorter), as from a microphone."""
    audio = load_audio(path)
    for start in range(0, len(audio), chunk_samples):
        yield audio[start : start + chunk_samples]
