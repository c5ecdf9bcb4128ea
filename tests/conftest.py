"""Shared fixtures: robot profiles are loaded once per session."""

from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from tether.robot_profile import RobotProfile, load_profile  # noqa: E402


@pytest.fixture(scope="session")
def so101() -> RobotProfile:
    return load_profile("so101")


@pytest.fixture(scope="session")
def panda() -> RobotProfile:
    return load_profile("panda")


def _load(name: str, path: Path) -> types.ModuleType:
    """A helper module of the tests by its path: pytest's importlib mode puts no test folder on sys.path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_data() -> types.ModuleType:
    """tests/policy_runtime/demo_data.py: a tiny LeRobot v3 dataset writer for policy tests."""
    return _load("tether_tests_demo_data", Path(__file__).parent / "policy_runtime" / "demo_data.py")


@pytest.fixture(scope="session")
def import_graph() -> types.ModuleType:
    """tests/import_graph.py: the import graph of a package, read from its source."""
    return _load("tether_tests_import_graph", Path(__file__).with_name("import_graph.py"))


@pytest.fixture(scope="session")
def demos_root(tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    """Three demos, episode 1 recorded as a failure (read-only: a test that edits it works on a copy)."""
    return demo_data.write_demos(tmp_path_factory.mktemp("demos") / "ds", so101, [12, 15, 9], failed=(1,))


@pytest.fixture(scope="session")
def corrected_root(tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    """Episode 0: an expert demo. 1: a policy drives 6 frames, then a human corrects. 2: the policy alone."""
    return demo_data.write_demos(tmp_path_factory.mktemp("corrected") / "ds", so101, [8, 10, 7],
                                 takeover={1: 6, 2: 99})
