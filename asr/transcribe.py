"""File -> text with word times, with a trained checkpoint: audio in bounded-memory segments,
log-mel frontend, acoustic model, CTC decoding (greedy, or beam search with an optional LM).
``asr transcribe`` writes the results (asr/cli/writers.py).

Word times and confidences: :mod:`asr.alignment`.

A model trained with silence padding (``data.augment.pad_s``) heard every utterance with up to
that much faint noise (its dither) before and after; each segment gets half of it on both
sides here, so a clip cut tight to the speech does not start in the first analysis window
(recipes/fsdd/RESULTS.md measures the difference).
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from asr.alignment import Word, align_words
from asr.audio import SAMPLE_RATE, AudioError, iter_audio_blocks, split_on_silence
from asr.checkpoint import load_checkpoint
from asr.decoding import BeamSearchOptions, Hypothesis, checkpoint_decoder, greedy_ctc_decode
from asr.features import HOP_LENGTH, LogMelFrontend, num_frames



@dataclass
class Transcript:
    text: str
    duration: float  # seconds of audio
    words: list[Word] = field(default_factory=list)
    note: str = ""  # why the text is empty when the reason is known (e.g. digital silence)

    def __getitem__(self, key: str):
        """``result["text"]``, as whisper's results read: the values of :meth:`to_dict`."""
        return self.to_dict()[key]

    def to_dict(self) -> dict:
        """Text, duration and timed words, times rounded to the millisecond (the JSON output)."""
        words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                  "confidence": round(w.confidence, 3)} for w in self.words]
        return {"text": self.text, "duration": round(self.duration, 3), "words": words}


class Transcriber:
    """Holds a model in eval mode and transcribes files or waveforms.

    Long recordings are read block by block and cut at quiet points into segments of at most
    ``max_segment_seconds``, so memory does not grow with the length of the file.

    Decoding is the checkpoint's own by default: beam search with the word LM it carries
    (``asr attach-lm``, as its recipe decodes), else greedy. ``beam`` sets the beam search
    (with its own ``lm``/``lexicon`` files, or the checkpoint's LM unless ``model_lm=False``);
    ``greedy=True`` decodes greedily whatever the checkpoint carries.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str = "cpu",
        max_segment_seconds: float = 30.0,
        beam: BeamSearchOptions | None = None,
        greedy: bool = False,
    ) -> None:
        if greedy and beam is not None:
            raise ValueError("greedy decoding takes no beam search options")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available; use --device cpu")
        ckpt = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.tokenizer = ckpt.tokenizer
        self.model = ckpt.build_model(self.device)
        training = ckpt.training_config
        n_mels, dither = ckpt.model_config.get("n_mels", 80), training.get("dither", 0.0)
        self.frontend = LogMelFrontend(n_mels, dither).to(self.device).eval()
        # a model trained with silence padding (data.augment.pad_s) hears half of it each side;
        # zeros, which the frontend's energy floor turns into the dither it was trained with
        self.edge_samples = int(training.get("data", {}).get("augment", {}).get("pad_s", 0.0) / 2 * SAMPLE_RATE)
        self.max_segment_seconds = max_segment_seconds
        self.beam_decoder = None if greedy else checkpoint_decoder(ckpt, beam)
        self.frame_seconds = self.model.config.time_stride * HOP_LENGTH / SAMPLE_RATE

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        if self.beam_decoder is not None:
            return self.beam_decoder.decode(log_probs, lengths)
        return greedy_ctc_decode(log_probs, lengths, self.tokenizer)

    @torch.inference_mode()
    def transcribe_batch(self, audios: list[torch.Tensor]) -> list[Transcript]:
        """Mono 16 kHz ``(samples,)`` segments -> one transcript each, word times from the
        segment's start. The segments go through the model as one padded batch (the frontend
        and the model give every utterance the output it would get alone)."""
        results = [Transcript("", len(audio) / SAMPLE_RATE) for audio in audios]
        usable = [i for i, audio in enumerate(audios) if num_frames(len(audio)) > 0]  # < 25 ms: nothing to hear
        if not usable:
            return results
        log_probs, out_lengths = self.log_probs([audios[i] for i in usable])
        hyps = self.decode(log_probs, out_lengths)
        log_probs, out_lengths = log_probs.float().cpu(), out_lengths.cpu()
        for k, i in enumerate(usable):
            words = self._words(hyps[k], log_probs[k, : out_lengths[k]], audios[i])
            results[i] = Transcript(" ".join(w.word for w in words), results[i].duration, words)
        return results

    @torch.inference_mode()
    def log_probs(self, audios: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz ``(samples,)`` segments, each padded with the model's edge silence ->
        log-probs ``(batch, frames, vocab)`` + lengths ``(batch,)`` as one padded batch."""
        if self.edge_samples:
            audios = [torch.nn.functional.pad(audio, (self.edge_samples, self.edge_samples)) for audio in audios]
        lengths = torch.tensor([len(audio) for audio in audios])
        batch = torch.nn.utils.rnn.pad_sequence(audios, batch_first=True)
        feats, feat_lengths = self.frontend(batch.to(self.device), lengths.to(self.device))
        return self.model(feats, feat_lengths)

    def _words(self, hyp: Hypothesis, log_probs: torch.Tensor, audio: torch.Tensor) -> list[Word]:
        """Times and confidences of the hypothesis' words within its segment."""
        return align_words(hyp.text, hyp.tokens, hyp.frames, log_probs.numpy(), audio.cpu().numpy(), self.tokenizer,
                           self.frame_seconds, self.edge_samples / SAMPLE_RATE, SAMPLE_RATE)

    def transcribe_audio(self, audio: torch.Tensor) -> Transcript:
        """Mono 16 kHz ``(samples,)`` -> transcript (one segment: no cutting)."""
        return self.transcribe_batch([audio])[0]

    def transcribe_segments(self, segments: Iterable[tuple[float, torch.Tensor]]) -> Transcript:
        """``(start_seconds, audio)`` segments of one recording -> its transcript, word times
        offset by each segment's start."""
        return _join([(start, self.transcribe_audio(segment)) for start, segment in segments])

    def transcribe_file(self, path: str | os.PathLike) -> Transcript:
        return self.transcribe_segments(self._segments(path))

    def transcribe_files(
        self, paths: Iterable[str | os.PathLike], batch_size: int = 1
    ) -> Iterator[tuple[str, Transcript | AudioError]]:
        """Transcribe files in order, ``batch_size`` segments at a time through the model
        (segments of one long file, or several short files).

        Yields ``(path, transcript)``, or ``(path, AudioError)`` for a file that cannot be read,
        in input order as soon as each file is complete; a failure never stops the others.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        files: deque[_InFlight] = deque()
        batch: list[tuple[_InFlight, float, torch.Tensor]] = []

        def run_batch() -> None:
            for (item, start, _), result in zip(batch, self.transcribe_batch([s for _, _, s in batch])):
                item.pieces.append((start, result))
                item.waiting -= 1
            batch.clear()

        def completed() -> Iterator[tuple[str, Transcript | AudioError]]:
            while files and files[0].read and (files[0].error is not None or not files[0].waiting):
                item = files.popleft()
                if item.error is not None:
                    yield item.path, item.error
                    continue
                result = _join(item.pieces)
                if item.peak == 0.0:  # nothing to hear, whatever a model makes of it; and an empty text alone would not say why
                    result = Transcript("", result.duration, note="digital silence (every sample is 0): nothing to transcribe")
                yield item.path, result

        for path in paths:
            item = _InFlight(str(path))
            files.append(item)
            try:
                for start, segment in self._segments(path):
                    item.peak = max(item.peak, float(segment.abs().max()))
                    batch.append((item, start, segment))
                    item.waiting += 1
                    if len(batch) == batch_size:
                        run_batch()
            except AudioError as err:
                item.error = err
                batch[:] = [entry for entry in batch if entry[0] is not item]
            item.read = True
            yield from completed()
        run_batch()
        yield from completed()

    def _segments(self, path: str | os.PathLike) -> Iterator[tuple[float, torch.Tensor]]:
        blocks = iter_audio_blocks(path, seconds=self.max_segment_seconds)
        return split_on_silence(blocks, self.max_segment_seconds, self.max_segment_seconds / 2)


@dataclass
class _InFlight:
    """A file whose segments are in batches: complete once read and all results are back."""

    path: str
    pieces: list[tuple[float, Transcript]] = field(default_factory=list)
    waiting: int = 0  # segments sent to a batch whose results have not come back
    read: bool = False
    error: AudioError | None = None
    peak: float = 0.0  # largest absolute sample: 0 is digital silence


def _join(pieces: list[tuple[float, Transcript]]) -> Transcript:
    """Segment transcripts -> the recording's, word times moved by each segment's start."""
    words = [
        dataclasses.replace(word, start=start + word.start, end=start + word.end)
        for start, piece in pieces
        for word in piece.words
    ]
    duration = max((start + piece.duration for start, piece in pieces), default=0.0)
    return Transcript(" ".join(piece.text for _, piece in pieces if piece.text), duration, words)
