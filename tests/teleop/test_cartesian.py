"""Cartesian jog on the SO-101: handover, straight-line jogs, yaw, gripper, limits and reach."""

from __future__ import annotations

import numpy as np
import pytest

from tether.kinematics import Kinematics
from tether.teleop.cartesian import CartesianJog, JogConfig
from tether.teleop.devices import TeleopCommand

DT = 1 / 50


@pytest.fixture(scope="module")
def kin(so101) -> Kinematics:
    return Kinematics(so101)


def jog_cmd(vx=0.0, vy=0.0, vz=0.0, yaw=0.0, gripper=None) -> TeleopCommand:
    return TeleopCommand(stamp=0.0, twist=np.array([vx, vy, vz, yaw]), gripper=gripper)


def run(jog: CartesianJog, cmd: TeleopCommand, seconds: float) -> np.ndarray:
    q = None
    for _ in range(round(seconds / DT)):
        q = jog.step(cmd, DT)
    assert q is not None
    return q


def test_handover_starts_at_the_measured_joints(so101, kin) -> None:
    jog = CartesianJog(so101, kin)
    q_measured = so101.home + 0.05
    np.testing.assert_array_equal(jog.reset(q_measured), q_measured)
    # Full stick on the first step: still exactly where the arm is, then it moves smoothly.
    np.testing.assert_array_equal(jog.step(jog_cmd(vx=1.0), DT), q_measured)
    second = jog.step(jog_cmd(vx=1.0), DT)
    assert 0.0 < np.max(np.abs(second - q_measured)) <= np.max(so101.max_velocity) * DT + 1e-12


def test_jog_moves_the_gripper_frame_along_the_axis(so101, kin) -> None:
    config = JogConfig(max_linear=0.05)
    for axis in range(3):
        jog = CartesianJog(so101, kin, config)
        start = kin.fk(jog.reset(so101.home)).translation
        jog.step(jog_cmd(), DT)  # the handover step
        twist = np.zeros(3)
        twist[axis] = 1.0
        q = run(jog, jog_cmd(*twist), 1.0)
        moved = kin.fk(q).translation - start
        expected = 0.05 * twist  # 1 s at 5 cm/s
        np.testing.assert_allclose(moved, expected, atol=0.003, err_msg=f"axis {axis}")


def test_idle_stick_holds_still(so101, kin) -> None:
    jog = CartesianJog(so101, kin)
    q0 = jog.reset(so101.home)
    q = run(jog, jog_cmd(), 0.5)
    np.testing.assert_allclose(q, q0, atol=1e-3)


def test_yaw_turns_the_gripper_about_vertical(so101, kin) -> None:
    jog = CartesianJog(so101, kin, JogConfig(max_yaw=0.5))
    q0 = jog.reset(so101.home)
    q = run(jog, jog_cmd(yaw=1.0), 0.6)  # 0.3 rad asked
    turned = kin.fk(q).rotation @ kin.fk(q0).rotation.T
    # The SO-101's approach axis is tilted at home: 5 joints reach ~80 % of a turn about vertical.
    assert 0.22 < np.arctan2(turned[1, 0], turned[0, 0]) <= 0.3
    assert q[so101.joint_index("wrist_roll")] > 0.2  # the wrist roll does it
    np.testing.assert_allclose(kin.fk(q).translation, kin.fk(q0).translation, atol=0.001)


def test_gripper_opening_maps_to_the_joint(so101, kin) -> None:
    jog = CartesianJog(so101, kin)
    jog.reset(so101.home)
    grip = so101.joint_index("gripper")
    q = run(jog, jog_cmd(gripper=0.0), 1.0)
    assert q[grip] == pytest.approx(so101.gripper.closed)
    q = run(jog, jog_cmd(gripper=1.0), 1.0)
    assert q[grip] == pytest.approx(so101.gripper.open)
    q = run(jog, jog_cmd(), 0.2)  # no gripper command: it stays
    assert q[grip] == pytest.approx(so101.gripper.open)


def test_near_the_stretched_pose_it_slows_instead_of_jumping(so101, kin) -> None:
    jog = CartesianJog(so101, kin, JogConfig(max_linear=0.2))
    start = kin.fk(jog.reset(so101.home)).translation
    outputs = [jog.step(jog_cmd(vx=1.0), DT) for _ in range(100)]  # 40 cm of stick, fast
    speeds = np.abs(np.diff(outputs, axis=0)) / DT
    assert np.all(speeds <= so101.max_velocity + 1e-9)
    assert np.all(outputs[-1] >= so101.lower) and np.all(outputs[-1] <= so101.upper)
    reached = kin.fk(outputs[-1]).translation
    assert reached[0] - start[0] > 0.15  # most of the way out ...
    np.testing.assert_allclose(reached[1:], start[1:], atol=0.002)  # ... in a straight line


def test_out_of_reach_stops_at_the_edge_without_wind_up(so101, kin) -> None:
    jog = CartesianJog(so101, kin, JogConfig(max_linear=0.05))
    jog.reset(so101.home)
    edge = kin.fk(run(jog, jog_cmd(vx=1.0), 5.0)).translation  # 25 cm of stick: beyond reach
    assert np.linalg.norm(jog.position - edge) < jog.config.reach_tol  # the target stayed with the arm
    back = kin.fk(run(jog, jog_cmd(vx=-1.0), 0.2)).translation
    assert back[0] == pytest.approx(edge[0] - 0.01, abs=0.002)  # reversing moves the arm back at once


def test_yaw_does_not_wind_up_at_the_roll_limit(so101, kin) -> None:
    jog = CartesianJog(so101, kin, JogConfig(max_yaw=2.0))
    jog.reset(so101.home)
    roll = so101.joint_index("wrist_roll")
    q = run(jog, jog_cmd(yaw=1.0), 2.0)  # 4 rad asked; the roll stops at its limit
    assert q[roll] == pytest.approx(so101.upper[roll])
    q_back = run(jog, jog_cmd(yaw=-1.0), 0.2)
    assert q_back[roll] < so101.upper[roll] - 0.2  # turns back at once


def test_joint_commands_are_not_jogged(so101, kin) -> None:
    jog = CartesianJog(so101, kin)
    with pytest.raises(RuntimeError, match="reset"):
        jog.step(jog_cmd(), DT)
    jog.reset(so101.home)
    with pytest.raises(ValueError, match="joint targets"):
        jog.step(TeleopCommand(stamp=0.0, joints=so101.home), DT)
