"""A small tmpfs for the full-disk tests: mount it, fill it to the last byte, free it, unmount it.

    with SmallDisk.mounted(tmp_path / "disk", size_mb=64) as disk:
        ...                     # record onto disk.path
        disk.fill()             # every later write on it fails with ENOSPC
        disk.free()             # the space is back

Mounting needs root (CAP_SYS_ADMIN); where it is not permitted the test is skipped, saying why.
tests/teleop's conftest offers it as the ``small_disk`` fixture; elsewhere load this file by path
(tests import with ``--import-mode=importlib``).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = "filler"


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    @contextmanager
    def mounted(cls, path: Path, size_mb: int) -> Iterator[SmallDisk]:
        path.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True,
                           capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("full-disk test: no `mount` command to make a small tmpfs")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"full-disk test: cannot mount a {size_mb} MiB tmpfs at {path} (needs root or "
                        f"CAP_SYS_ADMIN): {exc.stderr.strip()}")
        try:
            yield cls(path)
        finally:  # lazy: a process of a failed test may still hold a file open there
            subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True)

    def fill(self) -> int:
        """Take every free byte (whole blocks, then single bytes); returns how many were taken."""
        taken = 0
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (1 << 20, 1 << 12, 1):
                block = bytes(size)
                while True:
                    try:
                        taken += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        (self.path / FILLER).unlink()

