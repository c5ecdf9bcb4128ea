"""Robot profiles load offline, and every malformed profile gets a typed error naming the problem."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from tether.errors import (
    CameraPoseError,
    ConfigError,
    MissingJointError,
    MissingKeyError,
    ProfileNotFoundError,
    UnknownJointError,
    UnknownKeyError,
    URDFNotFoundError,
)
from tether.robot_profile import PROFILE_DIR, load_profile


def test_so101_uses_lerobot_joint_names_and_an_offline_urdf(so101) -> None:
    assert so101.joint_names == ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    assert so101.urdf_path.is_file() and "cmeel.prefix" in str(so101.urdf_path)
    assert "package://" not in so101.urdf_text()
    assert [c.name for c in so101.cameras] == ["front", "wrist"]
    assert so101.command_topic.endswith("joint_trajectory")
    assert np.all(so101.lower < so101.upper)


def test_panda_profile_loads_with_the_same_format(panda) -> None:
    assert len(panda.joint_names) == 7 and panda.gripper is None


def test_camera_look_at_gives_a_unit_quaternion(so101) -> None:
    q = so101.camera("front").orientation()
    assert q.shape == (4,) and abs(np.linalg.norm(q) - 1) < 1e-9


def _write(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((PROFILE_DIR / "so101.yaml").read_text())
    edit(data)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_is_named_with_the_valid_ones(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d.update(comand_topic="/x"))
    with pytest.raises(UnknownKeyError, match="unknown key 'comand_topic'; valid keys: .*command_topic"):
        load_profile(path)


def test_unknown_key_inside_a_joint(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d["joints"][0].update(max_vel=1.0))
    with pytest.raises(UnknownKeyError, match=r"joints\[0\]: unknown key 'max_vel'"):
        load_profile(path)


def test_missing_key(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d.pop("command_topic"))
    with pytest.raises(MissingKeyError, match="command_topic"):
        load_profile(path)


def test_joint_missing_from_the_urdf(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d["joints"][1].update(name="shoulder_lyft"))
    with pytest.raises(MissingJointError, match="'shoulder_lyft' is not in the URDF; URDF joints: .*shoulder_pan"):
        load_profile(path)


def test_gripper_must_be_a_profile_joint(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d["gripper"].update(joint="claw"))
    with pytest.raises(UnknownJointError, match="claw"):
        load_profile(path)


def test_urdf_that_cannot_be_found(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d.update(urdf="example-robot-data:robots/nope/nope.urdf"))
    with pytest.raises(URDFNotFoundError, match="nope.urdf' not found; searched"):
        load_profile(path)


@pytest.mark.parametrize(
    ("camera", "message"),
    [
        ({"pos": [0.1, 0.2]}, "expected 3 finite numbers"),
        ({"pos": ["a", 0, 0]}, r"pos\[0\]: expected a number"),
        ({"look_at": None}, "exactly one of 'look_at' or 'quat'"),
        ({"quat": [1, 0, 0, 0]}, "exactly one of 'look_at' or 'quat'"),
        ({"look_at": None, "quat": [2, 0, 0, 0]}, "not a unit quaternion"),
        ({"parent": "no_such_link"}, "parent 'no_such_link'"),
    ],
)
def test_camera_pose_that_does_not_parse(tmp_path, camera, message) -> None:
    path = _write(tmp_path, lambda d: d["cameras"][0].update(camera))
    with pytest.raises(CameraPoseError, match=message):
        load_profile(path)


def test_limits_and_home_are_checked(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d["joints"][0].update(home=5.0))
    with pytest.raises(ConfigError, match="home 5.0 outside"):
        load_profile(path)


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ProfileNotFoundError, match="available: panda, so101"):
        load_profile("ur7")


def test_numbers_must_be_numbers(tmp_path) -> None:
    path = _write(tmp_path, lambda d: d["joints"][0].update(lower="low"))
    with pytest.raises(ConfigError, match=r"joints\[0\].lower: expected a number"):
        load_profile(path)
