"""Audio in: any file soundfile reads -> mono float32 at 16 kHz, shape ``(samples,)``.

Everything inside the library works on that contract. Errors a user can act on are raised as
:class:`AudioError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")  # what a folder of recordings is searched for


class AudioError(RuntimeError):
    """An audio file that cannot be used; the message is one line and names the file."""


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited sinc resampling (torchaudio's) along the last dimension: ``(..., samples)``."""
    if orig_rate == new_rate:
        return audio
    return _resampler(orig_rate, new_rate, audio.device, audio.dtype)(audio)


@functools.lru_cache(maxsize=32)
def _resampler(orig_rate: int, new_rate: int, device: torch.device, dtype: torch.dtype) -> T.Resample:
    """torchaudio's resampler with its sinc kernel built once per rate pair, device and dtype:
    building the kernel costs more than applying it to a few seconds of audio (speed
    perturbation of 4 s utterances: 2,400 audio seconds per CPU-second building it each
    time, 8,500 with it built once)."""
    return T.Resample(orig_rate, new_rate, dtype=dtype).to(device)


def resampled_length(samples: int, orig_rate: int, new_rate: int = SAMPLE_RATE) -> int:
    """Samples that :func:`resample` returns for ``samples`` input samples (torchaudio's rounding)."""
    gcd = math.gcd(orig_rate, new_rate)
    return math.ceil(new_rate // gcd * samples / (orig_rate // gcd))


def speed_rate(speed: float) -> int:
    """The rate 16 kHz audio is taken to be at so that resampling it to 16 kHz plays it ``speed``
    times faster (tempo and pitch, as a tape does)."""
    return int(SAMPLE_RATE * speed)


def change_speed(audio: torch.Tensor, speed: float) -> torch.Tensor:
    """Play 16 kHz audio ``(..., samples)`` ``speed`` times faster: ``(..., samples')`` with
    ``samples' = resampled_length(samples, speed_rate(speed))``."""
    return resample(audio, speed_rate(speed), SAMPLE_RATE)


def band_limit(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """16 kHz audio ``(..., samples)`` as if recorded at ``sample_rate``: nothing above
    ``sample_rate / 2`` is left (a telephone call, an 8 kHz recording); same shape."""
    return resample(resample(audio, SAMPLE_RATE, sample_rate), sample_rate)[..., : audio.shape[-1]]


def lowpass(audio: torch.Tensor, cutoff_hz: float) -> torch.Tensor:
    """A second-order low-pass filter of a 16 kHz waveform ``(samples,)``."""
    return AF.lowpass_biquad(audio, SAMPLE_RATE, cutoff_hz)


def room_impulse_response(rt60_s: float, drr_db: float, rng: np.random.Generator) -> torch.Tensor:
    """A statistical room impulse response ``(samples,)`` at 16 kHz: the direct sound, then
    Gaussian noise decaying by 60 dB over ``rt60_s`` (Polack's model of a diffuse late field),
    scaled so that the direct sound is ``drr_db`` above the reverberant energy. No room
    geometry: what a recogniser must learn is the smearing of each frame into the next ones,
    and a random tail gives that without a simulator or a corpus of measured rooms."""
    t = np.arange(1, max(2, int(rt60_s * SAMPLE_RATE))) / SAMPLE_RATE
    tail = rng.standard_normal(t.size) * np.exp(-3 * math.log(10) * t / rt60_s)
    tail *= math.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    tail = np.concatenate([[1.0], tail])
    return torch.from_numpy(tail.astype(np.float32))


def reverberate(audio: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``audio (samples,)`` heard through the room ``rir (taps,)``: same length (the tail past
    the end is cut, as a recording that stops would cut it) and the same energy."""
    wet = AF.fftconvolve(audio, rir.to(audio.device))[: audio.shape[-1]]
    scale = audio.norm() / wet.norm().clamp_min(1e-12)
    return wet * scale


def add_noise(audio: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``audio (samples,)`` plus ``noise (samples,)`` scaled to ``snr_db`` below it (energy ratio)."""
    return AF.add_noise(audio[None], noise[None], torch.tensor([snr_db], dtype=audio.dtype))[0]


# libsndfile's reasons, as a user can act on them. It says "File does not exist or is not a
# regular file" for an MP3 it cannot parse (its mpg123 reader fails to open), whatever the file is.
_SNDFILE_REASONS = {
    "Format not recognised": "not an audio file soundfile can read (unrecognised format)",
    "File does not exist or is not a regular file": "not an audio file soundfile can read (corrupt or not audio)",
    "Supported file format but file is malformed": "malformed audio file (truncated or corrupt)",
}

MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz: shorter audio gives the model no frame


def _reason(err: Exception) -> str:
    text = str(err).split(":", 1)[-1].strip() if ":" in str(err) else str(err)
    text = text.removeprefix("Error : ")
    for known, reason in _SNDFILE_REASONS.items():
        if text.startswith(known):
            return reason
    return text.rstrip(".")


def _open(path: str | os.PathLike) -> sf.SoundFile:
    """Open a file for reading, with the checks every reader shares (existence, size, header,
    a WAV's declared size); native decoders' warnings do not reach the terminal."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with quiet_native_stderr():
            handle = sf.SoundFile(path)
    except sf.LibsndfileError as err:
        raise AudioError(f"{path}: cannot read audio: {_reason(err)}") from None
    except OSError as err:  # e.g. a file that vanished or an I/O error
        raise AudioError(f"{path}: cannot read audio: {err.strerror or err}") from None
    if handle.format == "WAV":
        _check_wav_size(path, handle)
    elif handle.format == "OGG":
        _check_ogg_end(path, handle)
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


OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header, segment table, payload


def _check_ogg_end(path: Path, handle: sf.SoundFile) -> None:
    """libsndfile decodes a truncated Ogg Opus stream up to the cut and reports no error (its
    header gives no length to hold it to). A whole stream ends with a page that carries the
    end-of-stream flag and ends the file: look for it in the last page's reach."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - OGG_MAX_PAGE))
        tail = f.read()
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:  # "OggS" may also occur inside a payload
        header = tail[at : at + 27]
        if len(header) == 27 and header[5] & 0x04:
            segments = tail[at + 27 : at + 27 + header[26]]
            if len(segments) == header[26] and at + 27 + len(segments) + sum(segments) == len(tail):
                return
    handle.close()
    raise AudioError(f"{path}: truncated file (its Ogg stream has no end page)")


def _read(handle: sf.SoundFile, path: Path, frames: int = -1) -> np.ndarray:
    """``frames`` frames (all: -1) as float32 ``(frames, channels)``; a decoder error is an AudioError."""
    try:
        with quiet_native_stderr():  # mpg123 reports every resync on a damaged MP3
            return handle.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        raise AudioError(f"{path}: truncated or corrupt ({_reason(err)})") from None


def _check_complete(path: Path, handle: sf.SoundFile, read: int) -> None:
    """The checks after the last sample, shared by every reader: some audio, and (compressed
    formats) all the frames the header promised. A WAV's size was checked at opening; libsndfile
    stops early, without an error, on a truncated MP3."""
    if read == 0:
        raise AudioError(f"{path}: no audio samples (empty or truncated file)")
    expected = handle.frames
    if handle.format != "WAV" and 0 < expected and read < 0.99 * expected:
        raise AudioError(f"{path}: truncated file ({read} of {expected} frames readable)")
    if read * SAMPLE_RATE < MIN_SAMPLES * handle.samplerate:
        raise AudioError(f"{path}: too short ({1000 * read / handle.samplerate:.0f} ms of audio; "
                         f"at least {1000 * MIN_SAMPLES // SAMPLE_RATE} ms, one analysis window, is needed)")


def _to_mono_16k(block: np.ndarray, rate: int, path: Path) -> torch.Tensor:
    if not np.isfinite(block).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    mono = torch.from_numpy(block)
    if mono.ndim == 2:
        # a mono file's one column as it is (a view): averaging it would copy the samples
        mono = mono[:, 0] if mono.shape[1] == 1 else mono.mean(dim=1)
    return resample(mono, rate)


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """Read a whole file as mono float32 16 kHz ``(samples,)`` (channels are averaged).

    Accepts and refuses exactly the files :func:`iter_audio_blocks` does (same checks)."""
    path = Path(path)
    with _open(path) as handle:
        block = _read(handle, path)
        _check_complete(path, handle, len(block))
        rate = handle.samplerate
    return _to_mono_16k(block, rate, path)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header (cheap; does not decode)."""
    with _open(path) as handle:
        return handle.frames / handle.samplerate


def check_audio(path: str | os.PathLike, seconds: float = 60.0) -> float:
    """Decode a whole file in blocks (bounded memory) with every check the readers make;
    returns its duration in seconds, or raises :class:`AudioError`. For callers that must
    refuse a bad file before they act on any of it (``asr stream --file``, manifest validation)."""
    path = Path(path)
    with _open(path) as handle:
        block = max(1, int(seconds * handle.samplerate))
        read = 0
        while True:
            data = _read(handle, path, block)
            if not np.isfinite(data).all():
                raise AudioError(f"{path}: contains NaN or infinite samples")
            read += len(data)
            if len(data) < block:
                break
        _check_complete(path, handle, read)
        return read / handle.samplerate


def iter_audio_blocks(path: str | os.PathLike, seconds: float = 10.0) -> Iterator[torch.Tensor]:
    """Stream a file as consecutive mono 16 kHz blocks of about ``seconds`` each.

    Memory stays bounded however long the file. Blocks are resampled with a margin of
    context on both sides, and block edges fall on sample positions that map to whole output
    samples, so the concatenation equals resampling the whole file (to float tolerance).

    A file :func:`load_audio` refuses raises the same :class:`AudioError` here; a truncation
    that only shows at the end raises it after the blocks read so far.
    """
    path = Path(path)
    with _open(path) as handle:
        rate = handle.samplerate
        step = rate // math.gcd(rate, SAMPLE_RATE)  # native samples per whole output sample group
        block = max(step, int(seconds * rate) // step * step)
        margin = step * math.ceil(256 / step) if rate != SAMPLE_RATE else 0
        total = handle.frames
        read = 0  # native frames decoded, up to the end of the last block
        for start in range(0, total, block):
            lo = max(0, start - margin)
            hi = min(total, start + block + margin)
            handle.seek(lo)
            data = _read(handle, path, hi - lo)
            read = max(read, lo + len(data))
            if len(data) <= start - lo:  # nothing past the margin: the decoder ran dry
                break
            out = _to_mono_16k(data, rate, path)
            skip = (start - lo) * SAMPLE_RATE // rate
            keep = math.ceil(min(block, total - start, lo + len(data) - start) * SAMPLE_RATE / rate)
            yield out[skip : skip + keep]
        _check_complete(path, handle, read)


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


class StreamResampler:
    """Resample a stream block by block; the outputs, concatenated, equal :func:`resample` on
    the whole stream (to float tolerance) instead of clicking at every block edge.

    Each call resamples whole groups of ``orig_rate / gcd`` input samples with ``margin``
    samples of context on both sides; the last ``margin`` samples wait for the next block, so
    they add that much latency (0.5 ms from 48 kHz, 10 ms from 44.1 kHz).

    Shapes: ``(samples,)`` -> ``(samples',)``.
    """

    def __init__(self, orig_rate: int, new_rate: int = SAMPLE_RATE) -> None:
        gcd = math.gcd(orig_rate, new_rate)
        self.orig_rate, self.new_rate = orig_rate, new_rate
        self.group_in, self.group_out = orig_rate // gcd, new_rate // gcd
        # input samples that torchaudio's sinc kernel reaches on each side of an output
        # (its defaults: lowpass_filter_width 6, rolloff 0.99), rounded up to whole groups
        reach = math.ceil(6 * self.group_in / (0.99 * min(self.group_in, self.group_out)))
        self.margin = self.group_in * math.ceil(reach / self.group_in)
        self.buffer = torch.zeros(0)
        self.offset = 0  # stream index of buffer[0]
        self.done = 0  # stream index up to which outputs were returned (whole groups)

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        self.buffer = torch.cat([self.buffer, torch.as_tensor(block, dtype=torch.float32)])
        target = (self.offset + len(self.buffer) - self.margin) // self.group_in * self.group_in
        if target <= self.done:
            return self.buffer.new_zeros(0)
        lo = max(0, self.done - self.margin)
        out = resample(self.buffer[lo - self.offset : target + self.margin - self.offset], self.orig_rate, self.new_rate)
        skip = (self.done - lo) // self.group_in * self.group_out
        out = out[skip : skip + (target - self.done) // self.group_in * self.group_out]
        self.done = target
        keep = max(0, self.done - self.margin)
        self.buffer = self.buffer[keep - self.offset :]
        self.offset = keep
        return out


# ---------------------------------------------------------------------------------------------
# Native libraries' chatter on stderr (PortAudio, ALSA, KenLM, mpg123)


_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_stderr = -1  # the real stderr while it is muted


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block, where C and C++ libraries write directly:
    ALSA and PortAudio print several lines for each setting a device refuses (a refusal is an
    answer there, not an error), KenLM announces each LM it loads, mpg123 each resync in a
    damaged MP3. The descriptor is process-wide, so nested and concurrent blocks (manifest
    validation decodes in threads) share one redirection: the first in sets it, the last out
    restores it. Python's own messages written meanwhile are lost too; keep the blocks short."""
    global _quiet_depth, _saved_stderr
    with _quiet_lock:
        if _quiet_depth == 0:
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            _saved_stderr = saved
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                _restore_stderr()


def _restore_stderr() -> None:
    global _saved_stderr
    saved, _saved_stderr = _saved_stderr, -1
    if saved >= 0:
        os.dup2(saved, 2)
        os.close(saved)


def restore_native_stderr() -> None:
    """Unmute stderr whatever blocks were interrupted (KeyboardInterrupt can land inside
    :func:`quiet_native_stderr`'s own bookkeeping); for a program about to report and exit."""
    global _quiet_depth
    _quiet_depth = 0
    _restore_stderr()


def audio_files(directory: str | os.PathLike) -> list[Path]:
    """Audio files under ``directory`` (recursively, by extension), sorted."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
