"""Offline acoustic model: conv subsampling + deep recurrent stack (a BiLSTM by default) + linear -> CTC log-probs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from asr.models.ctc import CTCModel, SpecAugmentConfig
from asr.models.recurrent import RecurrentStack


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


class RNNCTC(CTCModel):
    """VTLP and SpecAugment (training only) around global CMVN -> conv subsampling -> recurrent
    stack (LSTM or GRU, ``bidirectional`` or not) -> linear.

    Variable lengths are handled by :class:`~asr.models.recurrent.RecurrentStack` (padding
    never reaches a valid frame).

    Shapes: features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` ->
    log-probs ``(batch, frames', vocab)`` + lengths ``(batch,)``, ``frames' = ceil(frames / time_stride)``.
    """

    def __init__(self, config: RNNCTCConfig) -> None:
        super().__init__(config, causal=False)
        self.encoder = RecurrentStack(config.cell, self.subsampling.out_dim, config.hidden_size, config.num_layers,
                                      config.bidirectional, config.dropout, config.layer_norm)
        self.output = nn.Linear(self.encoder.output_size, config.vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.subsample(feats, lengths)
        x = self.encoder(self.dropout(x), out_lengths)
        x = self.output(self.dropout(x))
        return x.float().log_softmax(dim=-1), out_lengths  # float32 also under autocast
