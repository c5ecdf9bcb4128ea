"""Shared fixtures: robot profiles are loaded once per session."""

from __future__ import annotations

import os

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
