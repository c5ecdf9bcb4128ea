"""Flushes that make written files survive a crash or a power cut, not only a killed process."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """The file's bytes are on the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """The folder's entries (a file created, renamed or removed in it) are on the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
