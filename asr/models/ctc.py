"""What both acoustic models share: the features' way in (VTLP and SpecAugment in training,
global CMVN, conv subsampling) and the configuration of SpecAugment."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asr.features import VTLP, GlobalCMVN, SpecAugment
from asr.models.subsampling import ConvSubsampling


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 40
    max_time_ratio: float = 0.2


class CTCModel(nn.Module):
    """The base of both models: ``config`` has ``n_mels``, ``conv_channels``, ``time_stride``,
    ``dropout``, ``specaugment`` and ``vtlp``; subclasses add their recurrence and output layer.

    Shapes: :meth:`subsample`: features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` ->
    ``(batch, frames', subsampling.out_dim)`` + lengths ``(batch,)``, ``frames' = ceil(frames / time_stride)``.
    """

    def __init__(self, config, causal: bool) -> None:
        super().__init__()
        self.config = config
        self.cmvn = GlobalCMVN(config.n_mels)
        self.vtlp = VTLP(config.vtlp)
        self.specaugment = SpecAugment(**vars(config.specaugment))
        self.subsampling = ConvSubsampling(config.n_mels, config.conv_channels, config.time_stride, causal)
        self.dropout = nn.Dropout(config.dropout)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.subsampling.output_lengths(lengths)

    def subsample(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VTLP and SpecAugment (training only) around CMVN, then the convolutions."""
        return self.subsampling(self.specaugment(self.cmvn(self.vtlp(feats)), lengths), lengths)
