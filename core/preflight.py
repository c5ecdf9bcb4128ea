"""A command's arguments, checked before any process starts or any file is written.

A refused value ends the command in one line that names the command, the flag, the value and what
would be valid (``tether collect: --episodes must be at least 1, got 0``), with exit code 2, and
leaves nothing behind. The nodes and libraries keep their own checks; these make the common
mistakes cost nothing instead of a graph start.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from tether.errors import TetherError


class UsageError(TetherError):
    """A command-line value refused before anything started; the message names the command and the flag."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"tether {command}: {message}")
        self.command = command


class Preflight:
    """The checks of one command's arguments; each refusal raises :class:`UsageError` naming that command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def refuse(self, message: str) -> NoReturn:
        raise UsageError(self.command, message)

    @contextmanager
    def about(self, flag: str) -> Iterator[None]:
        """A library's refusal of ``flag``'s value, told as this command's (the library's words name the value)."""
        try:
            yield
        except UsageError:
            raise
        except TetherError as exc:
            raise UsageError(self.command, f"{flag}: {exc}") from exc

    def at_least(self, flag: str, value: int | None, minimum: int) -> None:
        if value is not None and value < minimum:
            self.refuse(f"{flag} must be at least {minimum}, got {value}")

    def positive(self, flag: str, value: float | None, unit: str = "") -> None:
        if value is not None and not (math.isfinite(value) and value > 0):
            self.refuse(f"{flag} must be more than 0{unit}, got {value}")

    def not_negative(self, flag: str, value: float | None, unit: str = "") -> None:
        if value is not None and not (math.isfinite(value) and value >= 0):
            self.refuse(f"{flag} must be 0 or more{unit}, got {value}")

    def image_size(self, flag: str, size: list[int] | None) -> None:
        if size is not None and min(size) < 1:
            self.refuse(f"{flag} must be two sizes of at least 1 pixel (W H), got {' '.join(map(str, size))}")

    def writable_folder(self, flag: str, path: Path) -> None:
        """``path`` is a folder this process can write in, or one it can make; the probe leaves nothing behind."""
        existing = nearest_existing(path)
        if not existing.is_dir():
            where = "" if existing == Path(os.path.abspath(path)) else f" lies under {existing}, which"
            self.refuse(f"{flag} {path}{where} is {'a file' if existing.is_file() else 'not a folder'}; "
                        f"give a folder")
        why = cannot_create_in(existing)
        if why:
            self.refuse(f"{flag} {path}: nothing can be created in {existing} ({why}); give a folder you can write to")

    def dataset_to_append(self, flag: str, path: Path) -> None:
        """``path`` is new, empty, or a LeRobot dataset (recording appends to it), and writable."""
        self.writable_folder(flag, path)
        if not path.is_dir() or not any(path.iterdir()):
            return
        from tether.dataset.layout import Layout, read_info

        if not Layout(path).info_path.is_file():
            self.refuse(f"{flag} {path} is not a LeRobot dataset (no meta/info.json) and not empty: it holds "
                        f"{contents(path)}; {self.command} appends only to a dataset: give a new or empty folder, "
                        f"or an existing dataset")
        with self.about(flag):
            read_info(path)

    def dataset_to_read(self, flag: str, path: Path) -> None:
        from tether.dataset.layout import Layout, read_info

        if not Layout(path).info_path.is_file():
            what = "does not exist" if not path.exists() else "is not a LeRobot dataset (no meta/info.json)"
            self.refuse(f"{flag} {path} {what}; give a dataset folder made by `tether collect`")
        with self.about(flag):
            read_info(path)

    def outside(self, flag: str, path: Path, other_flag: str, other: Path) -> None:
        inner, outer = Path(os.path.abspath(path)), Path(os.path.abspath(other))
        if inner == outer or outer in inner.parents:
            self.refuse(f"{flag} {path} is inside {other_flag} {other}; give a folder outside it")


def nearest_existing(path: Path) -> Path:
    """``path`` (made absolute) or its nearest ancestor that exists: where a ``mkdir -p`` would start."""
    current = Path(os.path.abspath(path))
    while not (current.exists() or current.is_symlink()) and current != current.parent:
        current = current.parent
    return current


def cannot_create_in(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (the system's words), or None. A real create-and-remove:
    permission bits do not tell (root passes them, /proc and read-only mounts refuse anyway)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tether-preflight-", dir=folder))
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def contents(folder: Path, shown: int = 4) -> str:
    """A few of ``folder``'s entries, folders marked with a slash: what a user recognises their folder by."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
