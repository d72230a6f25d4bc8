"""Log-mel features, global mean/variance normalisation, SpecAugment and VTLP.

Shapes: audio ``(batch, samples)`` at 16 kHz; features ``(batch, frames, n_mels)``.
Frames are 25 ms windows every 10 ms with no padding at the edges (Kaldi's ``snip_edges``):
frame ``t`` covers samples ``[160 t, 160 t + 400)``, so a signal of ``n >= 400`` samples has
``1 + (n - 400) // 160`` frames. Because no frame looks past its own window, a streaming
frontend can produce exactly the same frames chunk by chunk.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from asr.audio import SAMPLE_RATE

WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
F_MIN, F_MAX = 20.0, SAMPLE_RATE / 2  # mel filterbank edges
LOG_FLOOR = 1e-6  # about -60 dB below a full-scale sine's mel energy: below any real signal


def num_frames(num_samples: torch.Tensor | int) -> torch.Tensor | int:
    """Frames produced for ``num_samples`` samples (0 if shorter than one window)."""
    if isinstance(num_samples, torch.Tensor):
        return torch.clamp((num_samples - WIN_LENGTH) // HOP_LENGTH + 1, min=0)
    return max(0, (num_samples - WIN_LENGTH) // HOP_LENGTH + 1)


class LogMelFrontend(nn.Module):
    """Waveform to log-mel filterbank energies.

    Power spectrum of a Hann-windowed 25 ms frame (512-point FFT), HTK mel filterbank from
    20 Hz to 8 kHz, natural log with a floor. ``dither`` adds Gaussian noise of that standard
    deviation (in units of full scale) in training mode only, so silence does not give the
    model a degenerate constant input. In every mode the mel energies are floored at that
    noise's expected energy in each bin: digital silence (exact zeros, which recordings and
    padding are full of) then reads as the faint noise the model was trained on, rather than
    as a level it never heard. The floor is a per-frame operation, so streaming is unchanged.

    Args:
        n_mels: number of mel bins.
        dither: noise added to the waveform while ``self.training``; the mel energy floor.
            Use the training value at inference too (the checkpoint's ``dither``).

    Shapes: ``(batch, samples)`` + lengths ``(batch,)`` -> ``(batch, frames, n_mels)`` + ``(batch,)``.
    """

    def __init__(self, n_mels: int = 80, dither: float = 0.0) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.dither = dither
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=N_FFT,
            win_length=WIN_LENGTH,
            hop_length=HOP_LENGTH,
            f_min=F_MIN,
            f_max=F_MAX,
            n_mels=n_mels,
            window_fn=torch.hann_window,
            wkwargs={"periodic": False},
            power=2.0,
            center=False,
            mel_scale="htk",
        )
        # white noise of variance d^2 has expected power d^2 * sum(window^2) in every FFT bin
        window = torch.hann_window(WIN_LENGTH, periodic=False)
        noise_energy = dither**2 * window.square().sum() * self.mel.mel_scale.fb.sum(dim=0)
        self.register_buffer("floor", noise_energy.clamp_min(LOG_FLOOR), persistent=False)

    def forward(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[1], device=audio.device)
        # torch.stft centres the 400-sample window inside each 512-sample FFT frame; padding
        # both sides by the difference makes frame t start at sample 160 t as documented.
        pad = (N_FFT - WIN_LENGTH) // 2
        audio = nn.functional.pad(audio, (pad, pad + max(0, WIN_LENGTH - audio.shape[1])))
        if self.training and self.dither > 0:
            audio = audio + self.dither * torch.randn_like(audio)
        with torch.autocast(audio.device.type, enabled=False):
            feats = torch.maximum(self.mel(audio.float()).transpose(1, 2), self.floor).log()
        return feats, num_frames(lengths)


class GlobalCMVN(nn.Module):
    """Normalise features with one mean and standard deviation per bin, from training data.

    The statistics are buffers, so they travel in the model's ``state_dict`` (and thus the
    checkpoint). Never per utterance: streaming and offline must see identical inputs.

    Shapes: ``(batch, frames, n_mels)`` -> same.
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    @torch.no_grad()
    def set_stats(self, total: torch.Tensor, total_sq: torch.Tensor, count: int) -> None:
        """Set from accumulated per-bin sums over ``count`` frames (see :func:`accumulate_stats`)."""
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(1e-8)
        self.mean.copy_(mean)
        self.std.copy_(var.sqrt())


def accumulate_stats(feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-bin sum and sum of squares over the valid frames of a batch, in float64."""
    mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]
    valid = feats[mask].double()
    return valid.sum(dim=0), valid.square().sum(dim=0), valid.shape[0]


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019), active in training mode only.

    Applied to normalised features, so a masked value of 0 is the training mean. Time masks
    are capped at ``max_time_ratio`` of each utterance's length so short utterances keep most
    of their frames.

    Shapes: ``(batch, frames, n_mels)`` + lengths ``(batch,)`` -> ``(batch, frames, n_mels)``.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 2,
        time_width: int = 40,
        max_time_ratio: float = 0.2,
    ) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.max_time_ratio = max_time_ratio

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        batch, frames, bins = feats.shape
        keep = torch.ones_like(feats, dtype=torch.bool)
        bin_idx = torch.arange(bins, device=feats.device)
        frame_idx = torch.arange(frames, device=feats.device)
        for _ in range(self.freq_masks):
            width = torch.randint(0, self.freq_width + 1, (batch, 1), device=feats.device)
            start = (torch.rand(batch, 1, device=feats.device) * (bins - width)).long()
            keep &= ~((bin_idx >= start) & (bin_idx < start + width))[:, None, :]
        max_width = torch.clamp((lengths.to(feats.device) * self.max_time_ratio).long(), max=self.time_width)
        for _ in range(self.time_masks):
            width = (torch.rand(batch, device=feats.device) * (max_width + 1)).long()[:, None]
            start = (torch.rand(batch, 1, device=feats.device) * (lengths.to(feats.device)[:, None] - width).clamp_min(1)).long()
            keep &= ~((frame_idx >= start) & (frame_idx < start + width))[:, :, None]
        return feats * keep


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_bin_centres(n_mels: int, f_min: float = F_MIN, f_max: float = F_MAX) -> torch.Tensor:
    """Centre frequencies in Hz of :class:`LogMelFrontend`'s HTK mel filters, ``(n_mels,)``."""
    mel = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)[1:-1]
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def warp_mel_bins(feats: torch.Tensor, alpha: torch.Tensor, f_min: float = F_MIN, f_max: float = F_MAX) -> torch.Tensor:
    """Vocal-tract-length warp of log-mel features: what bin ``j`` (centre ``f_j``) would hold
    for a talker whose spectrum is this one's scaled in frequency by ``alpha``, i.e. the
    energy the input had at ``f_j / alpha``, interpolated linearly between bins (clamped at
    the edges). ``alpha > 1`` moves formants up (a shorter vocal tract), ``< 1`` down.

    Shapes: ``(batch, frames, n_mels)`` + ``alpha (batch,)`` -> ``(batch, frames, n_mels)``.
    """
    n_mels = feats.shape[-1]
    centres = mel_bin_centres(n_mels, f_min, f_max)  # evenly spaced in mel
    mels = hz_to_mel(centres)
    source = (hz_to_mel(centres / alpha.detach().cpu().double()[:, None]) - mels[0]) / (mels[1] - mels[0])
    source = source.clamp(0, n_mels - 1).to(feats.device, feats.dtype)  # (batch, n_mels) fractional bins
    low = source.floor().long().clamp(max=n_mels - 2)
    weight = (source - low)[:, None, :]
    low = low[:, None, :].expand(-1, feats.shape[1], -1)
    return feats.gather(2, low) * (1 - weight) + feats.gather(2, low + 1) * weight


class VTLP(nn.Module):
    """Vocal tract length perturbation (Jaitly and Hinton, 2013) on log-mel features, in
    training mode only: each utterance is warped by :func:`warp_mel_bins` with a factor drawn
    uniformly from ``[1 - max_warp, 1 + max_warp]``, so one talker stands in for talkers
    with longer and shorter vocal tracts. Applied before CMVN, on the frontend's output.

    Shapes: ``(batch, frames, n_mels)`` -> same.
    """

    def __init__(self, max_warp: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= max_warp < 0.5:
            raise ValueError(f"max_warp must be in [0, 0.5), got {max_warp}")
        self.max_warp = max_warp

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_warp == 0.0:
            return feats
        alpha = 1.0 + self.max_warp * (2.0 * torch.rand(feats.shape[0], device=feats.device) - 1.0)
        return warp_mel_bins(feats, alpha)


class StreamingLogMel:
    """:class:`LogMelFrontend` on audio that arrives in chunks of any size.

    Each call returns the frames whose 25 ms window is complete and keeps the samples that
    later frames still need, so the frames of all calls, concatenated, are those of
    ``LogMelFrontend`` on the whole signal (frame ``t`` covers samples ``[160 t, 160 t + 400)``
    whatever the chunking). For inference: ``dither`` only sets the energy floor.

    >>> stream = StreamingLogMel()
    >>> stream.accept_audio(torch.zeros(320)).shape, stream.accept_audio(torch.zeros(320)).shape
    (torch.Size([1, 0, 80]), torch.Size([1, 2, 80]))

    Shapes: audio ``(samples,)`` -> features ``(1, frames, n_mels)``.
    """

    def __init__(self, n_mels: int = 80, dither: float = 0.0) -> None:
        self.frontend = LogMelFrontend(n_mels, dither).eval()
        self.n_mels = n_mels
        self.reset()

    def reset(self) -> None:
        """Forget the pending samples (start of a new, unrelated signal)."""
        self.tail = torch.zeros(0)

    def to(self, device: torch.device | str) -> StreamingLogMel:
        self.frontend.to(device)
        self.tail = self.tail.to(device)
        return self

    def accept_audio(self, chunk: torch.Tensor) -> torch.Tensor:
        chunk = torch.as_tensor(chunk, dtype=torch.float32, device=self.tail.device)
        if chunk.dim() != 1:
            raise ValueError(f"expected mono audio (samples,), got shape {tuple(chunk.shape)}")
        audio = torch.cat([self.tail, chunk])
        frames = num_frames(audio.shape[0])
        if frames == 0:
            self.tail = audio
            return audio.new_zeros(1, 0, self.n_mels)
        with torch.no_grad():
            feats, _ = self.frontend(audio[None, : (frames - 1) * HOP_LENGTH + WIN_LENGTH])
        self.tail = audio[frames * HOP_LENGTH :]
        return feats

    @staticmethod
    def accept_audio_many(streams: list[StreamingLogMel], chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`accept_audio` of each stream's chunk, in one call of the frontend for all (a
        server's streams): the samples each stream's new frames cover are laid end to end, each
        stream's starting a whole number of hops after the last one's frames, and the frames
        that straddle two streams are dropped. A frame's window sees only its own stream's
        samples, so each stream gets the frames it would get alone.

        Shapes: audio ``(samples,)`` each -> features ``(1, frames, n_mels)`` each."""
        pieces, spans, offset = [], [], 0  # offset: in hops
        for stream, chunk in zip(streams, chunks):
            audio = torch.cat([stream.tail, torch.as_tensor(chunk, dtype=torch.float32, device=stream.tail.device)])
            frames = num_frames(audio.shape[0])
            stream.tail = audio[frames * HOP_LENGTH :]
            spans.append((offset, frames))
            if frames:
                # (frames - 1) hops + a window = (frames + 2) hops - 80 samples: padded to whole hops
                used = audio[: (frames - 1) * HOP_LENGTH + WIN_LENGTH]
                pieces += [used, used.new_zeros((frames + 2) * HOP_LENGTH - used.shape[0])]
                offset += frames + 2
        n_mels = streams[0].n_mels
        if not pieces:
            return [torch.zeros(1, 0, n_mels) for _ in streams]
        with torch.no_grad():
            feats, _ = streams[0].frontend(torch.cat(pieces)[None])
        return [feats[:, start : start + frames] for start, frames in spans]
