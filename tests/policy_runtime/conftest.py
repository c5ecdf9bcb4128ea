"""Fixtures for the policy runtime: tiny real ONNX model folders (see onnx_fixtures.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

FIXTURES = Path(__file__).with_name("onnx_fixtures.py")


def load_fixtures() -> ModuleType:
    """onnx_fixtures as a module; pytest's importlib mode puts no test folder on sys.path."""
    name = "tether_tests_onnx_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def fx() -> ModuleType:
    return load_fixtures()
