"""Strict dataclass loading from YAML-shaped dicts: unknown keys are an error."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tether.errors import ConfigError, MissingKeyError, UnknownKeyError

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclasses and lists of them are followed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise UnknownKeyError(where, str(key), fields)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    # A dataclass may name the error its bad values raise (e.g. a camera's CameraPoseError).
    error_cls: type[ConfigError] = getattr(cls, "config_error", ConfigError)
    for name, field in fields.items():
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
            except ConfigError as exc:
                raise (exc if isinstance(exc, error_cls) else error_cls(str(exc))) from exc
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise MissingKeyError(where, name)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value
