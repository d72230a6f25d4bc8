"""Offline acoustic model: conv subsampling + deep recurrent stack (a BiLSTM by default) + linear -> CTC log-probs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from asr.features import VTLP, GlobalCMVN, SpecAugment
from asr.models.recurrent import RecurrentStack
from asr.models.subsampling import ConvSubsampling


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 40
    max_time_ratio: float = 0.2


@dataclass
class RNNCTCConfig:
    n_mels: int = 80
    vocab_size: int = 29
    conv_channels: int = 32
    time_stride: int = 4  # 2, 3 or 4: total time subsampling of the two convolutions
    cell: str = "lstm"  # or "gru" (tools/compare_rnns.py)
    bidirectional: bool = True
    hidden_size: int = 256  # per direction
    num_layers: int = 3
    # LayerNorm after each recurrent layer, with a residual connection where the widths match:
    # without it, stacks of four layers sat on CTC's all-blank plateau for 2,000+ updates
    layer_norm: bool = False
    dropout: float = 0.2
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    vtlp: float = 0.0  # max vocal-tract-length warp in training: factors in [1 - vtlp, 1 + vtlp]


class RNNCTC(nn.Module):
    """VTLP and SpecAugment (training only) around global CMVN -> conv subsampling -> recurrent
    stack (LSTM or GRU, ``bidirectional`` or not) -> linear.

    Variable lengths are handled by :class:`~asr.models.recurrent.RecurrentStack` (padding
    never reaches a valid frame).

    Shapes: features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` ->
    log-probs ``(batch, frames', vocab)`` + lengths ``(batch,)``, ``frames' = ceil(frames / time_stride)``.
    """

    def __init__(self, config: RNNCTCConfig) -> None:
        super().__init__()
        self.config = config
        self.cmvn = GlobalCMVN(config.n_mels)
        self.vtlp = VTLP(config.vtlp)
        self.specaugment = SpecAugment(**vars(config.specaugment))
        self.subsampling = ConvSubsampling(config.n_mels, config.conv_channels, config.time_stride)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = RecurrentStack(config.cell, self.subsampling.out_dim, config.hidden_size, config.num_layers,
                                      config.bidirectional, config.dropout, config.layer_norm)
        self.output = nn.Linear(self.encoder.output_size, config.vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.subsampling.output_lengths(lengths)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.specaugment(self.cmvn(self.vtlp(feats)), lengths)
        x, out_lengths = self.subsampling(x, lengths)
        x = self.encoder(self.dropout(x), out_lengths)
        x = self.output(self.dropout(x))
        return x.float().log_softmax(dim=-1), out_lengths  # float32 also under autocast
