"""Acoustic models by name: ``build_model("blstm_ctc", {...})``."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from asr.models.blstm_ctc import BLSTMCTC, BLSTMCTCConfig

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "blstm_ctc": (BLSTMCTC, BLSTMCTCConfig),
}


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown keys with their names."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and default is not None and dataclasses.is_dataclass(default):
            value = config_from_dict(default, value)
        kwargs[name] = value
    return cls(**kwargs)


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
