"""One conversion from a joint-state message's fields to the robot's joint vector.

Every node that reads ``/joint_states`` (the gate, the policy, the expert, teleop, the recorder)
goes through ``joint_vector``, so a message that lacks one of the robot's joints, carries more
positions or fewer than names, or a NaN, is refused the same way everywhere: with
``UnknownJointError`` or ``JointStateError`` naming what is wrong, which each node reports on
``/diagnostics`` instead of crashing or dropping the message in silence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tether.errors import TetherError, UnknownJointError


class MissingJointStateError(UnknownJointError):
    """A joint-state message lacks one of the robot's joints (other joints in it are ignored)."""

    def __init__(self, where: str, joint: str, robot_joints: Sequence[str], present: Sequence[str]) -> None:
        TetherError.__init__(self, f"{where}: no position for the robot's joint '{joint}'; the message names "
                                   f"{', '.join(present) or 'no joints'}; the robot's joints: {', '.join(robot_joints)}")
        self.joint = joint


class JointStateError(TetherError, ValueError):
    """A joint-state message whose values cannot be read as positions (wrong count, NaN or inf)."""


def joint_vector(robot_joints: Sequence[str], names: Sequence[str], values: Sequence[float],
                 where: str = "joint_states") -> np.ndarray:
    """``values`` (one per entry of ``names``) in the order of ``robot_joints``; extra joints are ignored."""
    if len(values) != len(names):
        raise JointStateError(f"{where}: {len(names)} joint names but {len(values)} positions")
    index = {n: i for i, n in enumerate(names)}
    for joint in robot_joints:
        if joint not in index:
            raise MissingJointStateError(where, joint, robot_joints, names)
    q = np.array([values[index[j]] for j in robot_joints], dtype=float)
    if not np.all(np.isfinite(q)):
        bad = [j for j, v in zip(robot_joints, q) if not np.isfinite(v)]
        raise JointStateError(f"{where}: non-finite position for {', '.join(bad)}")
    return q
