"""The recurrent stack both models share: LSTM or GRU layers, uni- or bidirectional, with
optional layer norm; padded batches for training, chunk by chunk for streaming."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


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
    on both devices, for more activation memory (docs/benchmarks.md, ``tools/bench_train.py
    --compare-packing``): on a CPU packed sequences run step by step over shrinking batches.
    :meth:`forward_packed` is the packed reference the tests and the benchmark compare against.

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

    def step(self, x: torch.Tensor, state: torch.Tensor | tuple | None) -> tuple[torch.Tensor, torch.Tensor | tuple]:
        """A unidirectional stack, chunk by chunk: the frames of one chunk and the state after the
        previous one (None at the start: zeros) -> the chunk's outputs and the new state, in
        ``nn.GRU`` / ``nn.LSTM``'s layout ``(layers, batch, hidden)`` (a pair for the LSTM).
        Chunks in sequence give the outputs of :meth:`forward` on the whole.

        Shapes: ``(batch, frames, input)`` -> ``(batch, frames, hidden)``.
        """
        if self.rnn.bidirectional:
            raise ValueError("a bidirectional stack needs the whole sequence: it cannot run chunk by chunk")
        if self.norms is None:
            return self.rnn(x, state)
        lstm = isinstance(self.rnn, nn.LSTM)
        if state is None:
            zeros = x.new_zeros(self.rnn.num_layers, x.shape[0], self.rnn.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        states = []
        for layer, norm in enumerate(self.norms):
            if layer:
                x = nn.functional.dropout(x, self.rnn.dropout, self.training)
            weights = self._weights(layer, "")
            if lstm:
                layer_state = (state[0][layer : layer + 1], state[1][layer : layer + 1])
                y, h, c = torch.lstm(x, layer_state, weights, True, 1, 0.0, self.training, False, True)
                states.append((h, c))
            else:
                y, h = torch.gru(x, state[layer : layer + 1], weights, True, 1, 0.0, self.training, False, True)
                states.append(h)
            x = norm(y + x if y.shape == x.shape else y)
        if lstm:
            return x, (torch.cat([h for h, _ in states]), torch.cat([c for _, c in states]))
        return x, torch.cat(states)

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
        weights = self._weights(layer, suffix)
        state = x.new_zeros(1, x.shape[0], rnn.hidden_size)
        if isinstance(rnn, nn.LSTM):
            return torch.lstm(x, (state, state), weights, True, 1, 0.0, self.training, False, True)[0]
        return torch.gru(x, state, weights, True, 1, 0.0, self.training, False, True)[0]

    def _weights(self, layer: int, suffix: str) -> list[torch.Tensor]:
        return [getattr(self.rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
