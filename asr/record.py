"""Record one voice reading prompts (``asr record``): the data ``asr adapt`` fits a model to.

Each prompt is shown, the microphone records until the speaker pauses, the take is checked
(nothing heard, too quiet, clipped) and the speaker keeps it, redoes it or skips the prompt.
A kept take is written as ``NAME.wav`` (16 kHz mono 16-bit) beside ``NAME.txt`` (the prompt).
Prompts whose files already exist are passed over, so a session can be continued later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, TextIO

import soundfile as sf
import torch

from asr.audio import SAMPLE_RATE
from asr.fileio import atomic_write
from asr.text import ALPHABET, normalize_text

FRAME = SAMPLE_RATE // 100  # 10 ms level frames
METER_WIDTH = 30


class PromptError(ValueError):
    """A prompt list that cannot be used (one-line message naming the line)."""


def default_prompts_path() -> Path:
    """The shipped prompt list: short English sentences written for this project (public domain)."""
    return Path(str(resources.files("asr") / "prompts" / "english.txt"))


def read_prompts(path: str | os.PathLike | None = None, alphabet: str = ALPHABET) -> list[str]:
    """Prompts, one per line (blank lines and ``#`` comments skipped); default: the shipped list.
    A prompt the model could not write (digits, symbols) is a :class:`PromptError`."""
    path = Path(path) if path else default_prompts_path()
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        text, _ = normalize_text(line)
        unknown = sorted({c for c in text if c not in alphabet})
        if unknown:
            raise PromptError(f"{path}:{number}: characters a model cannot write: {' '.join(map(repr, unknown))}; "
                              "spell numbers and symbols out as words")
        prompts.append(line)
    if not prompts:
        raise PromptError(f"{path}: no prompts (one sentence per line)")
    return prompts


@dataclass
class RecordConfig:
    speech_db: float = -40.0  # a 10 ms frame louder than this (dB full scale) is speech
    quiet_db: float = -30.0  # a take whose loudest frame is below this is too quiet
    clip_level: float = 0.99  # samples at this share of full scale are clipped
    clip_samples: int = 10  # more clipped samples than this: a clipped take
    pause_s: float = 1.2  # this much silence after speech ends the take
    wait_s: float = 10.0  # no speech within this long: "heard nothing"
    max_s: float = 30.0  # longest take
    margin_s: float = 0.25  # silence kept before and after the speech


def frame_levels(audio: torch.Tensor) -> torch.Tensor:
    """RMS level of each 10 ms frame in dB full scale ``(frames,)``."""
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
    return 10 * torch.log10(frames.square().mean(dim=1).clamp_min(1e-10))


def take_problems(audio: torch.Tensor, config: RecordConfig) -> list[str]:
    """What is wrong with a take, as advice (empty: nothing)."""
    levels = frame_levels(audio)
    if not len(levels) or levels.max() < config.speech_db:
        return ["heard nothing: is the microphone on and selected (asr stream --list-devices)?"]
    problems = []
    if int((audio.abs() >= config.clip_level).sum()) > config.clip_samples:
        problems.append("clipped: speak softer, move back or lower the input gain")
    if levels.max() < config.quiet_db:
        problems.append(f"too quiet (loudest {levels.max():.0f} dBFS): speak up, move closer or raise the input gain")
    return problems


def record_take(chunks: Iterator[torch.Tensor], config: RecordConfig,
                meter: Callable[[float, float], None] | None = None) -> torch.Tensor:
    """Read chunks of 16 kHz audio until a pause after speech (or ``wait_s`` without speech, or
    ``max_s``); return the take trimmed to the speech plus ``margin_s`` each side (empty when
    nothing was heard). ``meter(level_db, seconds)`` is called for each chunk."""
    pieces, seconds, heard, last_speech = [], 0.0, False, 0.0
    for chunk in chunks:
        pieces.append(chunk)
        seconds += len(chunk) / SAMPLE_RATE
        levels = frame_levels(chunk)
        level = float(levels.max()) if len(levels) else -100.0
        if meter is not None:
            meter(level, seconds)
        if level >= config.speech_db:
            heard, last_speech = True, seconds
        if (heard and seconds - last_speech >= config.pause_s) or (not heard and seconds >= config.wait_s) \
                or seconds >= config.max_s:
            break
    audio = torch.cat(pieces) if pieces else torch.zeros(0)
    speech = (frame_levels(audio) >= config.speech_db).nonzero().flatten()
    if not len(speech):
        return audio[:0]
    margin = int(config.margin_s * SAMPLE_RATE)
    start = max(0, int(speech[0]) * FRAME - margin)
    end = min(len(audio), (int(speech[-1]) + 1) * FRAME + margin)
    return audio[start:end]


def save_take(out_dir: Path, name: str, audio: torch.Tensor, prompt: str) -> None:
    """``NAME.wav`` (16-bit) and ``NAME.txt``; the text last, so that a pair is whole once it exists."""
    wav = out_dir / f"{name}.wav"
    tmp = wav.with_name(f".{wav.name}.tmp")
    sf.write(str(tmp), audio.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, wav)
    with atomic_write(out_dir / f"{name}.txt") as f:
        f.write(prompt + "\n")


def level_meter(level_db: float, seconds: float) -> str:
    """``|#########.........| -18 dBFS  2.4 s``: the bar spans -60 to 0 dBFS."""
    filled = round(METER_WIDTH * min(1.0, max(0.0, (level_db + 60) / 60)))
    return f"|{'#' * filled}{'.' * (METER_WIDTH - filled)}| {level_db:4.0f} dBFS {seconds:5.1f} s"


def run_session(
    prompts: list[str],
    out_dir: str | os.PathLike,
    chunks: Iterator[torch.Tensor],
    ask: Callable[[str], str] = input,
    out: TextIO | None = None,
    live_meter: bool = False,
    config: RecordConfig | None = None,
    limit: int | None = None,
) -> int:
    """Show each prompt not yet recorded in ``out_dir``, record it from ``chunks`` and keep, redo
    or skip it as the answers to ``ask`` say (Enter records and keeps; r redo; s skip; q quit).
    Returns the number of takes written. ``live_meter`` redraws a level meter on one line."""
    import sys

    out = out or sys.stderr
    config = config or RecordConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = len(str(len(prompts)))
    todo = [(i, p) for i, p in enumerate(prompts, 1) if not (out_dir / f"{i:0{width}d}.txt").exists()]
    if len(todo) < len(prompts):
        print(f"{len(prompts) - len(todo)} of {len(prompts)} prompts already recorded in {out_dir}", file=out)
    written = 0

    def meter(level: float, seconds: float) -> None:
        out.write("\r  " + level_meter(level, seconds))
        out.flush()

    for number, prompt in todo[:limit]:
        name = f"{number:0{width}d}"
        print(f"\n[{number}/{len(prompts)}] {prompt}", file=out)
        answer = ask("  Enter: record, s: skip, q: quit > ").strip().lower()
        while answer not in ("s", "q"):
            print("  recording... (stops after a pause)", file=out)
            take = record_take(chunks, config, meter if live_meter else None)
            if live_meter:
                out.write("\r\033[K")
            problems = take_problems(take, config)
            peak = 20 * torch.log10(take.abs().max().clamp_min(1e-10)).item() if len(take) else -100.0
            status = "; ".join(problems) if problems else "ok"
            print(f"  {len(take) / SAMPLE_RATE:.1f} s, peak {peak:.0f} dBFS: {status}", file=out)
            answer = ask("  Enter: keep, r: redo, s: skip, q: quit > " if len(take) else
                         "  r: redo, s: skip, q: quit > ").strip().lower()
            if answer == "" and len(take):
                save_take(out_dir, name, take, prompt)
                print(f"  saved {name}.wav + {name}.txt", file=out)
                written += 1
                break
            if answer == "":
                answer = "r"
        if answer == "q":
            break
    print(f"\n{written} take(s) written to {out_dir}", file=out)
    return written
