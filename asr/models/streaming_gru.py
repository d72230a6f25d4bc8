"""Streaming acoustic model: causal conv subsampling + unidirectional GRU + look-ahead
convolution + linear -> CTC log-probs.

Every part looks only at the past, except the look-ahead convolution (Deep Speech 2's "row
convolution", Amodei et al., 2016), which sees ``lookahead`` future output frames. So the model
can run chunk by chunk with :meth:`StreamingGRUCTC.step`, carrying a small :class:`StreamingState`,
and give the same log-probs as :meth:`StreamingGRUCTC.forward` on the whole utterance; each
output frame is delayed by ``lookahead`` frames (``lookahead * time_stride * 10`` ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from asr.models.ctc import CTCModel, SpecAugmentConfig
from asr.models.recurrent import RecurrentStack
from asr.models.subsampling import lengths_to_mask


@dataclass
class StreamingGRUCTCConfig:
    n_mels: int = 80
    vocab_size: int = 29
    conv_channels: int = 32
    time_stride: int = 4  # 2, 3 or 4: total time subsampling of the two convolutions
    hidden_size: int = 320
    num_layers: int = 3
    lookahead: int = 2  # future output frames seen by the look-ahead convolution (2 x 40 ms)
    # LayerNorm after each GRU layer, with a residual connection where the widths match (as in
    # rnn_ctc): it shortens CTC's all-blank plateau; per frame, so streaming is unaffected
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
    lookahead: torch.Tensor  # (batch, frames, hidden_size) GRU outputs waiting for their future context


class LookaheadConv(nn.Module):
    """Each channel mixes its current and ``lookahead`` future frames (a depthwise 1-D
    convolution over time, right-padded with zeros).

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


class StreamingGRUCTC(CTCModel):
    """VTLP and SpecAugment (training only) around global CMVN -> causal conv subsampling -> GRU stack ->
    look-ahead conv -> linear -> log-softmax.

    Training uses :meth:`forward` on padded batches; streaming uses :meth:`initial_state`,
    :meth:`step` for each chunk of features and :meth:`flush` at the end of the utterance. The
    concatenated outputs of ``step`` and ``flush`` equal ``forward`` (to float tolerance).

    Shapes: features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` ->
    log-probs ``(batch, frames', vocab)`` + lengths ``(batch,)``, ``frames' = ceil(frames / time_stride)``.
    """

    def __init__(self, config: StreamingGRUCTCConfig) -> None:
        super().__init__(config, causal=True)
        self.encoder = RecurrentStack("gru", self.subsampling.out_dim, config.hidden_size, config.num_layers,
                                      False, config.dropout, config.layer_norm)
        self.lookahead = LookaheadConv(config.hidden_size, config.lookahead)
        self.output = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.subsample(feats, lengths)
        # a unidirectional GRU never carries padding back into valid frames, so no packing
        x = self.encoder(self.dropout(x), out_lengths)
        # the look-ahead must see zeros after the end, as flush() gives it
        x = x * lengths_to_mask(out_lengths, x.shape[1])[:, :, None]
        x = self.output(self.dropout(self.lookahead(x)))
        return x.float().log_softmax(dim=-1), out_lengths  # float32 also under autocast

    def initial_state(self, batch: int = 1) -> StreamingState:
        device = self.output.weight.device
        return StreamingState(
            conv_cache=self.subsampling.initial_cache(device, batch),
            hidden=torch.zeros(self.config.num_layers, batch, self.config.hidden_size, device=device),
            lookahead=torch.zeros(batch, 0, self.config.hidden_size, device=device),
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
            x, hidden = self.encoder.step(x, hidden)
        else:
            x = x.new_zeros(x.shape[0], 0, self.config.hidden_size)
        x, waiting = self.lookahead.step(x, state.lookahead)
        return self.output(x).log_softmax(dim=-1), StreamingState(conv_cache, hidden, waiting)

    def flush(self, state: StreamingState) -> torch.Tensor:
        """Log-probs ``(batch, frames', vocab)`` of the frames still waiting for look-ahead at the end
        of the utterance (the future is zeros, as in :meth:`forward`)."""
        pad = state.lookahead.new_zeros(state.lookahead.shape[0], self.config.lookahead, self.config.hidden_size)
        x, _ = self.lookahead.step(pad, state.lookahead)
        return self.output(x).log_softmax(dim=-1)

