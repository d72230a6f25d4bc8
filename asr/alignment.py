"""Word times and confidences from CTC output, in numpy (the streaming core and the ONNX
runtime use it without torch).

A word runs from the output frame at which its first character is emitted to the end of its
last character's run of frames (the frames after the emission that the model still gives most
to that character); an output frame lasts the model's ``time_stride`` feature frames. This needs
no second pass and works for greedy and beam hypotheses alike, since both carry emission
frames. (``torchaudio.functional.forced_align`` against the hypothesis would return the same
best path for the characters plus the blanks between them, which carry no word boundary
either.) CTC places its character peaks where the model is certain, not where the sound is, and
a model may keep emitting the last character into a pause, so each word is then trimmed to the
speech it covers: 10 ms frames more than ``SILENCE_DB`` below the segment's loudest are silence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from asr.text import Tokenizer

SILENCE_DB = 40.0  # a 10 ms frame this far below the segment's loudest is silence
SPEECH_FRAME = 160  # samples per 10 ms frame at 16 kHz, the unit of the speech test


@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the recording
    end: float
    confidence: float  # mean posterior of the word's characters at their emission frames


def word_spans(words: list[str], chars: list[tuple[int, int]], tokenizer: Tokenizer) -> list[list[tuple[int, int]]]:
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


def speech_frames(audio: np.ndarray) -> np.ndarray:
    """One bool per 10 ms of ``audio`` ``(samples,)``: True unless ``SILENCE_DB`` below the loudest frame."""
    usable = len(audio) // SPEECH_FRAME * SPEECH_FRAME
    energy = np.square(np.asarray(audio[:usable], np.float32).reshape(-1, SPEECH_FRAME)).mean(axis=1)
    if not len(energy):
        return energy.astype(bool)
    return energy > energy.max() * np.float32(10 ** (-SILENCE_DB / 10))


def trim_to_speech(start: float, end: float, speech: np.ndarray, sample_rate: int = 16000) -> tuple[float, float]:
    """Shrink ``[start, end)`` (seconds) to the speech frames inside it; unchanged if none."""
    frame = SPEECH_FRAME / sample_rate
    lo, hi = int(start / frame + 1e-6), min(len(speech), math.ceil(end / frame - 1e-6))
    inside = speech[lo:hi].nonzero()[0]
    if not len(inside):
        return start, end
    return max(start, (lo + int(inside[0])) * frame), min(end, (lo + int(inside[-1]) + 1) * frame)


def align_words(text: str, tokens: list[int], frames: list[int], log_probs: np.ndarray, audio: np.ndarray,
                tokenizer: Tokenizer, frame_seconds: float, edge_seconds: float = 0.0,
                sample_rate: int = 16000) -> list[Word]:
    """Times and confidences of a hypothesis' words within its segment.

    Args:
        text, tokens, frames: the hypothesis (its tokens and their emission frames).
        log_probs: the segment's ``(frames, vocab)`` log-probs.
        audio: the segment ``(samples,)`` as transcribed, without the edge silence.
        frame_seconds: seconds per output frame (the model's ``time_stride`` x 10 ms).
        edge_seconds: silence added before the segment for the model, taken off the times.
    """
    space = tokenizer.tokens.index(" ")
    best = log_probs.argmax(axis=-1).tolist()
    chars = [(token, frame) for token, frame in zip(tokens, frames) if token != space]
    speech = speech_frames(audio)
    duration = len(audio) / sample_rate
    words = []
    for word, span in zip(text.split(), word_spans(text.split(), chars, tokenizer)):
        last_token, end_frame = span[-1][0], span[-1][1] + 1
        while end_frame < len(best) and best[end_frame] == last_token:
            end_frame += 1
        start = min(max(span[0][1] * frame_seconds - edge_seconds, 0.0), duration)
        end = min(max(end_frame * frame_seconds - edge_seconds, start), duration)
        start, end = trim_to_speech(start, end, speech, sample_rate)
        confidence = sum(math.exp(log_probs[f, t]) for t, f in span) / len(span)
        words.append(Word(word, start, end, confidence))
    return words
