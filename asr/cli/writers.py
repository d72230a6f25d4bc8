"""``asr transcribe``'s output formats: text, JSON lines, SRT and WebVTT subtitles."""

from __future__ import annotations

import json

from asr.transcribe import Transcript, Word

EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}


def to_text(transcript: Transcript, **fields) -> str:
    return transcript.text + "\n"


def to_json(transcript: Transcript, **fields) -> str:
    """One line of JSON: ``fields`` (e.g. the audio path), text, duration and timed words."""
    return json.dumps({**fields, **transcript.to_dict()}, ensure_ascii=False) + "\n"


def subtitle_cues(
    words: list[Word], max_seconds: float = 7.0, max_chars: int = 42, max_pause: float = 1.0
) -> list[tuple[float, float, str]]:
    """Group words into ``(start, end, text)`` cues of at most ``max_seconds`` and ``max_chars``
    (a longer single word gets a cue of its own). A pause longer than ``max_pause`` also ends a
    cue, so that no line is on screen long before its words are spoken."""
    cues, current = [], []
    for word in words:
        if current and (
            word.end - current[0].start > max_seconds
            or len(" ".join(w.word for w in current)) + 1 + len(word.word) > max_chars
            or word.start - current[-1].end > max_pause
        ):
            cues.append(current)
            current = []
        current.append(word)
    if current:
        cues.append(current)
    return [(cue[0].start, cue[-1].end, " ".join(w.word for w in cue)) for cue in cues]


def _timestamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def to_srt(transcript: Transcript, **fields) -> str:
    return "".join(
        f"{n}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n\n"
        for n, (start, end, text) in enumerate(subtitle_cues(transcript.words), start=1)
    )


def to_vtt(transcript: Transcript, **fields) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n\n"
        for start, end, text in subtitle_cues(transcript.words)
    )


WRITERS = {"text": to_text, "json": to_json, "srt": to_srt, "vtt": to_vtt}
