"""Offline acoustic model: conv subsampling + deep bidirectional LSTM + linear -> CTC log-probs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.features import VTLP, GlobalCMVN, SpecAugment


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 40
    max_time_ratio: float = 0.2


@dataclass
class BLSTMCTCConfig:
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


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(batch,)`` lengths -> ``(batch, max_len)`` bool mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class ConvSubsampling(nn.Module):
    """Two 3x3 conv layers with batch norm and ReLU; frequency stride 2 each; time strides
    (2, 1), (3, 1) or (2, 2).

    Batch norm (as in DeepSpeech 2) shortens CTC's initial all-blank plateau markedly; at
    inference it is a fixed affine map, so streaming and batching are unaffected. Padded
    frames are zeroed before each conv so a batched utterance gives the same output as the
    utterance alone.

    Shapes: ``(batch, frames, n_mels)`` + ``(batch,)`` -> ``(batch, frames', channels * n_mels')``.
    """

    def __init__(self, n_mels: int, channels: int, time_stride: int) -> None:
        super().__init__()
        strides = {2: (2, 1), 3: (3, 1), 4: (2, 2)}
        if time_stride not in strides:
            raise ValueError(f"time_stride must be 2, 3 or 4, got {time_stride}")
        self.strides = strides[time_stride]
        self.conv1 = nn.Sequential(nn.Conv2d(1, channels, 3, stride=(self.strides[0], 2), padding=1), nn.BatchNorm2d(channels))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=(self.strides[1], 2), padding=1), nn.BatchNorm2d(channels))
        self.out_dim = channels * (((n_mels + 1) // 2 + 1) // 2)

    @staticmethod
    def _out_len(lengths: torch.Tensor, stride: int) -> torch.Tensor:
        return (lengths - 1) // stride + 1

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for s in self.strides:
            lengths = self._out_len(lengths, s)
        return lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.unsqueeze(1)  # (batch, 1, frames, mels)
        for conv, stride in ((self.conv1, self.strides[0]), (self.conv2, self.strides[1])):
            x = x * lengths_to_mask(lengths, x.shape[2])[:, None, :, None]
            x = torch.relu(conv(x))
            lengths = self._out_len(lengths, stride)
        batch, channels, frames, mels = x.shape
        return x.permute(0, 2, 1, 3).reshape(batch, frames, channels * mels), lengths


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end.

    Shapes: ``(batch, frames, features)`` + ``(batch,)`` -> ``(batch, frames, features)``.
    """
    frames = torch.arange(x.shape[1], device=x.device)[None, :]
    source = lengths.to(x.device)[:, None] - 1 - frames
    source = torch.where(source >= 0, source, frames)
    return x.gather(1, source[:, :, None].expand_as(x))


# RecurrentStack hands cuDNN one layer's weights at a time, which it copies into its own layout
# on each call (a few MB; autocast casts them to bf16 anyway); measured faster all the same.
warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")


class RecurrentStack(nn.Module):
    """Stacked LSTM or GRU layers, uni- or bidirectional, on padded batches; every valid frame's
    output is the one the utterance gives alone.

    One ``nn.LSTM`` / ``nn.GRU`` holds the weights. Each layer runs on the padded batch, the
    backward direction over each sequence reversed within its own length, so that it starts at
    the sequence's last real frame, never in the padding. This is faster than packed sequences
    on both devices (``tools/bench_train.py --compare-packing``): 4-5x on CPU, where packed
    sequences run step by step over shrinking batches, and 1.15-1.25x on an H100 for the
    5 x 1024 BiLSTM, for 35% more activation memory. :meth:`forward_packed` is the packed
    reference the tests and the benchmark compare against.

    With ``layer_norm``, each layer's output goes through a LayerNorm, after adding the layer's
    input where the widths match (every layer but the first): ``norm(rnn(x) + x)``.

    Shapes: ``(batch, frames, input)`` + ``(batch,)`` -> ``(batch, frames, directions * hidden)``.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                 dropout: float, layer_norm: bool = False) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if num_layers > 1 else 0.0)
        self.output_size = hidden_size * (2 if bidirectional else 1)
        self.norms = nn.ModuleList(nn.LayerNorm(self.output_size) for _ in range(num_layers)) if layer_norm else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames exact; arbitrary values in the padding."""
        if not self.rnn.bidirectional and self.norms is None:  # a forward recurrence never sees the padding at the end
            return self.rnn(x)[0]
        for layer in range(self.rnn.num_layers):
            if layer:
                x = nn.functional.dropout(x, self.rnn.dropout, self.training)
            y = self._run_direction(x, layer, "")
            if self.rnn.bidirectional:
                behind = reverse_padded(self._run_direction(reverse_padded(x, lengths), layer, "_reverse"), lengths)
                y = torch.cat([y, behind], dim=-1)
            if self.norms is not None:
                y = self.norms[layer](y + x if y.shape == x.shape else y)
            x = y
        return x

    def forward_chunk(self, x: torch.Tensor, states: list | None) -> tuple[torch.Tensor, list]:
        """A unidirectional stack, chunk by chunk: the frames of one chunk and each layer's state
        after the previous one (None at the start) -> the chunk's outputs and the new states.
        Chunks in sequence give the outputs of :meth:`forward` on the whole (inference only).

        Shapes: ``(batch, frames, input)`` -> ``(batch, frames, hidden)``.
        """
        if self.rnn.bidirectional:
            raise ValueError("a bidirectional stack needs the whole sequence: it cannot run chunk by chunk")
        new_states = []
        for layer in range(self.rnn.num_layers):
            weights = [getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if states is None:
                zeros = x.new_zeros(1, x.shape[0], self.rnn.hidden_size)
                state = (zeros, zeros) if isinstance(self.rnn, nn.LSTM) else zeros
            else:
                state = states[layer]
            if isinstance(self.rnn, nn.LSTM):
                y, h, c = torch.lstm(x, state, weights, True, 1, 0.0, False, False, True)
                new_states.append((h, c))
            else:
                y, h = torch.gru(x, state, weights, True, 1, 0.0, False, False, True)
                new_states.append(h)
            if self.norms is not None:
                y = self.norms[layer](y + x if y.shape == x.shape else y)
            x = y
        return x, new_states

    def forward_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The same through packed sequences (zeros in the padding); plain stacks only."""
        if self.norms is not None:
            raise ValueError("the packed reference has no layer norms")
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def _run_direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One direction of one layer, with its weights from ``self.rnn``, through the op that
        ``nn.LSTM`` / ``nn.GRU`` themselves call."""
        rnn = self.rnn
        weights = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        state = x.new_zeros(1, x.shape[0], rnn.hidden_size)
        if isinstance(rnn, nn.LSTM):
            return torch.lstm(x, (state, state), weights, True, 1, 0.0, self.training, False, True)[0]
        return torch.gru(x, state, weights, True, 1, 0.0, self.training, False, True)[0]


class BLSTMCTC(nn.Module):
    """VTLP and SpecAugment (training only) around global CMVN -> conv subsampling -> BiLSTM stack -> linear.

    Variable lengths are handled by :class:`RecurrentStack` (padding never reaches a valid frame).
    ``cell`` and ``bidirectional`` give the LSTM / GRU variants that tools/compare_rnns.py compares.

    Shapes: features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` ->
    log-probs ``(batch, frames', vocab)`` + lengths ``(batch,)``, ``frames' = ceil(frames / time_stride)``.
    """

    def __init__(self, config: BLSTMCTCConfig) -> None:
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
