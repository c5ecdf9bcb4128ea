"""The operator logic on real devices: the keyboard through a pty, the leader arm through its mapping."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tether.teleop.keyboard import Keyboard
from tether.teleop.leader import LeaderArm
from tether.teleop.operator import Operator


@pytest.fixture
def keys():
    master, slave = os.openpty()
    keyboard = Keyboard(slave)
    keyboard.connect()
    try:
        yield keyboard, lambda text: os.write(master, text.encode())
    finally:
        keyboard.disconnect()
        os.close(master)
        os.close(slave)


def start_pose(profile) -> np.ndarray:
    return np.clip(profile.home + 0.2, profile.lower, profile.upper)


def test_motion_key_takes_over_and_the_handover_starts_at_the_measured_state(so101, keys) -> None:
    keyboard, type_ = keys
    op = Operator(keyboard, so101, threshold=0.2)
    q = start_pose(so101)
    idle = op.step(q, 1 / 30)
    assert not idle.takeover and idle.target is None and not op.driving
    type_("w")
    first = op.step(q, 1 / 30)
    assert first.takeover and op.driving
    np.testing.assert_allclose(first.target, q)  # no jump at the handover
    moved = [op.step(q, 1 / 30).target for _ in range(5)]
    assert not np.allclose(moved[-1], q)
    assert np.all(moved[-1] >= so101.lower) and np.all(moved[-1] <= so101.upper)
    # Handback, then a second takeover re-resets the jog to where the arm is now.
    type_("g")
    back = op.step(q, 1 / 30)
    assert back.handback and not op.driving and back.target is None
    elsewhere = np.clip(so101.home - 0.1, so101.lower, so101.upper)
    type_("t")
    again = op.step(elsewhere, 1 / 30)
    assert again.takeover
    np.testing.assert_allclose(again.target, elsewhere)


def test_small_activity_does_not_take_over(so101, keys) -> None:
    keyboard, type_ = keys
    op = Operator(keyboard, so101, threshold=1.5)  # a key press is activity 1
    type_("w")
    step = op.step(so101.home, 1 / 30)
    assert not step.takeover and not op.driving


def test_episode_buttons_become_events_and_recovery_toggles(so101, keys) -> None:
    keyboard, type_ = keys
    op = Operator(keyboard, so101)
    type_("y")
    assert op.step(so101.home, 1 / 30).events == ["success"]
    type_("nxb")
    assert op.step(so101.home, 1 / 30).events == ["failure", "discard", "rerecord"]
    assert op.step(so101.home, 1 / 30).events == []  # each press once
    type_("m")
    assert op.step(so101.home, 1 / 30).mark_recovery is True
    assert op.step(so101.home, 1 / 30).mark_recovery is None
    type_("m")
    assert op.step(so101.home, 1 / 30).mark_recovery is False
    assert not op.driving  # buttons alone never take over


def test_leader_arm_takes_over_on_motion_and_then_is_followed(so101) -> None:
    leader = LeaderArm(so101, activity_speed=1.0)
    op = Operator(leader, so101, threshold=0.2)
    q = so101.home.copy()
    with leader:
        leader.update(so101.joint_names, so101.home, stamp=0.0)
        assert not op.step(q, 1 / 30).takeover  # a leader at rest
        moved = np.clip(so101.home + 0.1, so101.lower, so101.upper)
        leader.update(so101.joint_names, moved, stamp=0.1)  # 1 rad/s
        first = op.step(q, 1 / 30)
        assert first.takeover
        np.testing.assert_allclose(first.target, q)
        np.testing.assert_allclose(op.step(q, 1 / 30).target, moved)
