"""Convolutional subsampling of log-mel frames, shared by both models; causal for streaming."""

from __future__ import annotations

import torch
from torch import nn

KERNEL = 3  # time (and frequency) size of the convolutions
STRIDES = {2: (2, 1), 3: (3, 1), 4: (2, 2)}  # total time stride -> each convolution's


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(batch,)`` lengths -> ``(batch, max_len)`` bool mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def output_lengths(lengths: torch.Tensor, time_stride: int) -> torch.Tensor:
    """Output frames of ``lengths`` feature frames: ``ceil(lengths / time_stride)``."""
    for stride in STRIDES[time_stride]:
        lengths = (lengths - 1) // stride + 1
    return lengths


class ConvSubsampling(nn.Module):
    """Two 3x3 conv layers with batch norm and ReLU; frequency stride 2 each; time strides
    (2, 1), (3, 1) or (2, 2).

    Batch norm (as in Deep Speech 2) shortens CTC's initial all-blank plateau markedly; at
    inference it is a fixed affine map per output frame, so streaming and batching are unaffected.

    Not ``causal``: time padding of one frame on each side, and padded frames zeroed before each
    conv, so a batched utterance gives the same output as the utterance alone. ``causal``: time
    padding on the left only (``KERNEL - 1`` frames), so output frame ``j`` depends on input
    frames up to ``time_stride * j`` and nothing later: padding after an utterance never
    reaches its valid frames, and :meth:`step` runs chunk by chunk.

    Shapes: ``(batch, frames, n_mels)`` + ``(batch,)`` -> ``(batch, ceil(frames / time_stride), out_dim)``.
    """

    def __init__(self, n_mels: int, channels: int, time_stride: int, causal: bool = False) -> None:
        super().__init__()
        if time_stride not in STRIDES:
            raise ValueError(f"time_stride must be 2, 3 or 4, got {time_stride}")
        self.time_stride = time_stride
        self.strides = STRIDES[time_stride]
        self.causal = causal
        time_padding = 0 if causal else 1
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, channels, KERNEL, stride=(s, 2), padding=(time_padding, 1)),
                          nn.BatchNorm2d(channels))
            for c_in, s in zip((1, channels), self.strides)
        )
        bins = [n_mels, (n_mels + 1) // 2, ((n_mels + 1) // 2 + 1) // 2]  # into, between, out of the convs
        self.in_shapes = [(1, bins[0]), (channels, bins[1])]  # (channels, bins) entering each conv
        self.out_shapes = [(channels, bins[1]), (channels, bins[2])]
        self.out_dim = channels * bins[2]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return output_lengths(lengths, self.time_stride)

    @staticmethod
    def flatten(x: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, frames, bins)`` -> ``(batch, frames, channels * bins)``."""
        batch, channels, frames, bins = x.shape
        return x.permute(0, 2, 1, 3).reshape(batch, frames, channels * bins)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, valid = feats.unsqueeze(1), lengths  # (batch, 1, frames, mels); valid frames entering each conv
        for conv, stride in zip(self.convs, self.strides):
            if self.causal:
                x = nn.functional.pad(x, (0, 0, KERNEL - 1, 0))
            else:
                x = x * lengths_to_mask(valid, x.shape[2])[:, None, :, None]
                valid = (valid - 1) // stride + 1
            x = torch.relu(conv(x))
        return self.flatten(x), self.output_lengths(lengths)

    def initial_cache(self, device: torch.device, batch: int = 1) -> list[torch.Tensor]:
        """The left padding of each causal conv: ``KERNEL - 1`` zero frames."""
        return [torch.zeros(batch, c, KERNEL - 1, bins, device=device) for c, bins in self.in_shapes]

    def step(self, feats: torch.Tensor, cache: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Causal only: ``(batch, frames, n_mels)`` -> ``(batch, frames', out_dim)``, every output
        whose inputs have arrived, and the frames each conv has not consumed yet."""
        x = feats.unsqueeze(1)
        new_cache = []
        for conv, stride, left, (channels, bins) in zip(self.convs, self.strides, cache, self.out_shapes):
            x = torch.cat([left, x], dim=2)
            count = max(0, (x.shape[2] - KERNEL) // stride + 1)
            new_cache.append(x[:, :, count * stride :])
            x = torch.relu(conv(x)) if count else x.new_zeros(x.shape[0], channels, 0, bins)
        return self.flatten(x), new_cache

