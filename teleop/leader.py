"""Leader arm: a second arm moved by hand whose joint angles become the follower's targets.

The ROS node subscribes to the leader's ``sensor_msgs/JointState`` and hands each message to
:meth:`LeaderArm.update`; this class only maps it. Each follower joint takes one leader joint,
``follower = offset + scale * leader``, clipped to the follower's limits:

    leader = LeaderArm.from_config(profile, {"joints": {"gripper": {"leader": "jaw", "scale": -1.0}}})
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.errors import ConfigError, LeaderJointError, UnknownJointError, UnknownKeyError
from tether.robot_profile import RobotProfile
from tether.teleop.devices import TeleopCommand, Teleoperator, joint_features


@dataclass(frozen=True)
class JointMap:
    leader: str
    offset: float = 0.0
    scale: float = 1.0


class LeaderArm(Teleoperator):
    """Joint targets for ``profile`` from a leader's joint states (same names by default)."""

    name = "leader_arm"
    kind = "joints"

    def __init__(self, profile: RobotProfile, joints: Mapping[str, JointMap] | None = None, *,
                 activity_speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.profile = profile
        joints = dict(joints or {})
        for follower in joints:
            if follower not in profile.joint_names:
                raise UnknownJointError(f"leader mapping for '{profile.name}'", follower, profile.joint_names)
        # Unlisted follower joints follow the leader joint of the same name, unscaled.
        self.joints = [joints.get(name, JointMap(name)) for name in profile.joint_names]
        self.activity_speed = activity_speed  # rad/s that counts as activity 1
        self._clock = clock
        self._target: np.ndarray | None = None
        self._stamp = 0.0
        self._speed = 0.0

    @classmethod
    def from_config(cls, profile: RobotProfile, config: Mapping[str, Any]) -> LeaderArm:
        """``{"joints": {follower: {"leader": name, "offset": rad, "scale": k}}, "activity_speed": rad/s}``."""
        for key in config:
            if key not in ("joints", "activity_speed"):
                raise UnknownKeyError("leader config", key, ["joints", "activity_speed"])
        joints = {}
        for follower, spec in (config.get("joints") or {}).items():
            for key in spec:
                if key not in ("leader", "offset", "scale"):
                    raise UnknownKeyError(f"leader config joint '{follower}'", key, ["leader", "offset", "scale"])
            joints[follower] = JointMap(str(spec.get("leader", follower)), float(spec.get("offset", 0.0)),
                                        float(spec.get("scale", 1.0)))
        speed = config.get("activity_speed", 1.0)
        if not speed > 0:
            raise ConfigError(f"leader config: activity_speed must be positive, got {speed}")
        return cls(profile, joints, activity_speed=float(speed))

    @property
    def action_features(self) -> dict[str, type]:
        return joint_features(self.profile.joint_names)

    @property
    def has_state(self) -> bool:
        return self._target is not None

    def update(self, names: Sequence[str], positions: Sequence[float], stamp: float | None = None) -> np.ndarray:
        """Map one leader joint state; returns the follower targets it gives."""
        stamp = self._clock() if stamp is None else stamp
        index = {name: i for i, name in enumerate(names)}
        missing = [joint.leader for joint in self.joints if joint.leader not in index]
        if missing:
            raise LeaderJointError(missing, names)
        leader = np.array([float(positions[index[joint.leader]]) for joint in self.joints])
        offset = np.array([joint.offset for joint in self.joints])
        scale = np.array([joint.scale for joint in self.joints])
        target = offset + scale * leader
        target = np.clip(target, self.profile.lower, self.profile.upper)
        self._speed = self._joint_speed(target, stamp)
        self._target, self._stamp = target, stamp
        return target.copy()

    def activity(self) -> float:
        return self._speed / self.activity_speed

    def _joint_speed(self, target: np.ndarray, stamp: float) -> float:
        if self._target is None or stamp <= self._stamp:
            return 0.0
        return float(np.max(np.abs(target - self._target)) / (stamp - self._stamp))

    def _open(self) -> None:
        pass  # the node owns the subscription; nothing to open here

    def _close(self) -> None:
        self._target = None

    def _read(self) -> TeleopCommand:
        """The latest targets; ``joints`` is None until the first leader state arrived."""
        target = None if self._target is None else self._target.copy()
        return TeleopCommand(stamp=self._stamp, joints=target)
