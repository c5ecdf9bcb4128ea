"""Model building: URDF -> MJCF, the on-disk cache, the end-effector site, tasks and profiles."""

from __future__ import annotations

import mujoco
import numpy as np
import pinocchio as pin
import pytest

from tether.errors import UnknownTaskError
from tether.robot_profile import RobotProfile
from tether.sim.model import build_model, model_xml_path, simplify_mesh
from tether.sim.tasks import task_names


def test_so101_model_has_servos_pads_site_and_cameras(so101: RobotProfile, tmp_path) -> None:
    model = build_model(so101, "pick_place", cache_dir=tmp_path)
    assert [model.actuator(i).name for i in range(model.nu)] == so101.joint_names
    grip = model.actuator(so101.gripper.joint)
    assert grip.forcerange[1] == pytest.approx(so101.gripper.force_limit)
    assert model.actuator("shoulder_lift").gainprm[0] == pytest.approx(so101.servo.kp)
    for name in ("fixed_jaw_pad", "moving_jaw_pad"):
        assert model.geom(name).contype > 0
    assert {model.camera(i).name for i in range(model.ncam)} == {"front", "wrist"}
    assert model.site(so101.ee_frame).id >= 0


def test_model_cache_is_reused(so101: RobotProfile, tmp_path) -> None:
    path = model_xml_path(so101, "pick_place", cache_dir=tmp_path)
    # Tamper with the cached file: if the second build reads it instead of reconverting,
    # the tampered model name shows through.
    path.write_text(path.read_text().replace('model="tether_so101"', 'model="from_cache"', 1))
    model = build_model(so101, "pick_place", cache_dir=tmp_path)
    assert mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, 0) == "world"
    assert model.names.split(b"\0")[0] == b"from_cache"
    assert list(tmp_path.glob("*.xml")) == [path]


def test_cache_key_changes_with_task(so101: RobotProfile, tmp_path) -> None:
    assert model_xml_path(so101, None, cache_dir=tmp_path) != model_xml_path(so101, "pick_place", cache_dir=tmp_path)


@pytest.mark.parametrize("profile_name", ["so101", "panda"])
def test_ee_site_matches_pinocchio_fk(profile_name: str, request, tmp_path) -> None:
    profile: RobotProfile = request.getfixturevalue(profile_name)
    model = build_model(profile, None, cache_dir=tmp_path)
    data = mujoco.MjData(model)
    robot = pin.buildModelFromUrdf(str(profile.urdf_path))
    robot_data = robot.createData()
    frame = robot.getFrameId(profile.ee_frame)
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.uniform(profile.lower, profile.upper)
        q_pin = pin.neutral(robot)
        for name, value in zip(profile.joint_names, q):
            data.qpos[model.jnt_qposadr[model.joint(name).id]] = value
            q_pin[robot.joints[robot.getJointId(name)].idx_q] = value
        mujoco.mj_kinematics(model, data)
        pin.framesForwardKinematics(robot, robot_data, q_pin)
        expected = robot_data.oMf[frame].translation + np.asarray(profile.base_pos)
        assert np.linalg.norm(data.site(profile.ee_frame).xpos - expected) < 1e-3


def test_panda_builds_without_task(panda: RobotProfile, tmp_path) -> None:
    model = build_model(panda, None, cache_dir=tmp_path)
    assert model.nu == len(panda.joints)
    with pytest.raises(KeyError):
        model.body("cube")


def test_unknown_task_lists_valid_ones(so101: RobotProfile, tmp_path) -> None:
    with pytest.raises(UnknownTaskError, match="pick_place"):
        build_model(so101, "stack_blocks", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.xml"))
    assert "pick_place" in task_names()


def test_simplify_mesh_merges_vertices_in_a_cell() -> None:
    # Two triangles of a 1 cm square plus a sliver triangle much smaller than the cell.
    verts = np.array([[0, 0, 0], [0.01, 0, 0], [0.01, 0.01, 0], [0, 0.01, 0],
                      [0.0001, 0.0001, 0], [0.0002, 0.0001, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 4, 5]])
    v, f = simplify_mesh(verts, faces, cell=0.002)
    assert f.shape == (2, 3)
    assert len(v) == 4
