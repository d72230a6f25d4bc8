"""File -> text with word times, with a trained checkpoint: audio in bounded-memory segments,
log-mel frontend, acoustic model, CTC decoding (greedy, or beam search with an optional LM),
and the output formats of ``asr transcribe`` (text, JSON, SRT, VTT).

Word times come from the CTC output itself: a word runs from the frame at which its first
character is emitted to the end of its last character's run of frames (the frames after the
emission that the model still gives most to that character), each output frame being
``time_stride x 10 ms``. This needs no second pass and works for greedy and beam hypotheses
alike, since both carry emission frames. (``torchaudio.functional.forced_align`` against the
hypothesis would return the same best path for the characters plus the blanks between them,
which carry no word boundary either.) CTC places its character peaks where the model is
certain, not where the sound is, and a model may keep emitting the last character into a
pause, so each word is then trimmed to the speech it covers: 10 ms frames more than
``SILENCE_DB`` below the segment's loudest are silence.

A model trained with silence padding (``data.augment.pad_s``) heard every utterance with up to
that much faint noise (its dither) before and after; each segment gets half of it on both
sides here, so a clip cut tight to the speech does not start in the first analysis window
(FSDD: greedy test WER 0.514 without, 0.129 with; recipes/fsdd/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr.audio import SAMPLE_RATE, AudioError, iter_audio_blocks, split_on_silence
from asr.checkpoint import load_checkpoint
from asr.decoding import BeamSearchOptions, Hypothesis, checkpoint_decoder, greedy_ctc_decode
from asr.fileio import atomic_write
from asr.features import HOP_LENGTH, LogMelFrontend, num_frames
from asr.text import Tokenizer

SILENCE_DB = 40.0  # a 10 ms frame this far below the segment's loudest is silence


@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the file
    end: float
    confidence: float  # mean posterior of the word's characters at their emission frames


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
        # seconds per output frame: the model's subsampling of the 10 ms feature frames, read
        # off a length long enough for its rounding not to matter
        probe = 100_000
        stride = probe / int(self.model.output_lengths(torch.tensor([probe])))
        self.frame_seconds = round(stride) * HOP_LENGTH / SAMPLE_RATE

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
        space = self.tokenizer.tokens.index(" ")
        best = log_probs.argmax(dim=-1).tolist()
        chars = [(token, frame) for token, frame in zip(hyp.tokens, hyp.frames) if token != space]
        speech = _speech_frames(audio)
        words = []
        for text, span in zip(hyp.text.split(), _word_spans(hyp.text.split(), chars, self.tokenizer)):
            last_token, end_frame = span[-1][0], span[-1][1] + 1
            while end_frame < len(best) and best[end_frame] == last_token:
                end_frame += 1
            edge, duration = self.edge_samples / SAMPLE_RATE, len(audio) / SAMPLE_RATE
            start = min(max(span[0][1] * self.frame_seconds - edge, 0.0), duration)
            end = min(max(end_frame * self.frame_seconds - edge, start), duration)
            start, end = _trim_to_speech(start, end, speech)
            confidence = sum(math.exp(log_probs[f, t]) for t, f in span) / len(span)
            words.append(Word(text, start, end, confidence))
        return words

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



def _word_spans(words: list[str], chars: list[tuple[int, int]], tokenizer: Tokenizer) -> list[list[tuple[int, int]]]:
    """Each word's ``(token, frame)`` pairs, taken in order from the hypothesis' non-space ones.

    Matched to the words of the text rather than split at spaces: a lexicon decoder need not
    emit a space between words, and flashlight's lexicon decoder spells a doubled letter
    ("LL" in "TELL") from a single run of frames, which CTC collapses into one token.
    """
    spans, used = [], 0
    for word in words:
        span = []
        ids = tokenizer.encode(word)
        for k, token in enumerate(ids):
            collapsed = k > 0 and token == ids[k - 1] and (used == len(chars) or chars[used][0] != token)
            if used < len(chars) and not collapsed:
                span.append(chars[used])
                used += 1
        # a word always has a frame of its own; should one not, it shares its predecessor's
        spans.append(span or (spans[-1][-1:] if spans else chars[:1]) or [(0, 0)])
    return spans


def _speech_frames(audio: torch.Tensor) -> torch.Tensor:
    """One bool per 10 ms of ``audio``: True unless ``SILENCE_DB`` below the loudest frame."""
    usable = len(audio) // HOP_LENGTH * HOP_LENGTH
    energy = audio[:usable].float().reshape(-1, HOP_LENGTH).pow(2).mean(dim=1)
    if not len(energy):
        return energy.bool()
    return energy > energy.max() * 10 ** (-SILENCE_DB / 10)


def _trim_to_speech(start: float, end: float, speech: torch.Tensor) -> tuple[float, float]:
    """Shrink ``[start, end)`` (seconds) to the speech frames inside it; unchanged if none."""
    frame = HOP_LENGTH / SAMPLE_RATE
    lo, hi = int(start / frame + 1e-6), min(len(speech), math.ceil(end / frame - 1e-6))
    inside = speech[lo:hi].nonzero().flatten()
    if not len(inside):
        return start, end
    return max(start, (lo + int(inside[0])) * frame), min(end, (lo + int(inside[-1]) + 1) * frame)


def decode_manifest(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    device: str = "cpu",
    beam: BeamSearchOptions | None = None,
    batch_size: int = 1,
    chunk_ms: int | None = None,
    greedy: bool = False,
    on_error=None,
) -> int:
    """Decode every utterance of a manifest into ``id<TAB>text`` lines; returns failures.

    Decoding is as :class:`Transcriber`'s (``beam``, ``greedy``: the checkpoint's own by default).

    With ``chunk_ms``, each utterance is streamed through a :class:`~asr.streaming.Recognizer`
    (a streaming model) in chunks of that many milliseconds, endpointing included, exactly
    as ``asr stream`` would recognise it (with the same choice of decoding).

    A file that cannot be read is left out and reported to ``on_error(AudioError)`` (default:
    a line on stderr); the others are decoded.
    """
    from tqdm import tqdm

    from asr.data.manifest import read_manifest

    entries = read_manifest(manifest, required=("id", "audio"))  # nothing else is used here
    if chunk_ms is None:
        transcriber = Transcriber(checkpoint, device=device, beam=beam, greedy=greedy)
        results = transcriber.transcribe_files([entry["audio"] for entry in entries], batch_size=batch_size)
    else:
        results = _stream_files(checkpoint, [entry["audio"] for entry in entries], device, chunk_ms, beam, greedy)
    failures = 0
    with atomic_write(out) as f:
        for entry, (_, result) in tqdm(
            zip(entries, results), total=len(entries), desc="decode", unit="utt", mininterval=2.0
        ):
            if isinstance(result, AudioError):
                if on_error is None:
                    tqdm.write(f"error: {result}", file=sys.stderr)
                else:
                    on_error(result)
                failures += 1
                continue
            f.write(f"{entry['id']}\t{result.text}\n")
    return failures


def _stream_files(
    checkpoint: str | os.PathLike,
    paths: list[str],
    device: str,
    chunk_ms: int,
    beam: BeamSearchOptions | None,
    greedy: bool,
) -> Iterator[tuple[str, Transcript | AudioError]]:
    from asr.audio import load_audio
    from asr.streaming import Recognizer, stream_audio

    recognizer = Recognizer(checkpoint, device=device, beam=beam, greedy=greedy)
    for path in paths:
        try:
            audio = load_audio(path)
        except AudioError as err:
            yield path, err
            continue
        text = stream_audio(recognizer, audio, SAMPLE_RATE * chunk_ms // 1000)
        yield path, Transcript(text=text, duration=audio.shape[-1] / SAMPLE_RATE)


@torch.inference_mode()
def manifest_log_probs(
    checkpoint: str | os.PathLike, manifest: str | os.PathLike, device: str = "cpu", sample: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """The model's log-probs for every utterance of a manifest (or a random ``sample`` of them,
    seeded), one ``(1, frames, vocab)`` tensor and ``(1,)`` length each, with the normalised
    references: the input of :func:`asr.decoding.tune_lm_weights`, computed once for the grid."""
    from tqdm import tqdm

    from asr.audio import load_audio
    from asr.data.manifest import read_manifest, sample_entries
    from asr.text import normalize_text

    transcriber = Transcriber(checkpoint, device=device, greedy=True)  # its log-probs only
    log_probs, lengths, references = [], [], []
    entries = sample_entries(read_manifest(manifest), sample)
    for entry in tqdm(entries, desc="log-probs", unit="utt", mininterval=2.0):
        out, out_lengths = transcriber.log_probs([load_audio(entry["audio"])])
        log_probs.append(out.float().cpu())
        lengths.append(out_lengths.cpu())
        references.append(normalize_text(entry["text"])[0])
    return log_probs, lengths, references
