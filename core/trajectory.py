"""Joint trajectories with ros2_control JointTrajectoryController semantics.

A :class:`Chunk` is one ``trajectory_msgs/JointTrajectory``: ``start`` is the
time at which the trajectory begins (``header.stamp``) and each point's
``time_from_start`` is its offset from it. :class:`TrajectoryFollower`
executes chunks the way JTC does: a new chunk replaces the rest of the old one
from its start time; motion is linear between points; points whose time has
already passed are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    joint_names: tuple[str, ...]
    start: float  # seconds, same clock as the follower
    times: np.ndarray  # (K,) offsets from start, strictly increasing
    positions: np.ndarray  # (K, n)

    @property
    def end(self) -> float:
        return self.start + float(self.times[-1])


class TrajectoryFollower:
    """Piecewise-linear setpoint over absolute time, replaced chunk by chunk."""

    def __init__(self, initial: np.ndarray, now: float = 0.0) -> None:
        self.reset(initial, now)

    def reset(self, position: np.ndarray, now: float) -> None:
        self._t = np.array([now], dtype=float)
        self._q = np.asarray(position, dtype=float).reshape(1, -1).copy()

    @property
    def end_time(self) -> float:
        return float(self._t[-1])

    def sample(self, t: float) -> np.ndarray:
        if t <= self._t[0]:
            return self._q[0].copy()
        if t >= self._t[-1]:
            return self._q[-1].copy()
        i = int(np.searchsorted(self._t, t, side="right"))
        t0, t1 = self._t[i - 1], self._t[i]
        a = (t - t0) / (t1 - t0)
        return (1.0 - a) * self._q[i - 1] + a * self._q[i]

    def command(self, chunk: Chunk, now: float) -> None:
        """Replace the trajectory from ``max(chunk.start, now)`` on."""
        anchor_t = max(chunk.start, now)
        anchor_q = self.sample(anchor_t)
        abs_t = chunk.start + chunk.times
        keep = abs_t > anchor_t
        if not np.any(keep):  # every point is already past: go to (and hold) the last one
            self._t = np.array([anchor_t])
            self._q = chunk.positions[-1:].astype(float).copy()
            return
        old = self._t < anchor_t
        self._t = np.concatenate([self._t[old], [anchor_t], abs_t[keep]])
        self._q = np.vstack([self._q[old], anchor_q, chunk.positions[keep]])
        # Drop history that can never be sampled again.
        first = max(0, int(np.searchsorted(self._t, now, side="right")) - 1)
        self._t, self._q = self._t[first:], self._q[first:]
