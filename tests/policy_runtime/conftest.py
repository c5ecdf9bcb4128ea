"""Fixtures for the policy runtime: tiny real ONNX model folders (see onnx_fixtures.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tether.policy_runtime import train as tr

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
