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
from tether.robot_profile import ChunkLimits, RobotProfile
from tether.trajectory import Chunk

# A chunk's points, each the joint positions: lists from a test or the CLI, float64 arrays viewing a
# message's buffer in a node.
PointRows = Sequence[Sequence[float] | np.ndarray]


class RateLimiter:
    """A token bucket: ``rate`` events a second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, -np.inf

    def ready(self, now: float) -> bool:
        """Would an event be admitted now? (Does not use a token.)"""
        return self._level(now) >= 1.0

    def take(self, now: float) -> bool:
        """Admit an event now if a token is left."""
        self._tokens, self._at = self._level(now), now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _level(self, now: float) -> float:
        return float(min(self.burst, self._tokens + (now - self._at) * self.rate)) if self._at > -np.inf else self.burst


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
    positions: PointRows,
    now: float | None = None,
) -> tuple[Chunk, int]:
    """Return the chunk in profile joint order and the number of clamped values.

    With ``now``, the stamp must also lie within the profile's ``chunks.max_age`` / ``max_lead`` of it.
    """
    names = list(joint_names)
    _check_size(profile.chunks, times)
    for name in names:
        if name not in profile.joint_names:
            err = UnknownJointError("trajectory", name, profile.joint_names)
            raise ChunkRejected("unknown_joint", str(err))
    missing = [n for n in profile.joint_names if n not in names]
    if missing or len(set(names)) != len(names):
        raise ChunkRejected("joint_set", f"trajectory must name each of {profile.joint_names} once; missing {missing}")
    rows = list(positions)  # sequences or 1-D arrays: only their lengths are read before stacking
    bad = [i for i, row in enumerate(rows) if len(row) != len(names)]
    if len(rows) != len(times) or bad:
        raise ChunkRejected("point_size", f"point {bad[0] if bad else len(rows)} has "
                                          f"{len(rows[bad[0]]) if bad else 0} positions, expected {len(names)}")
    q = np.asarray(rows, dtype=float)
    t = np.asarray(times, dtype=float)
    if not np.all(np.isfinite(q)) or not np.all(np.isfinite(t)) or not np.isfinite(start):
        raise ChunkRejected("non_finite", "trajectory contains NaN or inf")
    if t[0] < 0 or np.any(np.diff(t) <= 0):
        raise ChunkRejected("time_order", f"time_from_start must be >= 0 and strictly increasing, got {t.tolist()}")
    _check_timing(profile.chunks, start, float(t[-1]), now)
    order = [names.index(n) for n in profile.joint_names]
    q = q[:, order]
    clamped = np.clip(q, profile.lower, profile.upper)
    n_clamped = int(np.count_nonzero(clamped != q))
    return Chunk(tuple(profile.joint_names), float(start), t, clamped), n_clamped


def max_chunk_bytes(limits: ChunkLimits, joints: int) -> int:
    """The most CDR bytes a chunk within ``max_points`` can take: a node refuses more before decoding it.

    A point holds at most four arrays of ``joints`` doubles (positions, velocities, accelerations,
    efforts), each with a length prefix padded to 8 bytes, and a duration; names and header get a
    generous allowance. Decoding a 10,000-point chunk held the Python interpreter for tens of ms.
    """
    return limits.max_points * (4 * (8 + 8 * joints) + 16) + joints * 256 + 1024


def _check_size(limits: ChunkLimits, times: Sequence[float]) -> None:
    """Checked first: a huge chunk is refused before any work proportional to its size."""
    if len(times) == 0:
        raise ChunkRejected("empty", "trajectory has no points")
    if len(times) > limits.max_points:
        raise ChunkRejected("too_many_points", f"trajectory has {len(times)} points; the profile allows "
                                               f"{limits.max_points} (chunks.max_points)")


def _check_timing(limits: ChunkLimits, start: float, duration: float, now: float | None) -> None:
    if duration > limits.max_duration:
        raise ChunkRejected("too_long", f"trajectory lasts {duration:.3f} s; the profile allows "
                                        f"{limits.max_duration} s (chunks.max_duration)")
    if now is None:
        return
    if start < now - limits.max_age:
        raise ChunkRejected("stale_stamp", f"trajectory is stamped {now - start:.3f} s in the past; the profile "
                                           f"allows {limits.max_age} s (chunks.max_age): its observation is stale")
    if start > now + limits.max_lead:
        raise ChunkRejected("future_stamp", f"trajectory is stamped {start - now:.3f} s in the future; the profile "
                                            f"allows {limits.max_lead} s (chunks.max_lead)")


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


def stopping_speed(distance: np.ndarray, accel: np.ndarray, dt: float) -> np.ndarray:
    """The highest speed from which a stream of ``dt`` ticks, braking at ``accel``, stops within ``distance``.

    Exact for the discrete stream: at speed v the commands still move ``dt * sum(max(0, v - i*accel*dt))``
    (i = 0, 1, ...), this tick included. Negative distances give 0 (no room at all).
    """
    d = np.maximum(np.asarray(distance, dtype=float), 0.0)
    unit = accel * dt * dt  # the distance one tick of braking takes off
    n = np.floor((np.sqrt(1.0 + 8.0 * d / unit) - 1.0) / 2.0)  # whole braking ticks that fit
    speed = (d + unit * n * (n + 1) / 2.0) / ((n + 1) * dt)
    return np.minimum(speed, (n + 1) * accel * dt)


class SafetyFilter:
    """Streams commands that respect position, velocity, acceleration and step limits on every tick.

    Each tick chooses the next velocity inside the intersection of what every limit allows,
    so no later step can undo an earlier one:

    1. the target: the desired position within the joint limits and within ``max_step`` of the
       measured state;
    2. the velocity that reaches it fastest without overshoot (braking at the acceleration limit,
       riding along when the target itself moves);
    3. the bounds: the acceleration limit around the current velocity, the velocity limit, and
       braking envelopes that keep the stream able to stop before each joint limit and before the
       edge of the ``max_step`` band around the measured state;
    4. the command: the wanted velocity clipped into those bounds, integrated once.

    Position, velocity and acceleration are hard: they hold on every tick by induction. The step
    band is kept too, unless the measured state runs away faster than the limits let the command
    follow (a push, a collision, a stalled servo): then the kinematic limits win, the tick is
    counted in ``step_exceeded`` and the gate stops the stream (JointTrajectoryController aborts on
    its path tolerance the same way). ``stop()`` decelerates within the limits to a standstill near
    the current command; nothing ever snaps to the measured state, so a gripper holding an object
    keeps holding it.
    """

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits
        self._last: np.ndarray | None = None
        self._velocity = np.zeros_like(limits.lower)
        self._last_target: np.ndarray | None = None
        self.limited_count = 0  # commands that ended more than ``limited_tolerance`` from the target
        self.limited_tolerance = 1e-3  # rad
        self.step_exceeded = 0  # ticks on which the measured state ran out of the step band

    def reset(self, position: np.ndarray) -> None:
        """Start (or restart after a robot reset) at ``position``, at rest."""
        self._last = np.clip(np.asarray(position, float), self.limits.lower, self.limits.upper)
        self._velocity = np.zeros_like(self._last)
        self._last_target = None

    @property
    def last(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()

    @property
    def velocity(self) -> np.ndarray:
        return self._velocity.copy()

    @property
    def moving(self) -> bool:
        return bool(np.any(self._velocity != 0.0))

    def __call__(self, desired: np.ndarray, measured: np.ndarray, dt: float) -> np.ndarray:
        """The next command toward ``desired``."""
        last = self._start(measured)
        target = self._target(desired, measured)
        target_velocity = np.zeros_like(target) if self._last_target is None else (target - self._last_target) / dt
        self._last_target = target
        # ``target`` is where the command should be after this tick; ``gap`` is how far the command
        # trails (or leads) the moving target, which it closes no faster than it can brake.
        gap = target - last - target_velocity * dt
        brake = stopping_speed(np.abs(gap), self.limits.max_acceleration, dt)
        wanted = target_velocity + np.clip(gap / dt, -brake, brake)
        out = self._advance(wanted, measured, dt)
        if np.max(np.abs(out - target)) > self.limited_tolerance:
            self.limited_count += 1
        return out

    def stop(self, measured: np.ndarray, dt: float) -> np.ndarray:
        """Decelerate within the limits toward a standstill near the current command."""
        self._start(measured)
        self._last_target = None  # whatever tracks next starts from rest, not from a stale target
        return self._advance(np.zeros_like(self._velocity), measured, dt)

    def _start(self, measured: np.ndarray) -> np.ndarray:
        if self._last is None:
            self.reset(measured)
        assert self._last is not None
        return self._last

    def _target(self, desired: np.ndarray, measured: np.ndarray) -> np.ndarray:
        lim = self.limits
        target = np.clip(desired, lim.lower, lim.upper)
        return np.clip(target, measured - lim.max_step, measured + lim.max_step)

    def _advance(self, wanted: np.ndarray, measured: np.ndarray, dt: float) -> np.ndarray:
        """Clip ``wanted`` into the velocities every limit allows, and take one tick at it."""
        assert self._last is not None
        lim, last = self.limits, self._last
        # Room to each edge: the joint limits, and the max_step band around the measured state.
        room = np.stack([last - lim.lower, lim.upper - last,
                         last - (measured - lim.max_step), measured + lim.max_step - last])
        brake = stopping_speed(room, lim.max_acceleration, dt)  # one call for the four: this runs at 200 Hz
        lo, hi = self._kinematic_bounds(brake[0], brake[1], dt)
        step_lo, step_hi = self._step_bounds(room[2:], brake[2:])
        self.step_exceeded += int(np.any(np.maximum(lo, step_lo) > np.minimum(hi, step_hi)))
        # The step band first, then the hard limits: inside both when they meet (the same as clipping into
        # their intersection); when the measured state has run away they do not, and the command heads
        # back toward it as fast as the limits allow instead of standing where it is.
        velocity = np.minimum(np.maximum(np.minimum(np.maximum(wanted, step_lo), step_hi), lo), hi)
        out = np.clip(last + velocity * dt, lim.lower, lim.upper)  # rounding only
        self._velocity = (out - last) / dt
        self._last = out
        return out.copy()

    def _kinematic_bounds(self, brake_low: np.ndarray, brake_high: np.ndarray,
                          dt: float) -> tuple[np.ndarray, np.ndarray]:
        """Velocities within the acceleration and velocity limits that can still stop before the joint limits."""
        lim, v = self.limits, self._velocity
        dv = lim.max_acceleration * dt
        lo = np.maximum(np.maximum(v - dv, -lim.max_velocity), -brake_low)
        hi = np.minimum(np.minimum(v + dv, lim.max_velocity), brake_high)
        # The envelope tightens by at most one tick of braking per tick, so lo <= hi by induction;
        # rounding aside, the acceleration bound is the one to keep.
        return np.minimum(lo, v + dv), np.maximum(hi, v - dv)

    @staticmethod
    def _step_bounds(room: np.ndarray, brake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Velocities that keep the command able to stop inside the band of ``max_step`` around ``measured``.

        A command already outside the band (the measured state ran away) must head back into it: its
        bound on the far side becomes infinite, and the kinematic limits decide how fast.
        """
        return np.where(room[0] < 0, np.inf, -brake[0]), np.where(room[1] < 0, -np.inf, brake[1])
