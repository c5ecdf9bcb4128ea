"""One conversion from a joint-state message's names and positions to the robot's joint vector."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.errors import UnknownJointError
from tether.joint_state import JointStateError, MissingJointStateError, joint_vector

JOINTS = ["shoulder_pan", "elbow_flex", "gripper"]


def test_positions_come_back_in_the_robots_order_and_extra_joints_are_ignored() -> None:
    q = joint_vector(JOINTS, ["gripper", "camera_tilt", "shoulder_pan", "elbow_flex"], [0.3, 9.0, 0.1, 0.2])
    np.testing.assert_array_equal(q, [0.1, 0.2, 0.3])


def test_a_missing_joint_is_an_unknown_joint_error_naming_it_and_what_the_message_has() -> None:
    with pytest.raises(MissingJointStateError, match=r"joint_states: no position for the robot's joint 'gripper'; "
                                                     r"the message names shoulder_pan, elbow_flex") as err:
        joint_vector(JOINTS, ["shoulder_pan", "elbow_flex"], [0.1, 0.2])
    assert isinstance(err.value, UnknownJointError) and err.value.joint == "gripper"


def test_names_and_positions_of_different_lengths_are_refused() -> None:
    with pytest.raises(JointStateError, match="3 joint names but 2 positions"):
        joint_vector(JOINTS, JOINTS, [0.1, 0.2])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_position_is_refused_naming_the_joint(bad: float) -> None:
    with pytest.raises(JointStateError, match="non-finite position for elbow_flex"):
        joint_vector(JOINTS, JOINTS, [0.1, bad, 0.3], where="/leader/joint_states")
