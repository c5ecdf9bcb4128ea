"""The ``small_disk`` fixture (a 64 MiB tmpfs under the test's tmp_path, see small_disk.py), and
``tether_tests_cdr`` (cdr.py), importable by the tests here: pytest's importlib mode puts no test
folder on sys.path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _load(name: str, file: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _small_disk_module() -> Any:
    return _load("tether_tests_small_disk", "small_disk.py")


_load("tether_tests_cdr", "cdr.py")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Any]:
    with _small_disk_module().SmallDisk.mounted(tmp_path / "disk", size_mb=64) as disk:
        yield disk
