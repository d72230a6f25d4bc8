"""The microphone: fixed-size chunks of mono float32 16 kHz audio from an input device
(sounddevice and PortAudio, the optional ``mic`` extra, imported only when a device is opened)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from asr.audio import SAMPLE_RATE, StreamResampler, quiet_native_stderr


class MicrophoneError(RuntimeError):
    """A microphone that cannot be used; the message is one line and says what to do."""


NO_INPUT_DEVICE = (
    "no audio input device found; connect a microphone (or check that ALSA/PulseAudio expose one: "
    "asr stream --list-devices), or stream a file with --file"
)


def _sounddevice():
    try:
        import sounddevice
    except OSError:  # sounddevice's own import fails this way without the PortAudio library
        raise MicrophoneError("PortAudio library not found: apt-get install libportaudio2") from None
    except ImportError:
        raise MicrophoneError("sounddevice is not installed: pip install 'asr[mic]'") from None
    return sounddevice


@dataclass
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: int
    is_default: bool


def list_input_devices() -> list[InputDevice]:
    """PortAudio's devices that can capture, in its order."""
    sd = _sounddevice()
    default = sd.default.device[0]
    if default is None or default < 0:
        try:
            default = sd.query_devices(kind="input")["index"]
        except sd.PortAudioError:  # "Error querying device -1": no default input
            default = -1
    return [
        InputDevice(d["index"], d["name"], d["max_input_channels"], int(d["default_samplerate"]), d["index"] == default)
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def _input_device(sd, device: str | int | None) -> dict:
    devices = list_input_devices()
    if not devices:
        raise MicrophoneError(NO_INPUT_DEVICE)
    try:
        return sd.query_devices(device, kind="input")
    except (ValueError, sd.PortAudioError) as err:
        if device is None:
            raise MicrophoneError("no default audio input device; choose one with --device (see --list-devices)") from None
        names = ", ".join(f"{d.index}: {d.name!r}" for d in devices)
        raise MicrophoneError(f"no input device {device!r} ({err}); available: {names}") from None


def _capture_settings(sd, info: dict) -> tuple[int, int]:
    """16 kHz if the device takes it, else its default rate; mono, else up to two channels."""
    native = int(info["default_samplerate"])
    for rate in dict.fromkeys((SAMPLE_RATE, native)):
        for channels in dict.fromkeys((1, min(2, info["max_input_channels"]))):
            try:
                with quiet_native_stderr():
                    sd.check_input_settings(device=info["index"], samplerate=rate, channels=channels, dtype="int16")
                return rate, channels
            except sd.PortAudioError:
                continue
    raise MicrophoneError(f"input device {info['name']!r} takes neither {SAMPLE_RATE} Hz nor its default {native} Hz")


class Microphone:
    """Fixed-size chunks of mono float32 16 kHz audio ``(chunk_samples,)`` from an input device.

    >>> with Microphone("fakemic", chunk_seconds=0.16) as mic:  # doctest: +SKIP
    ...     for chunk in mic:  # 2560 samples each, as long as the caller keeps reading
    ...         ...

    Captures 16-bit samples (what devices deliver; some ALSA plugin chains lose samples when
    asked for float) at 16 kHz when the device allows it, else at its default rate, resampled
    with :class:`StreamResampler`. Reads block: if the caller falls behind, the device drops
    audio (counted in ``overflows``) rather than a queue growing without bound.

    Args:
        device: PortAudio device name (or a unique part of it) or index; None: the default input.
        chunk_seconds: duration of each chunk.
    """

    def __init__(self, device: str | int | None = None, chunk_seconds: float = 0.16) -> None:
        sd = _sounddevice()
        info = _input_device(sd, device)
        self.name = info["name"]
        self.capture_rate, self.channels = _capture_settings(sd, info)
        self.chunk_samples = round(chunk_seconds * SAMPLE_RATE)
        if self.chunk_samples <= 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self._read_samples = math.ceil(self.chunk_samples * self.capture_rate / SAMPLE_RATE)
        self._resampler = StreamResampler(self.capture_rate) if self.capture_rate != SAMPLE_RATE else None
        self._pending = torch.zeros(0)
        self.overflows = 0
        try:
            self._stream = sd.InputStream(
                device=info["index"], samplerate=self.capture_rate, channels=self.channels, dtype="int16"
            )
            self._stream.start()
        except sd.PortAudioError as err:
            raise MicrophoneError(f"cannot open input device {self.name!r}: {err}") from None

    def read(self) -> torch.Tensor:
        """The next chunk (blocks until it has been captured)."""
        while len(self._pending) < self.chunk_samples:
            data, overflowed = self._stream.read(self._read_samples)
            self.overflows += bool(overflowed)
            mono = torch.from_numpy(data.mean(axis=1, dtype=np.float32) / 32768)
            if self._resampler is not None:
                mono = self._resampler(mono)
            self._pending = torch.cat([self._pending, mono])
        chunk, self._pending = self._pending[: self.chunk_samples], self._pending[self.chunk_samples :]
        return chunk

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.read()

    def close(self) -> None:
        self._stream.abort()  # stop() would wait for buffers a stalled device may never fill
        self._stream.close()

    def __enter__(self) -> Microphone:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
