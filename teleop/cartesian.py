"""Cartesian jog: a device's twist and gripper opening in, joint targets out.

    jog = CartesianJog(profile)
    q_target = jog.reset(q_measured)          # the handover: the first target is where the arm is
    while ...:
        q_target = jog.step(device.read(), dt)

The jog keeps a Cartesian target (end-effector position, and its orientation at reset turned by
the integrated yaw), moves it by the twist each step and solves IK seeded with the previous
solution, so the joints move continuously. Orientation counts little against position
(``rot_weight``): a 5-DoF arm like the SO-101 cannot hold every orientation, and it is the
position that the operator steers. Where the arm cannot follow (out of reach, a joint at its
limit), the target is pulled back to what the arm reached, so that reversing the stick moves
the arm at once instead of first unwinding a target far outside the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from tether.kinematics import Kinematics
from tether.robot_profile import RobotProfile
from tether.teleop.devices import TeleopCommand


@dataclass(frozen=True)
class JogConfig:
    max_linear: float = 0.10     # m/s at full deflection
    max_yaw: float = 1.0         # rad/s at full deflection
    rot_weight: float = 0.01     # m per rad of orientation error: position first (kinematics.ik)
    ik_iters: int = 20           # per step, warm-started: a few suffice at teleop speeds
    reach_tol: float = 0.002     # m: a step whose target the arm misses by more is not taken
    yaw_tol: float = 0.15        # rad: how far the yaw target may lead the reached yaw
    max_dt: float = 0.1          # s: a stalled loop must not turn into one big jump
    workspace_min: tuple[float, float, float] | None = None  # optional box for the target (base frame)
    workspace_max: tuple[float, float, float] | None = None


class CartesianJog:
    """Integrates a Cartesian target from twists and turns it into joint targets by IK."""

    def __init__(self, profile: RobotProfile, kinematics: Kinematics | None = None,
                 config: JogConfig | None = None) -> None:
        self.profile = profile
        self.kin = kinematics or Kinematics(profile)
        self.config = config or JogConfig()
        self._grip = profile.joint_index(profile.gripper.joint) if profile.gripper else None
        self.position = np.zeros(3)  # the Cartesian target (base frame) ...
        self.yaw = 0.0  # ... and how far it has turned about the vertical since reset
        self._rot0 = np.eye(3)
        self._q: np.ndarray | None = None  # last output
        self._fresh = False

    # ------------------------------------------------------------------ public

    def reset(self, q_measured: np.ndarray) -> np.ndarray:
        """Start from the measured joints; the next ``step`` also returns them unchanged."""
        q = np.clip(np.asarray(q_measured, dtype=float), self.profile.lower, self.profile.upper)
        pose = self.kin.fk(q)
        self.position = pose.translation.copy()
        self.yaw = 0.0
        self._rot0 = pose.rotation.copy()
        self._q, self._fresh = q, True
        return q.copy()

    def step(self, command: TeleopCommand, dt: float) -> np.ndarray:
        """Joint targets after moving the Cartesian target by ``command`` for ``dt`` seconds."""
        if self._q is None:
            raise RuntimeError("call reset(q_measured) before step()")
        if command.joints is not None:
            raise ValueError("this command carries joint targets: send them directly, not through the jog")
        if self._fresh:  # handover: the first target is the measured state, whatever the stick says
            self._fresh = False
            return self._q.copy()
        dt = float(np.clip(dt, 0.0, self.config.max_dt))
        twist = np.zeros(4) if command.twist is None else np.clip(command.twist, -1.0, 1.0)
        q = self._advance(twist, dt)
        q = self._with_gripper(q, command.gripper)
        q = self._speed_limited(q, dt)
        self._q = q
        return q.copy()

    def target_rotation(self) -> np.ndarray:
        return _rot_z(self.yaw) @ self._rot0

    # ------------------------------------------------------------------ steps

    def _move_target(self, twist: np.ndarray, dt: float) -> None:
        cfg = self.config
        self.position = self.position + twist[:3] * cfg.max_linear * dt
        if cfg.workspace_min is not None:
            self.position = np.maximum(self.position, cfg.workspace_min)
        if cfg.workspace_max is not None:
            self.position = np.minimum(self.position, cfg.workspace_max)
        self.yaw += float(twist[3]) * cfg.max_yaw * dt

    def _advance(self, twist: np.ndarray, dt: float) -> np.ndarray:
        """Move the target by the twist and solve, shortening the step where joints would be too fast.

        Near a stretched-out (singular) pose a little Cartesian motion takes a lot of joint
        motion: the step shrinks so that no joint exceeds its speed limit, and the arm slows
        down toward the edge of the workspace instead of jumping. A step whose target the arm
        misses by more than ``reach_tol`` (out of reach) is not taken at all.
        """
        assert self._q is not None
        start = self.position, self.yaw
        scale = 1.0
        for _ in range(3):
            self.position, self.yaw = start
            self._move_target(twist * scale, dt)
            q = self._solve()
            if q is None:
                break
            ratio = float(np.max(np.abs(q - self._q) / (self.profile.max_velocity * dt + 1e-12)))
            if ratio <= 1.0:
                self._limit_yaw_lead(q)
                return q
            scale /= ratio * 1.1  # the joint motion is about proportional to the step
        self.position, self.yaw = start
        return self._q

    def _solve(self) -> np.ndarray | None:
        """IK for the target, seeded with the last output; None if it misses by more than reach_tol."""
        assert self._q is not None
        cfg = self.config
        result = self.kin.ik(self.position, self.target_rotation(), self._q, rot_weight=cfg.rot_weight,
                             max_iters=cfg.ik_iters, pos_tol=1e-4, rot_tol=1e-3)
        return result.q if result.pos_err <= cfg.reach_tol else None

    def _limit_yaw_lead(self, q: np.ndarray) -> None:
        """Keep the yaw target within ``yaw_tol`` of the reached yaw (no wind-up at a roll limit).

        Yaw is not refused like position: a 5-DoF arm with a tilted approach axis reaches only
        part of a turn about the vertical, and refusing would stop the turn altogether.
        """
        # The part of the orientation error about the vertical; the rest (tilt) is about horizontal axes.
        error = float(pin.log3(self.target_rotation() @ self.kin.fk(q).rotation.T)[2])
        self.yaw -= error - float(np.clip(error, -self.config.yaw_tol, self.config.yaw_tol))

    def _with_gripper(self, q: np.ndarray, opening: float | None) -> np.ndarray:
        if self._grip is None or opening is None:
            return q
        assert self.profile.gripper is not None
        grip = self.profile.gripper
        q = q.copy()
        q[self._grip] = grip.closed + float(np.clip(opening, 0.0, 1.0)) * (grip.open - grip.closed)
        return q

    def _speed_limited(self, q: np.ndarray, dt: float) -> np.ndarray:
        """No joint faster than its limit (the gripper's opening can step), all within limits."""
        assert self._q is not None
        step = self.profile.max_velocity * dt
        q = self._q + np.clip(q - self._q, -step, step)
        return np.clip(q, self.profile.lower, self.profile.upper)


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
