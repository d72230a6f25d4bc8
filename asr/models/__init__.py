"""Acoustic models by name: ``build_model("rnn_ctc", {...})``.

=================  ============================================================
``subsampling``    convolutional subsampling of the features (causal or not)
``recurrent``      RecurrentStack: LSTM / GRU layers, uni- or bidirectional
``rnn_ctc``        the offline RNN-CTC (a BiLSTM by default)
``streaming_gru``  the streaming GRU-CTC, with a look-ahead convolution
=================  ============================================================
"""

from __future__ import annotations

from typing import Any

from torch import nn

from asr.config import config_from_dict
from asr.models.rnn_ctc import RNNCTC, RNNCTCConfig
from asr.models.streaming_gru import StreamingGRUCTC, StreamingGRUCTCConfig

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "rnn_ctc": (RNNCTC, RNNCTCConfig),
    "blstm_ctc": (RNNCTC, RNNCTCConfig),  # an alias: the name that existing checkpoints and configs carry
    "streaming_gru": (StreamingGRUCTC, StreamingGRUCTCConfig),
}


# parameter names that existing checkpoints (the embedded defaults among them) may carry ->
# the names of the modules that hold those parameters
RENAMED_PREFIXES = {
    "subsampling.conv1.": "subsampling.convs.0.",
    "subsampling.conv2.": "subsampling.convs.1.",
    "gru.": "encoder.rnn.",
    "norms.": "encoder.norms.",
}


def upgrade_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A model's state dict with the parameter names of any checkpoint as this version names them."""
    def upgrade(name: str) -> str:
        for old, new in RENAMED_PREFIXES.items():
            if name.startswith(old):
                return new + name[len(old) :]
        return name

    return {upgrade(name): value for name, value in state_dict.items()}


def canonical_name(name: str) -> str:
    """The name a model kind is registered under first: ``blstm_ctc`` -> ``rnn_ctc``."""
    return next(key for key, value in MODELS.items() if value == MODELS[name])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(name: str, config: dict[str, Any] | None = None, verbose: bool = True) -> nn.Module:
    """Instantiate a model by name from a plain dict of its config fields."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls, config_cls = MODELS[name]
    model = cls(config_from_dict(config_cls, config or {}))
    if verbose:
        print(f"{name}: {count_parameters(model) / 1e6:.2f}M parameters")
    return model
