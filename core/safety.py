"""The safety filter every command passes through on its way to a robot.

``validate_chunk`` refuses malformed trajectories (unknown joints, wrong
sizes, NaN/inf, times that do not increase) and clamps targets to the joint
limits. ``SafetyFilter`` then bounds each streamed command: position limits,
velocity and acceleration relative to the previous command, and a maximum
step away from the measured state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tether.errors import TetherError, UnknownJointError
from tether.robot_profile import RobotProfile
from tether.trajectory import Chunk


class ChunkRejected(TetherError):
    """A trajectory the gate refuses. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def validate_chunk(
    profile: RobotProfile,
    joint_names: Sequence[str],
    start: float,
    times: Sequence[float],
    positions: Sequence[Sequence[float]],
) -> tuple[Chunk, int]:
    """Return the chunk in profile joint order and the number of clamped values."""
    names = list(joint_names)
    for name in names:
        if name not in profile.joint_names:
            err = UnknownJointError("trajectory", name, profile.joint_names)
            raise ChunkRejected("unknown_joint", str(err))
    missing = [n for n in profile.joint_names if n not in names]
    if missing or len(set(names)) != len(names):
        raise ChunkRejected("joint_set", f"trajectory must name each of {profile.joint_names} once; missing {missing}")
    if len(times) == 0:
        raise ChunkRejected("empty", "trajectory has no points")
    rows = [list(p) for p in positions]
    bad = [i for i, row in enumerate(rows) if len(row) != len(names)]
    if bad:
        raise ChunkRejected("point_size", f"point {bad[0]} has {len(rows[bad[0]])} positions, expected {len(names)}")
    q = np.asarray(rows, dtype=float)
    t = np.asarray(times, dtype=float)
    if not np.all(np.isfinite(q)) or not np.all(np.isfinite(t)) or not np.isfinite(start):
        raise ChunkRejected("non_finite", "trajectory contains NaN or inf")
    if t[0] < 0 or np.any(np.diff(t) <= 0):
        raise ChunkRejected("time_order", f"time_from_start must be >= 0 and strictly increasing, got {t.tolist()}")
    order = [names.index(n) for n in profile.joint_names]
    q = q[:, order]
    clamped = np.clip(q, profile.lower, profile.upper)
    n_clamped = int(np.count_nonzero(clamped != q))
    return Chunk(tuple(profile.joint_names), float(start), t, clamped), n_clamped


@dataclass(frozen=True)
class SafetyLimits:
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    max_step: float  # rad, largest distance a command may lead the measured state

    @classmethod
    def from_profile(cls, profile: RobotProfile, max_step: float) -> SafetyLimits:
        return cls(profile.lower, profile.upper, profile.max_velocity, profile.max_acceleration, max_step)


class SafetyFilter:
    """Streams commands that respect position, velocity, acceleration and step limits."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits
        self._last: np.ndarray | None = None
        self._velocity = np.zeros_like(limits.lower)
        self._last_target: np.ndarray | None = None
        self.limited_count = 0  # commands that ended more than ``limited_tolerance`` from the target
        self.limited_tolerance = 1e-3  # rad

    def reset(self, position: np.ndarray) -> None:
        self._last = np.clip(np.asarray(position, float), self.limits.lower, self.limits.upper)
        self._velocity = np.zeros_like(self._last)
        self._last_target = None

    @property
    def last(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()

    def __call__(self, desired: np.ndarray, measured: np.ndarray, dt: float) -> np.ndarray:
        lim = self.limits
        if self._last is None:
            self.reset(measured)
        assert self._last is not None
        target = np.clip(desired, lim.lower, lim.upper)
        target = np.clip(target, measured - lim.max_step, measured + lim.max_step)
        # Track a moving target without lag: brake on the error relative to the target's own motion.
        target_velocity = np.zeros_like(target) if self._last_target is None else (target - self._last_target) / dt
        self._last_target = target
        error = target - self._last
        a = lim.max_acceleration
        # Fastest relative speed from which discrete braking at ``a`` still stops within |error|.
        v_brake = a * (np.sqrt(dt * dt / 4.0 + 2.0 * np.abs(error) / a) - dt / 2.0)
        v_wanted = target_velocity + np.clip(error / dt - target_velocity, -v_brake, v_brake)
        dv = np.clip(v_wanted - self._velocity, -a * dt, a * dt)
        velocity = np.clip(self._velocity + dv, -lim.max_velocity, lim.max_velocity)
        out = self._last + velocity * dt
        passed = (out - target) * (self._last - target) < 0
        out[passed] = target[passed]  # arrive rather than overshoot
        # The position and step bounds are hard, whatever the dynamics wanted.
        out = np.clip(np.clip(out, measured - lim.max_step, measured + lim.max_step), lim.lower, lim.upper)
        if np.max(np.abs(out - target)) > self.limited_tolerance:
            self.limited_count += 1
        self._velocity = (out - self._last) / dt
        self._last = out
        return out.copy()
