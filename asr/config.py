"""Configuration: dataclasses filled from YAML files and ``key=value`` overrides.

``load_config(TrainConfig, "conf/train.yaml", ["optim.lr=1e-3", "model_config.hidden_size=512"])``
Values in overrides are parsed as YAML scalars (``3`` is an int, ``1e-3`` a float, ``true`` a bool).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown keys with their names."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        factory = fields[name].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(factory):
            value = config_from_dict(factory, value)
        kwargs[name] = value
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    # YAML 1.1 reads "1e-3" as a string; numbers people type on a command line are numbers.
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` pairs in a nested dict (a copy)."""
    values = yaml.safe_load(yaml.safe_dump(values)) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_scalar(text.strip())
    return values


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Dataclass ``cls`` from a YAML file (optional) with overrides applied on top."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    return config_from_dict(cls, apply_overrides(values, overrides or []))
