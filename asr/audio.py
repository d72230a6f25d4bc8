"""Audio in: any file soundfile reads -> mono float32 at 16 kHz, shape ``(samples,)``.

Everything inside the library works on that contract. Errors a user can act on are raised as
:class:`AudioError` with a one-line message naming the file.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000


class AudioError(RuntimeError):
    """An audio file that cannot be used; the message is one line and names the file."""


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited sinc resampling (torchaudio) along the last dimension."""
    if orig_rate == new_rate:
        return audio
    return AF.resample(audio, orig_rate, new_rate)


def _open(path: str | os.PathLike) -> sf.SoundFile:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        handle = sf.SoundFile(path)
    except sf.LibsndfileError as err:
        reason = str(err).split(":", 1)[-1].strip() if ":" in str(err) else str(err)
        raise AudioError(f"{path}: cannot read audio ({reason})") from None
    if handle.format == "WAV":
        _check_wav_size(path, handle)
    return handle


def _check_wav_size(path: Path, handle: sf.SoundFile) -> None:
    """libsndfile silently shortens a truncated WAV; its RIFF header still tells the size."""
    with open(path, "rb") as f:
        header = f.read(8)
    if len(header) == 8 and header[:4] == b"RIFF":
        declared = struct.unpack("<I", header[4:])[0] + 8
        if declared > path.stat().st_size and declared != 0xFFFFFFFF + 8:
            handle.close()
            raise AudioError(
                f"{path}: truncated file (header declares {declared} bytes, "
                f"file has {path.stat().st_size})"
            )


def _to_mono_16k(block: np.ndarray, rate: int, path: Path) -> torch.Tensor:
    if not np.isfinite(block).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    mono = torch.from_numpy(block).mean(dim=1) if block.ndim == 2 else torch.from_numpy(block)
    return resample(mono, rate)


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """Read a whole file as mono float32 16 kHz ``(samples,)`` (channels are averaged)."""
    path = Path(path)
    with _open(path) as handle:
        try:
            block = handle.read(dtype="float32", always_2d=True)
        except sf.LibsndfileError as err:
            raise AudioError(f"{path}: truncated or corrupt ({err})") from None
        expected = handle.frames
        rate = handle.samplerate
    if len(block) == 0:
        raise AudioError(f"{path}: no audio samples (empty or truncated file)")
    if handle.format not in ("WAV",) and 0 < expected and len(block) < 0.99 * expected:
        raise AudioError(f"{path}: truncated file ({len(block)} of {expected} frames readable)")
    return _to_mono_16k(block, rate, path)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header (cheap; does not decode)."""
    with _open(path) as handle:
        return handle.frames / handle.samplerate


def iter_audio_blocks(path: str | os.PathLike, seconds: float = 10.0) -> Iterator[torch.Tensor]:
    """Stream a file as consecutive mono 16 kHz blocks of about ``seconds`` each.

    Memory stays bounded however long the file. Blocks are resampled with a margin of
    context on both sides, and block edges fall on sample positions that map to whole output
    samples, so the concatenation equals resampling the whole file (to float tolerance).
    """
    path = Path(path)
    with _open(path) as handle:
        rate = handle.samplerate
        step = rate // math.gcd(rate, SAMPLE_RATE)  # native samples per whole output sample group
        block = max(step, int(seconds * rate) // step * step)
        margin = step * math.ceil(256 / step) if rate != SAMPLE_RATE else 0
        total = handle.frames
        produced = 0
        for start in range(0, total, block):
            lo = max(0, start - margin)
            hi = min(total, start + block + margin)
            handle.seek(lo)
            try:
                data = handle.read(hi - lo, dtype="float32", always_2d=True)
            except sf.LibsndfileError as err:
                raise AudioError(f"{path}: truncated or corrupt ({err})") from None
            if len(data) == 0:
                break
            out = _to_mono_16k(data, rate, path)
            skip = (start - lo) * SAMPLE_RATE // rate
            keep = math.ceil(min(block, total - start) * SAMPLE_RATE / rate)
            chunk = out[skip : skip + keep]
            produced += len(chunk)
            yield chunk
        if produced == 0:
            raise AudioError(f"{path}: no audio samples (empty or truncated file)")


def split_on_silence(
    blocks: Iterator[torch.Tensor], max_seconds: float = 30.0, min_seconds: float = 15.0
) -> Iterator[tuple[float, torch.Tensor]]:
    """Cut a long stream into segments of at most ``max_seconds`` at its quietest points.

    Yields ``(start_seconds, segment)``. A cut is placed at the centre of the lowest-energy
    100 ms window between ``min_seconds`` and ``max_seconds`` of the pending audio, so words
    are rarely split (bounded memory for arbitrarily long recordings).
    """
    max_len, min_len = int(max_seconds * SAMPLE_RATE), int(min_seconds * SAMPLE_RATE)
    win = SAMPLE_RATE // 10
    pending = torch.zeros(0)
    offset = 0
    for block in blocks:
        pending = torch.cat([pending, block])
        while len(pending) >= max_len:
            region = pending[min_len:max_len]
            energy = region[: len(region) // win * win].reshape(-1, win).pow(2).mean(dim=1)
            cut = min_len + int(energy.argmin()) * win + win // 2
            yield offset / SAMPLE_RATE, pending[:cut]
            offset += cut
            pending = pending[cut:]
    if len(pending):
        yield offset / SAMPLE_RATE, pending
