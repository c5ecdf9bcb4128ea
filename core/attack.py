"""Hostile and malformed action chunks, for proving that the gate refuses them and stays in its limits.

    attack = ChunkAttack(profile, seed=0)
    names, start, times, positions = attack.chunk("non_finite", now)

Each kind is something a buggy or hostile action source could publish; ``valid`` chunks aim at
random positions (some beyond the joint limits, which the gate clamps), so a flood of them keeps
the safety filter busy. The gate's refusal reason for each malformed kind is ``REFUSAL[kind]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tether.robot_profile import RobotProfile

Chunk = tuple[list[str], float, list[float], list[list[float]]]  # joint names, stamp, times, positions

# Malformed kind -> the reason the gate gives when it refuses it (tether.safety.ChunkRejected.reason).
REFUSAL = {
    "unknown_joint": "unknown_joint",
    "duplicate_joint": "joint_set",
    "non_finite": "non_finite",
    "point_size": "point_size",
    "time_order": "time_order",
    "empty": "empty",
    "too_many_points": "too_many_points",
    "too_long": "too_long",
    "stale_stamp": "stale_stamp",
    "future_stamp": "future_stamp",
}
KINDS = ("valid", *REFUSAL)


@dataclass
class ChunkAttack:
    profile: RobotProfile
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def chunk(self, kind: str, now: float) -> Chunk:
        """One chunk of ``kind`` (see KINDS), stamped relative to ``now``."""
        if kind not in KINDS:
            raise ValueError(f"unknown attack '{kind}'; kinds: {', '.join(KINDS)}")
        names, start, times, q = self._random(now)
        if kind == "valid":
            return names, start, times, q
        malform = getattr(self, f"_{kind}")
        return malform(names, start, times, q)  # type: ignore[no-any-return]

    def _random(self, now: float) -> Chunk:
        p, n = self.profile, self._rng.integers(1, 12)
        span = p.upper - p.lower
        q = self._rng.uniform(p.lower - 0.2 * span, p.upper + 0.2 * span, size=(n, len(p.joints)))
        times = np.cumsum(self._rng.uniform(0.01, 0.3, size=n))
        return list(p.joint_names), now, times.tolist(), q.tolist()

    def _unknown_joint(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        return ["elbow", *names[1:]], start, times, q

    def _duplicate_joint(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        return [names[0], *names[:-1]], start, times, q

    def _non_finite(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        q[-1][int(self._rng.integers(len(names)))] = float(self._rng.choice([np.nan, np.inf, -np.inf]))
        return names, start, times, q

    def _point_size(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        q[0] = q[0][:-1]
        return names, start, times, q

    def _time_order(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        return names, start, [*times[:-1], -1.0] if len(times) > 1 else [-0.1], q

    def _empty(self, names: list[str], start: float, _times: list[float], _q: list[list[float]]) -> Chunk:
        return names, start, [], []

    def _too_many_points(self, names: list[str], start: float, _times: list[float], q: list[list[float]]) -> Chunk:
        n = self.profile.chunks.max_points * 50  # 10,000 points: the length that stalled the stream before
        return names, start, (np.arange(1, n + 1) * 1e-3).tolist(), [q[0]] * n

    def _too_long(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        return names, start, [*times[:-1], self.profile.chunks.max_duration + 5.0], q

    def _stale_stamp(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        return names, start - 10.0, times, q

    def _future_stamp(self, names: list[str], start: float, times: list[float], q: list[list[float]]) -> Chunk:
        return names, start + 10.0, times, q
