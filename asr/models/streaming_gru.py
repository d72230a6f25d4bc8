"""Streaming acoustic model: causal conv subsampling + unidirectional GRU + look-ahead
("row") convolution + linear -> CTC log-probs.

Every part looks only at the past, except the row convolution, which sees ``lookahead``
future output frames (Deep Speech 2, Amodei et al., 2016). So the model can run chunk by
chunk with :meth:`StreamingGRUCTC.step`, carrying a small :class:`StreamingState`, and give
the same log-probs as :meth:`StreamingGRUCTC.forward` on the whole utterance; each output
frame is delayed by ``lookahead`` frames (``lookahead * time_stride * 10`` ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from asr.features import VTLP, GlobalCMVN, SpecAugment
from asr.models.blstm_ctc import SpecAugmentConfig, lengths_to_mask

KERNEL = 3  # time (and frequency) size of the subsampling convolutions


@dataclass
class StreamingGRUCTCConfig:
    n_mels: int = 80
    vocab_size: int = 29
    conv_channels: int = 32
    time_stride: int = 4  # 2, 3 or 4: total time subsampling of the two convolutions
    hidden_size: int = 320
    num_layers: int = 3
    lookahead: int = 2  # future output frames seen by the row convolution (2 x 40 ms)
    # LayerNorm after each GRU layer, with a residual connection where the widths match (as in
    # blstm_ctc): it shortens CTC's all-blank plateau; per frame, so streaming is unaffected
    layer_norm: bool = False
    dropout: float = 0.1
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    vtlp: float = 0.0  # max vocal-tract-length warp in training: factors in [1 - vtlp, 1 + vtlp]


@dataclass
class StreamingState:
    """What :meth:`StreamingGRUCTC.step` carries from one chunk to the next: tensors with the
    batch first, but ``hidden`` (layers first, as ``nn.GRU``)."""

    conv_cache: list[torch.Tensor]  # per conv: input frames not yet consumed (left context first)
    hidden: torch.Tensor  # (num_layers, batch, hidden_size) GRU state
    row_cache: torch.Tensor  # (batch, frames, hidden_size) GRU outputs waiting for their future context


class CausalConvSubsampling(nn.Module):
    """Two 3x3 conv layers with batch norm and ReLU; frequency stride 2 each; time strides
    (2, 1), (3, 1) or (2, 2).

    Time padding is on the left only (``KERNEL - 1`` frames), so output frame ``j`` depends on
    input frames up to ``time_stride * j`` and nothing later: padding after an utterance never
    reaches its valid frames, and a chunk's outputs never wait for the next chunk. Batch norm
    (as in Deep Speech 2) shortens CTC's initial all-blank plateau; at inference it is a fixed
    affine map per output frame, so streaming is unaffected.

    Shapes: ``(batch, frames, n_mels)`` + ``(batch,)`` -> ``(batch, ceil(frames / time_stride), out_dim)``.
    """

    def __init__(self, n_mels: int, channels: int, time_stride: int) -> None:
        super().__init__()
        strides = {2: (2, 1), 3: (3, 1), 4: (2, 2)}
        if time_stride not in strides:
            raise ValueError(f"time_stride must be 2, 3 or 4, got {time_stride}")
        self.strides = strides[time_stride]
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, channels, KERNEL, stride=(s, 2), padding=(0, 1)), nn.BatchNorm2d(channels))
            for c_in, s in zip((1, channels), self.strides)
        )
        bins = [n_mels, (n_mels + 1) // 2, ((n_mels + 1) // 2 + 1) // 2]  # into, between, out of the convs
        self.in_shapes = [(1, bins[0]), (channels, bins[1])]  # (channels, bins) entering each conv
        self.out_shapes = [(channels, bins[1]), (channels, bins[2])]
        self.out_dim = channels * bins[2]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for s in self.strides:
            lengths = (lengths - 1) // s + 1
        return lengths

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, mels = x.shape
        return x.permute(0, 2, 1, 3).reshape(batch, frames, channels * mels)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.unsqueeze(1)  # (batch, 1, frames, mels)
        for conv in self.convs:
            x = torch.relu(conv(nn.functional.pad(x, (0, 0, KERNEL - 1, 0))))
        return self._flatten(x), self.output_lengths(lengths)

    def initial_cache(self, device: torch.device, batch: int = 1) -> list[torch.Tensor]:
        """The left padding of each conv: ``KERNEL - 1`` zero frames."""
        return [torch.zeros(batch, c, KERNEL - 1, bins, device=device) for c, bins in self.in_shapes]

    def step(self, feats: torch.Tensor, cache: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(batch, frames, n_mels)`` -> ``(batch, frames', out_dim)``: every output whose inputs have arrived."""
        x = feats.unsqueeze(1)
        new_cache = []
        for conv, stride, left, (channels, bins) in zip(self.convs, self.strides, cache, self.out_shapes):
            x = torch.cat([left, x], dim=2)
            count = max(0, (x.shape[2] - KERNEL) // stride + 1)
            new_cache.append(x[:, :, count * stride :])
            x = torch.relu(conv(x)) if count else x.new_zeros(x.shape[0], channels, 0, bins)
        return self._flatten(x), new_cache


class LookaheadConv(nn.Module):
    """Deep Speech 2's row convolution: each channel mixes its current and ``lookahead`` future
    frames (a depthwise 1-D convolution over time, right-padded with zeros).

    Shapes: ``(batch, frames, channels)`` -> same.
    """

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.lookahead = lookahead
        self.conv = nn.Conv1d(channels, channels, lookahead + 1, groups=channels, bias=False)
        # start as the identity (current frame only): training begins from a plain GRU model and
        # learns how much of the future to mix in; a random start, mixing frames arbitrarily per
        # channel, left small test models stuck for hundreds of steps
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.transpose(1, 2), (0, self.lookahead))
        return self.conv(x).transpose(1, 2)

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs for the frames whose future context has arrived, and the frames still waiting."""
        x = torch.cat([cache, x], dim=1)
        ready = max(0, x.shape[1] - self.lookahead)
        out = self.conv(x.transpose(1, 2)).transpose(1, 2) if ready else x[:, :0]
        return out, x[:, ready:]


class StreamingGRUCTC(nn.Module):
    """VTLP and SpecAugment (training only) around global CMVN -> causal conv subsampling -> GRU stack ->
    look-ahead conv -> linear -> log-softmax.

    Training uses :meth:`forward` on padded batches; streaming uses :meth:`initial_state`,
    :meth:`step` for each chunk of features and :meth:`flush` at the end of the utterance. The
    concatenated outputs of ``step`` and ``flush`` equal ``forward`` (to float tolerance).

    Shapes: features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` ->
    log-probs ``(batch, frames', vocab)`` + lengths ``(batch,)``, ``frames' = ceil(frames / time_stride)``.
    """

    def __init__(self, config: StreamingGRUCTCConfig) -> None:
        super().__init__()
        self.config = config
        self.cmvn = GlobalCMVN(config.n_mels)
        self.vtlp = VTLP(config.vtlp)
        self.specaugment = SpecAugment(**vars(config.specaugment))
        self.subsampling = CausalConvSubsampling(config.n_mels, config.conv_channels, config.time_stride)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            self.subsampling.out_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.norms = nn.ModuleList(nn.LayerNorm(config.hidden_size) for _ in range(config.num_layers)) \
            if config.layer_norm else None
        self.lookahead = LookaheadConv(config.hidden_size, config.lookahead)
        self.output = nn.Linear(config.hidden_size, config.vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.subsampling.output_lengths(lengths)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.specaugment(self.cmvn(self.vtlp(feats)), lengths)
        x, out_lengths = self.subsampling(x, lengths)
        # a unidirectional GRU never carries padding back into valid frames, so no packing
        x, _ = self._recurrence(self.dropout(x), None)
        # the look-ahead must see zeros after the end, as flush() gives it
        x = x * lengths_to_mask(out_lengths, x.shape[1])[:, :, None]
        x = self.output(self.dropout(self.lookahead(x)))
        return x.float().log_softmax(dim=-1), out_lengths  # float32 also under autocast

    def _recurrence(self, x: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU stack: ``(batch, frames, input)`` + state ``(num_layers, batch, hidden)`` or None
        (zeros) -> ``(batch, frames, hidden)`` + the new state. With ``layer_norm``, layer by layer
        through the op ``nn.GRU`` calls, each output normalised (after adding its input from the
        second layer on)."""
        if self.norms is None:
            return self.gru(x, hidden)
        if hidden is None:
            hidden = x.new_zeros(self.gru.num_layers, x.shape[0], self.gru.hidden_size)
        states = []
        for layer, norm in enumerate(self.norms):
            if layer:
                x = nn.functional.dropout(x, self.gru.dropout, self.training)
            weights = [getattr(self.gru, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            y, state = torch.gru(x, hidden[layer : layer + 1], weights, True, 1, 0.0, self.training, False, True)
            x = norm(y + x if y.shape == x.shape else y)
            states.append(state)
        return x, torch.cat(states)

    def initial_state(self, batch: int = 1) -> StreamingState:
        device = self.output.weight.device
        return StreamingState(
            conv_cache=self.subsampling.initial_cache(device, batch),
            hidden=torch.zeros(self.config.num_layers, batch, self.config.hidden_size, device=device),
            row_cache=torch.zeros(batch, 0, self.config.hidden_size, device=device),
        )

    def step(self, feats: torch.Tensor, state: StreamingState) -> tuple[torch.Tensor, StreamingState]:
        """Feed the next ``(batch, frames, n_mels)`` features; returns ``(batch, frames', vocab)``
        log-probs for the output frames whose look-ahead has arrived (possibly none) and the new
        state (streams stepped together share their chunks' length)."""
        if self.training:
            raise RuntimeError("step() is for inference: call model.eval() first")
        if feats.dim() != 3 or feats.shape[2] != self.config.n_mels:
            raise ValueError(f"expected features (batch, frames, {self.config.n_mels}), got {tuple(feats.shape)}")
        x, conv_cache = self.subsampling.step(self.cmvn(feats), state.conv_cache)
        hidden = state.hidden
        if x.shape[1]:
            x, hidden = self._recurrence(x, hidden)
        else:
            x = x.new_zeros(x.shape[0], 0, self.config.hidden_size)
        x, row_cache = self.lookahead.step(x, state.row_cache)
        return self.output(x).log_softmax(dim=-1), StreamingState(conv_cache, hidden, row_cache)

    def flush(self, state: StreamingState) -> torch.Tensor:
        """Log-probs ``(batch, frames', vocab)`` of the frames still waiting for look-ahead at the end of
        the utterance (the future is zeros, as in :meth:`forward`)."""
        pad = state.row_cache.new_zeros(state.row_cache.shape[0], self.config.lookahead, self.config.hidden_size)
        x, _ = self.lookahead.step(pad, state.row_cache)
        return self.output(x).log_softmax(dim=-1)
