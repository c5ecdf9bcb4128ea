"""A graph's arguments, declared once as dataclass fields with their help and choices.

The CLI (``tether rehearse``/``collect``) and the launch files (``DeclareLaunchArgument``) both read
the same :class:`GraphArgument` list, so names, defaults, descriptions and choices cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.errors import TetherError

# What a launch argument's text must look like, by the field's type (for the error message).
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class GraphArgumentError(TetherError):
    """A launch argument's value that does not fit its declared type or choices."""

    def __init__(self, name: str, raw: str, expected: str) -> None:
        super().__init__(f"launch argument {name}:={raw!r} is not valid: {name} takes {expected}")
        self.name = name


def arg(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    """A graph argument's field: its default, the help both the CLI and the launch files show, and its choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class GraphArgument:
    name: str
    kind: type  # str, int, float or bool
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The CLI's spelling of the launch argument's name."""
        return "--" + self.name.replace("_", "-")

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"{_EXPECTED[self.kind]}, e.g. {self.name}:={self.default}"

    def parse(self, raw: str) -> Any:
        """A launch argument's text as this argument's type; GraphArgumentError names the argument."""
        try:
            value = _parse(self.kind, raw)
        except ValueError:
            raise GraphArgumentError(self.name, raw, self.expected()) from None
        if self.choices and value not in self.choices:
            raise GraphArgumentError(self.name, raw, self.expected())
        return value


def _parse(kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.strip().lower() not in (*_TRUE, *_FALSE):
            raise ValueError(raw)
        return raw.strip().lower() in _TRUE
    if kind is float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    return kind(raw)


def graph_arguments(args_type: type) -> list[GraphArgument]:
    """One GraphArgument per field of a graph's arguments dataclass, in field order."""
    hints = typing.get_type_hints(args_type)
    out = []
    for f in dataclasses.fields(args_type):
        if "help" not in f.metadata:
            raise TetherError(f"{args_type.__name__}.{f.name} has no help; declare it with tether.graph_args.arg")
        out.append(GraphArgument(f.name, hints[f.name], f.default, f.metadata["help"], f.metadata["choices"]))
    return out


def args_from_text(args_type: type, values: Mapping[str, str]) -> Any:
    """The arguments dataclass from launch arguments' text (every field present)."""
    return args_type(**{a.name: a.parse(values[a.name]) for a in graph_arguments(args_type)})
