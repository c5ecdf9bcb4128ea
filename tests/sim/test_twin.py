"""The twin as its users drive it: reset, position targets, grasp and place, cameras."""

from __future__ import annotations

from collections.abc import Iterator

import mujoco
import numpy as np
import pytest

from tether.errors import NoTaskError, UnknownCameraError, UnknownTaskError
from tether.robot_profile import RobotProfile
from tether.sim.tasks import PickPlace
from tether.sim.twin import Twin

TASK = PickPlace()


@pytest.fixture(scope="module")
def twin(so101: RobotProfile) -> Iterator[Twin]:
    with Twin(so101, "pick_place") as t:
        yield t


# -- helpers: a tiny top-down IK and a smooth mover, just enough to grasp ------------------------
def top_down_ik(twin: Twin, pos: np.ndarray, closing_axis: np.ndarray, q0: np.ndarray) -> np.ndarray | None:
    """Damped least squares on the arm joints: ee site at ``pos``, approach axis straight down."""
    model, data = twin.model, mujoco.MjData(twin.model)
    site = model.site(twin.profile.ee_frame).id
    goal = np.column_stack([closing_axis, np.cross([0.0, 0.0, -1.0], closing_axis), [0.0, 0.0, -1.0]])
    arm = [twin.joint_names.index(n) for n in twin.profile.arm_joint_names]
    dofs = [model.jnt_dofadr[model.joint(twin.joint_names[i]).id] for i in arm]
    q = q0.copy()
    for _ in range(300):
        for name, value in zip(twin.joint_names, q):
            data.qpos[model.jnt_qposadr[model.joint(name).id]] = value
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        rot = data.site_xmat[site].reshape(3, 3)
        e_pos = pos - data.site_xpos[site]
        e_rot = 0.5 * sum(np.cross(rot[:, i], goal[:, i]) for i in range(3))
        if np.linalg.norm(e_pos) < 5e-4 and np.linalg.norm(e_rot) < 1e-2:
            return q
        jp, jr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        mujoco.mj_jacSite(model, data, jp, jr, site)
        jac = np.vstack([jp, 0.3 * jr])[:, dofs]
        err = np.concatenate([e_pos, 0.3 * e_rot])
        q[arm] += jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), err)
        q = np.clip(q, twin.profile.lower, twin.profile.upper)
    return None


def tcp_for(center: np.ndarray, closing: np.ndarray) -> np.ndarray:
    # The SO-101 ee frame sits on the fixed jaw's inner face, so offset it by half a cube.
    return center + (TASK.cube_half + 0.003) * closing


def top_down_grasp(twin: Twin, center: np.ndarray, yaw: float, q0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint config and closing axis that put the jaws around ``center``.

    A cube can be taken across either pair of faces, from either side: of the four closing
    axes, use the one that needs the least wrist roll (the roll range stops short of +-pi).
    """
    roll = twin.joint_names.index("wrist_roll")
    found = []
    for k in range(4):
        closing = np.array([np.cos(yaw + k * np.pi / 2), np.sin(yaw + k * np.pi / 2), 0.0])
        q = top_down_ik(twin, tcp_for(center, closing), closing, q0)
        if q is not None:
            found.append((abs(q[roll]), k, q, closing))
    assert found, f"no top-down grasp reaches {center}"
    _, _, q, closing = min(found, key=lambda f: (f[0], f[1]))
    return q, closing


def move(twin: Twin, goal: np.ndarray, seconds: float, rate_hz: float = 200.0) -> None:
    """Interpolate targets linearly, as a trajectory follower would."""
    start, n = twin.targets(), int(seconds * rate_hz)
    for k in range(1, n + 1):
        twin.set_targets(start + (goal - start) * k / n)
        twin.step(1000.0 / rate_hz)


def with_gripper(q: np.ndarray, twin: Twin, value: float) -> np.ndarray:
    q = q.copy()
    q[twin.joint_names.index(twin.profile.gripper.joint)] = value
    return q


def grasp_and_lift(twin: Twin, lift: float = 0.06) -> np.ndarray:
    """Grasp the cube top-down and lift it; returns the lifted joint configuration."""
    cube, quat = twin.object_pose()
    yaw = 2 * np.arctan2(quat[3], quat[0])
    grip = twin.profile.gripper
    at, closing = top_down_grasp(twin, cube, yaw, twin.profile.home)
    above = top_down_ik(twin, tcp_for(cube, closing) + [0, 0, lift], closing, at)
    assert above is not None
    above, at = with_gripper(above, twin, grip.open), with_gripper(at, twin, grip.open)
    move(twin, above, 1.0)
    move(twin, at, 0.8)
    move(twin, at, 0.3)
    move(twin, with_gripper(at, twin, grip.closed), 0.5)
    move(twin, with_gripper(at, twin, grip.closed), 0.3)
    lifted = with_gripper(above, twin, grip.closed)
    move(twin, lifted, 1.0)
    move(twin, lifted, 0.3)
    return lifted


def place_cube_at(twin: Twin, xy: np.ndarray) -> None:
    adr = twin.model.jnt_qposadr[twin.model.joint("cube_free").id]
    twin.data.qpos[adr:adr + 7] = [*xy, TASK.cube_half, 1, 0, 0, 0]
    mujoco.mj_forward(twin.model, twin.data)


# -- reset --------------------------------------------------------------------------------------
def test_same_seed_same_state_and_different_seeds_differ(twin: Twin) -> None:
    twin.reset(seed=3)
    first = (twin.data.qpos.copy(), twin.target_position())
    twin.step(100)
    twin.reset(seed=3)
    assert twin.time == 0.0
    np.testing.assert_array_equal(twin.data.qpos, first[0])
    np.testing.assert_array_equal(twin.target_position(), first[1])
    np.testing.assert_array_equal(twin.joint_positions(), twin.profile.home)
    twin.reset(seed=4)
    assert not np.allclose(twin.object_pose()[0], first[0][-7:-4])


def test_same_seed_same_trajectory(twin: Twin) -> None:
    finals = []
    for _ in range(2):
        twin.reset(seed=5)
        twin.set_targets(twin.profile.home + 0.2)
        twin.step(300)
        finals.append(twin.data.qpos.copy())
    np.testing.assert_array_equal(*finals)


def test_cube_and_target_spawn_inside_their_regions(twin: Twin) -> None:
    for seed in range(25):
        twin.reset(seed)
        cube, _ = twin.object_pose()
        target = twin.target_position()
        assert TASK.cube_region.contains(cube[:2])
        assert TASK.target_region.contains(target[:2])
        assert np.linalg.norm(cube[:2] - target[:2]) >= TASK.min_separation
        assert cube[2] == pytest.approx(TASK.cube_half)
        assert not twin.success()


# -- position control ---------------------------------------------------------------------------
def test_position_control_reaches_target(twin: Twin) -> None:
    twin.reset(0)
    goal = twin.profile.home + np.array([0.4, 0.3, -0.3, -0.3, 0.5, 0.5])
    twin.set_targets(goal)
    twin.step(1500)
    assert twin.time == pytest.approx(1.5)
    np.testing.assert_allclose(twin.joint_positions(), goal, atol=0.03)
    assert np.abs(twin.joint_velocities()).max() < 0.05


def test_step_carries_over_partial_timesteps(twin: Twin) -> None:
    twin.reset(0)
    for _ in range(200):
        twin.step(5.0)  # 200 Hz control on a 2 ms physics step
    assert twin.time == pytest.approx(1.0, abs=0.001)


def test_targets_are_clipped_to_joint_limits(twin: Twin) -> None:
    twin.reset(0)
    twin.set_targets(twin.profile.upper + 1.0)
    np.testing.assert_allclose(twin.targets(), twin.profile.upper)
    twin.set_targets(twin.profile.lower - 1.0)
    np.testing.assert_allclose(twin.targets(), twin.profile.lower)


def test_nan_targets_are_refused(twin: Twin) -> None:
    twin.reset(0)
    q = twin.profile.home.copy()
    q[2] = np.nan
    with pytest.raises(ValueError, match="elbow_flex"):
        twin.set_targets(q)
    np.testing.assert_array_equal(twin.targets(), twin.profile.home)
    with pytest.raises(ValueError):
        twin.set_targets(np.zeros(3))


# -- grasp and place ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grasp_lifts_cube_and_holds_it_while_moving(twin: Twin, seed: int) -> None:
    twin.reset(seed)
    lifted = grasp_and_lift(twin)
    cube, _ = twin.object_pose()
    assert cube[2] >= TASK.cube_half + 0.05, f"cube only at z={cube[2]:.3f}"
    offset = cube - twin.ee_pose()[0]
    # Swing the arm sideways: the cube stays in the jaws.
    pan = twin.joint_names.index("shoulder_pan")
    swung = lifted.copy()
    swung[pan] += 0.5
    move(twin, swung, 0.8)
    move(twin, swung, 0.5)
    cube, _ = twin.object_pose()
    assert cube[2] >= TASK.cube_half + 0.05
    assert np.linalg.norm((cube - twin.ee_pose()[0]) - offset) < 0.01
    assert TASK.held(twin.model, twin.data)
    assert not twin.success()
    assert {"held", "not_resting"} <= set(twin.outcome().missed)


def test_placing_cube_in_target_zone_succeeds(twin: Twin) -> None:
    twin.reset(1)
    lifted = grasp_and_lift(twin)
    target = twin.target_position()
    closing = twin.ee_pose()[1][:, 0]  # keep the grasp: the same closing axis over the target
    grip = twin.profile.gripper
    down = top_down_ik(twin, tcp_for(target, closing) + [0, 0, 0.004], closing, lifted)
    above = top_down_ik(twin, tcp_for(target, closing) + [0, 0, 0.06], closing, lifted)
    assert down is not None and above is not None
    move(twin, with_gripper(above, twin, grip.closed), 1.0)
    move(twin, with_gripper(down, twin, grip.closed), 0.8)
    assert not twin.success()  # still in the jaws
    assert "held" in twin.outcome().missed and "outside_target" not in twin.outcome().missed
    move(twin, with_gripper(down, twin, grip.open), 0.4)
    move(twin, with_gripper(above, twin, grip.open), 0.8)
    move(twin, with_gripper(above, twin, grip.open), 0.3)
    assert twin.success(), f"cube at {twin.object_pose()[0]}, target {target}"


def test_cube_outside_target_zone_is_not_success(twin: Twin) -> None:
    twin.reset(2)
    target = twin.target_position()
    place_cube_at(twin, target[:2])
    assert twin.success() and twin.outcome().missed == () and twin.outcome().distance_m < 1e-3
    place_cube_at(twin, target[:2] + [TASK.target_radius + 0.01, 0.0])
    assert not twin.success()
    outcome = twin.outcome()
    assert outcome.missed == ("outside_target",)
    assert outcome.distance_m == pytest.approx(TASK.target_radius + 0.01, abs=2e-3)


# -- cameras ------------------------------------------------------------------------------------
def test_every_camera_renders_an_rgb_image(twin: Twin) -> None:
    twin.reset(0)
    for name in twin.camera_names:
        cam = twin.profile.camera(name)
        image = twin.render(name)
        assert image.shape == (cam.height, cam.width, 3) and image.dtype == np.uint8
        assert image.std() > 10, f"camera '{name}' image is nearly flat"
        small = twin.render(name, 128, 96)
        assert small.shape == (96, 128, 3)


def test_front_camera_sees_the_cube(twin: Twin) -> None:
    twin.reset(0)
    image = twin.render("front", 160, 120).astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.sum() > 5


def test_render_size_overrides_profile_size(so101: RobotProfile) -> None:
    with Twin(so101, "pick_place", render_size=(96, 64)) as t:
        assert t.render("wrist").shape == (64, 96, 3)


def test_unknown_camera_lists_cameras(twin: Twin) -> None:
    with pytest.raises(UnknownCameraError, match="front"):
        twin.render("top")


# -- other profiles and tasks -------------------------------------------------------------------
def test_panda_twin_without_task(panda: RobotProfile) -> None:
    with Twin(panda, task=None) as t:
        t.reset(0)
        t.set_targets(panda.home + 0.1)
        t.step(200)
        assert t.task_name is None and not t.success()
        assert t.render("front", 64, 48).std() > 5
        with pytest.raises(NoTaskError):
            t.object_pose()


def test_unknown_task_is_refused(so101: RobotProfile) -> None:
    with pytest.raises(UnknownTaskError, match="pick_place"):
        Twin(so101, "juggle")
