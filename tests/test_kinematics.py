"""Kinematics against real pinocchio and MuJoCo: FK, Jacobian, IK and the errors users see."""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np
import pinocchio as pin
import pytest

from tether.errors import IKError, JointVectorError, UnknownFrameError, UnknownJointError
from tether.kinematics import Kinematics
from tether.robot_profile import RobotProfile, load_profile

ROBOTS = ["so101", "panda"]
DOWN = np.array([0.0, 0.0, -1.0])


@pytest.fixture(scope="module", params=ROBOTS)
def robot(request: pytest.FixtureRequest) -> tuple[RobotProfile, Kinematics]:
    profile = load_profile(request.param)
    return profile, Kinematics(profile)


@pytest.fixture(scope="module")
def so101() -> tuple[RobotProfile, Kinematics]:
    profile = load_profile("so101")
    return profile, Kinematics(profile)


def random_q(profile: RobotProfile, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(profile.lower, profile.upper)


def within_limits(profile: RobotProfile, q: np.ndarray) -> bool:
    return bool(np.all(q >= profile.lower - 1e-12) and np.all(q <= profile.upper + 1e-12))


def mujoco_model(profile: RobotProfile) -> mujoco.MjModel:
    """The same URDF in MuJoCo, with fixed links kept as bodies so the EE frame exists."""
    spec = mujoco.MjSpec.from_string(profile.urdf_text())
    spec.compiler.fusestatic = False
    spec.compiler.discardvisual = True
    return spec.compile()


def top_down(yaw: float) -> np.ndarray:
    """Rotation with the frame's z pointing straight down and its x at ``yaw`` about world z."""
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    return np.column_stack([x, np.cross(DOWN, x), DOWN])


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arccos(np.clip(a @ b, -1.0, 1.0)))


# ---------------------------------------------------------------- forward kinematics


def test_fk_matches_mujoco(robot: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = robot
    model = mujoco_model(profile)
    data = mujoco.MjData(model)
    body = model.body(profile.ee_frame).id
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = random_q(profile, rng)
        data.qpos[:] = 0.0  # joints the profile does not control (Panda fingers) sit at 0, as in Kinematics
        for name, value in zip(profile.joint_names, q):
            data.qpos[model.joint(name).qposadr[0]] = value
        mujoco.mj_kinematics(model, data)
        pose = kin.fk(q)
        assert np.linalg.norm(pose.translation - data.xpos[body]) < 1e-3
        rot_mj = data.xmat[body].reshape(3, 3)
        assert np.linalg.norm(pin.log3(pose.rotation.T @ rot_mj)) < np.deg2rad(0.1)


def test_joint_order_comes_from_the_profile_not_the_urdf(robot: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = robot
    shuffled = dataclasses.replace(profile, joints=list(reversed(profile.joints)))
    kin_shuffled = Kinematics(shuffled)
    q = random_q(profile, np.random.default_rng(1))
    assert kin_shuffled.joint_names == list(reversed(kin.joint_names))
    assert kin_shuffled.fk(q[::-1]).isApprox(kin.fk(q), 1e-12)
    np.testing.assert_allclose(kin_shuffled.jacobian(q[::-1]), kin.jacobian(q)[:, ::-1], atol=1e-12)


def test_any_urdf_frame_can_be_used(so101: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = so101
    wrist = Kinematics(profile, frame="wrist_link")
    assert wrist.frame == "wrist_link"
    assert kin.frame == profile.ee_frame == "gripper_frame_link"
    # At home the gripper tip is ahead of and below the wrist.
    offset = kin.fk(profile.home).translation - wrist.fk(profile.home).translation
    assert offset[0] > 0.0 and offset[2] < 0.0


# ---------------------------------------------------------------- Jacobian


def test_jacobian_matches_finite_differences(robot: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = robot
    rng = np.random.default_rng(2)
    h = 1e-6
    for _ in range(20):
        q = random_q(profile, rng)
        jac = kin.jacobian(q)
        assert jac.shape == (6, len(profile.joint_names))
        for i in range(len(q)):
            step = np.zeros_like(q)
            step[i] = h
            plus, minus = kin.fk(q + step), kin.fk(q - step)
            linear = (plus.translation - minus.translation) / (2 * h)
            # World-aligned angular velocity: the rotation taking R(q-h) to R(q+h), expressed in the world.
            angular = pin.log3(plus.rotation @ minus.rotation.T) / (2 * h)
            np.testing.assert_allclose(jac[:3, i], linear, atol=1e-6)
            np.testing.assert_allclose(jac[3:, i], angular, atol=1e-6)


# ---------------------------------------------------------------- inverse kinematics


def test_ik_reaches_full_poses_from_a_perturbed_seed(robot: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = robot
    rng = np.random.default_rng(3)
    arm = [profile.joint_index(n) for n in profile.arm_joint_names]
    hits = 0
    for _ in range(60):
        q_true = random_q(profile, rng)
        target = kin.fk(q_true)
        seed = q_true.copy()
        seed[arm] += rng.normal(0.0, 0.15, len(arm))
        seed = np.clip(seed, profile.lower, profile.upper)
        result = kin.ik(target.translation, target.rotation, seed)
        assert within_limits(profile, result.q)
        reached = np.linalg.norm(kin.fk(result.q).translation - target.translation)
        hits += result.converged and reached < 2e-3
    assert hits >= 0.95 * 60


def test_ik_position_only_from_home_with_restarts(robot: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = robot
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(60):
        target = kin.fk(random_q(profile, rng)).translation
        # Targets behind the base need the other arm branch; random restarts find it.
        result = kin.ik(target, None, profile.home, restarts=5)
        assert within_limits(profile, result.q)
        hits += result.converged and np.linalg.norm(kin.fk(result.q).translation - target) < 2e-3
    assert hits >= 0.95 * 60


def test_ik_moves_only_active_joints(so101: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = so101
    seed = profile.home.copy()
    seed[profile.joint_index("gripper")] = 0.7
    target = kin.fk(random_q(profile, np.random.default_rng(5))).translation
    result = kin.ik(target, None, seed, restarts=5)  # default active: arm joints, never the gripper
    assert result.converged
    assert result.q[profile.joint_index("gripper")] == 0.7

    pan_only = kin.ik(kin.fk(profile.home).translation + [0.0, 0.0, 0.05], None, seed, active=["shoulder_pan"])
    assert not pan_only.converged  # panning cannot raise the gripper...
    np.testing.assert_array_equal(np.delete(pan_only.q, 0), np.delete(seed, 0))  # ...and nothing else moved


def test_unreachable_target_reports_failure_within_limits(so101: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = so101
    far = np.array([1.0, 0.0, 0.2])  # the SO-101 reaches about 0.4 m
    result = kin.ik(far, None, profile.home)
    assert not result.converged and result.iters == 100
    assert result.pos_err > 0.5
    assert within_limits(profile, result.q)
    with pytest.raises(IKError, match=r"position error \d+\.\d+ mm"):
        kin.solve_or_raise(far, None, profile.home)


def test_ik_from_a_nearby_seed_needs_few_iterations(robot: tuple[RobotProfile, Kinematics]) -> None:
    """A closed-loop expert re-solves from the last solution each tick; that must converge quickly.

    Iterations, not seconds: timing belongs in the benchmark, not in a test.
    """
    profile, kin = robot
    rng = np.random.default_rng(6)
    iters = []
    for _ in range(100):
        q = random_q(profile, rng)
        target = kin.fk(q)
        seed = np.clip(q + rng.normal(0.0, 0.05, len(q)), profile.lower, profile.upper)
        result = kin.ik(target.translation, target.rotation, seed)
        assert result.converged
        iters.append(result.iters)
    assert np.median(iters) <= 10


# ---------------------------------------------------------------- top-down grasps on the 5-DOF SO-101

# Top-down (z-axis down) poses the SO-101 reaches: the low tabletop band. Found by a grid search
# with restarts and confirmed by sampling 200k configurations: at x=0.30 the corners at |y|=0.15
# are out of reach, and the reachable radius shrinks as z grows.
TABLETOP = [(x, y, z) for x in (0.15, 0.20, 0.25) for y in (-0.15, -0.05, 0.0, 0.05, 0.15) for z in (0.01, 0.03, 0.05)]


@pytest.mark.parametrize("z", [0.01, 0.03, 0.05])
def test_top_down_grasps_over_the_tabletop(so101: tuple[RobotProfile, Kinematics], z: float) -> None:
    profile, kin = so101
    for x, y, _ in [p for p in TABLETOP if p[2] == z]:
        result = kin.ik([x, y, z], None, profile.home, axis=DOWN, restarts=10)
        pose = kin.fk(result.q)
        assert result.converged, (x, y, z, result)
        assert np.linalg.norm(pose.translation - [x, y, z]) < 2e-3
        assert angle_between(pose.rotation[:, 2], DOWN) < np.deg2rad(3.0)
        assert within_limits(profile, result.q)


def test_top_down_is_out_of_reach_above_about_10_cm(so101: tuple[RobotProfile, Kinematics]) -> None:
    """wrist_flex tops out at 95 deg, so the gripper cannot point straight down from higher up."""
    profile, kin = so101
    # A low rot_weight lets position win: the point is reachable, but only ~25 deg off vertical.
    result = kin.ik([0.20, 0.0, 0.15], None, profile.home, axis=DOWN, restarts=10, rot_weight=0.02)
    assert not result.converged
    assert result.pos_err < 2e-3
    assert result.rot_err > np.deg2rad(15.0)
    assert result.q[profile.joint_index("wrist_flex")] == pytest.approx(profile.upper[profile.joint_index("wrist_flex")])


def test_wrist_roll_sets_the_yaw_of_a_top_down_grasp(so101: tuple[RobotProfile, Kinematics]) -> None:
    """With the approach axis vertical, wrist_roll turns the gripper about it: any yaw (mod 180) is reachable."""
    profile, kin = so101
    position = np.array([0.20, 0.05, 0.03])
    yaws = np.deg2rad(np.arange(0, 180, 30))
    rolls, pans = [], []
    for yaw in yaws:
        # A two-finger grasp at yaw and at yaw + 180 deg is the same grasp; wrist_roll's range misses ~40 deg.
        results = [kin.ik(position, top_down(yaw + flip), profile.home, restarts=10) for flip in (0.0, np.pi)]
        best = next(r for r in results if r.converged)
        rolls.append(best.q[profile.joint_index("wrist_roll")])
        pans.append(best.q[profile.joint_index("shoulder_pan")])
    # Same position => nearly the same pan (the tip sits ~8 mm off the roll axis, so pan shifts a little)...
    assert np.ptp(pans) < np.deg2rad(5.0)
    # ...and grasp yaw = wrist_roll - shoulder_pan + constant (mod 180 deg): roll sets the yaw one-for-one.
    offsets = np.asarray(rolls) - np.asarray(pans) - yaws
    spread = np.angle(np.exp(2j * (offsets - offsets[0]))) / 2
    assert np.all(np.abs(spread) < np.deg2rad(0.5))


# ---------------------------------------------------------------- errors


def test_unknown_frame_lists_valid_frames(so101: tuple[RobotProfile, Kinematics]) -> None:
    profile, _ = so101
    with pytest.raises(UnknownFrameError, match="unknown frame 'gripper_tip'.*gripper_frame_link"):
        Kinematics(profile, frame="gripper_tip")


def test_wrong_joint_vector_length_names_the_joints(so101: tuple[RobotProfile, Kinematics]) -> None:
    _, kin = so101
    with pytest.raises(JointVectorError, match=r"6 values \(shoulder_pan, .*gripper\), got shape \(5,\)"):
        kin.fk(np.zeros(5))
    with pytest.raises(JointVectorError):
        kin.ik([0.2, 0.0, 0.1], None, np.zeros(7))


def test_unknown_active_joint(so101: tuple[RobotProfile, Kinematics]) -> None:
    profile, kin = so101
    with pytest.raises(UnknownJointError, match="unknown joint 'elbow'"):
        kin.ik([0.2, 0.0, 0.1], None, profile.home, active=["shoulder_pan", "elbow"])
