"""Fixtures for the policy runtime: tiny real ONNX model folders (see onnx_fixtures.py), tiny trained runs, and
fresh Python processes for tests that need their own thread count."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tether.policy_runtime.runtime import threads

# The suite fixes its thread count before any torch work, as `tether` does at start-up: one thread unless
# TETHER_THREADS says otherwise (tiny nets train faster on one, and the other core stays free). A test that
# needs another count runs in a fresh process (the `python_with` fixture); nothing changes it in this one.
threads.fix(threads.requested() or 1, torch=True)
THREADS_ENV = threads.ENV

from tether.policy_runtime.training import train as tr  # noqa: E402  (imports torch: after the thread count is fixed)

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


@pytest.fixture(scope="session", params=["act", "diffusion"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    """A tiny trained run of each policy (4 steps on a 3-episode dataset) to export and benchmark."""
    root = tmp_path_factory.mktemp(f"run_{request.param}")
    dataset = demo_data.write_demos(root / "ds", so101, [14, 12, 10])
    config = tr.TrainConfig(steps=4, batch_size=4, warmup_steps=1, val_every=4, checkpoint_every=4, image_size=32)
    return tr.train(request.param, dataset, root / "run", config=config, overrides=demo_data.TINY[request.param],
                    progress=False)


@pytest.fixture(scope="session")
def python_with() -> Callable[..., tuple[Any, str]]:
    """``python_with(code, threads=N)``: run ``code`` in a fresh Python with TETHER_THREADS=N; returns the JSON it
    prints last and its stderr. A failing child fails the test with its stderr."""
    def run(code: str, *, threads: int) -> tuple[Any, str]:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, THREADS_ENV: str(threads)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
    return run
