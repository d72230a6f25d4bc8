"""Acoustic models by name: ``build_model("blstm_ctc", {...})``."""

from __future__ import annotations

from typing import Any

from torch import nn

from asr.config import config_from_dict
from asr.models.blstm_ctc import BLSTMCTC, BLSTMCTCConfig
from asr.models.streaming_gru import StreamingGRUCTC, StreamingGRUCTCConfig

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "blstm_ctc": (BLSTMCTC, BLSTMCTCConfig),
    "streaming_gru": (StreamingGRUCTC, StreamingGRUCTCConfig),
}


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
