"""Chunk scheduling: timed action chunks in, a continuous joint command out (plain numpy, no ROS).

A chunk comes from an observation captured at ``t0``; its action ``i`` applies
at ``t0 + i * action_period``. Two ways to turn a stream of chunks into one command:

- ``ensemble`` (ACT's temporal ensembling): at time t, average every stored
  chunk's prediction for t with weights ``w_i = exp(-m * i)``, ``i = 0`` for the
  oldest prediction (ACT's convention; m = 0.01 by default). Chunks whose span
  has passed are dropped.
- ``switch`` (Diffusion Policy's latency compensation): a new chunk replaces the
  old one, and its actions whose time had already passed on arrival are dropped.

In both modes a new chunk does not jump the command: over ``blend_s`` after its
arrival the command crossfades linearly from the previous plan to the new one.
How often an observation is sent for inference (``replan_period``) is
independent of the interval of output points (``control_period``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tether.errors import ConfigError, PolicyError

MODES = ("ensemble", "switch")
_EPS = 1e-9  # s; float slack on time comparisons


@dataclass(frozen=True)
class SchedulerConfig:
    action_period: float  # s between a chunk's actions (the model's control period, 1/dataset fps)
    replan_period: float  # s between observations sent for inference
    control_period: float = 0.0  # s between output points; 0: the action period
    mode: str = "ensemble"
    ensemble_m: float = 0.01  # ACT's temporal-ensembling decay, per chunk of age rank
    blend_s: float = 0.1  # crossfade from the previous plan after each new chunk; 0: switch at once

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown scheduler mode '{self.mode}'; modes: {', '.join(MODES)}")
        if self.action_period <= 0 or self.replan_period <= 0 or self.control_period < 0:
            raise ConfigError(f"action_period ({self.action_period}) and replan_period ({self.replan_period}) must "
                              f"be positive and control_period ({self.control_period}) >= 0")
        if self.blend_s < 0 or self.ensemble_m < 0:
            raise ConfigError(f"blend_s ({self.blend_s}) and ensemble_m ({self.ensemble_m}) must be >= 0")

    @property
    def dt(self) -> float:
        return self.control_period or self.action_period


@dataclass(frozen=True)
class TimedChunk:
    t0: float  # capture time of the observation; action i applies at t0 + i * period
    period: float
    actions: np.ndarray  # (k, n_joints)
    first: int = 0  # index of the first action still to run (switch mode drops stale ones)

    @property
    def start(self) -> float:
        return self.t0 + self.first * self.period

    @property
    def end(self) -> float:
        return self.t0 + (len(self.actions) - 1) * self.period

    def values(self, times: np.ndarray) -> np.ndarray:
        """Linear between actions; held at the first kept and the last action outside them."""
        kept = self.actions[self.first:]
        grid = self.start + self.period * np.arange(len(kept))
        return np.stack([np.interp(times, grid, kept[:, j]) for j in range(kept.shape[1])], axis=1)

    def covers(self, times: np.ndarray) -> np.ndarray:
        return (times >= self.start - _EPS) & (times <= self.end + _EPS)


@dataclass(frozen=True)
class _Plan:
    """What the command is at any time: chunks (oldest first), crossfaded in from ``previous``."""

    chunks: tuple[TimedChunk, ...]
    mode: str
    m: float
    previous: _Plan | None = None
    switch: float = 0.0  # when this plan took over from ``previous``
    blend_s: float = 0.0

    def sample(self, times: np.ndarray) -> np.ndarray:
        own = self._ensemble(times) if self.mode == "ensemble" else self.chunks[-1].values(times)
        if self.previous is None or self.blend_s <= 0:
            return own
        a = np.clip((times - self.switch) / self.blend_s, 0.0, 1.0)[:, None]
        return (1.0 - a) * self.previous.sample(times) + a * own

    def _ensemble(self, times: np.ndarray) -> np.ndarray:
        values = np.stack([c.values(times) for c in self.chunks])  # (C, T, D)
        cover = np.stack([c.covers(times) for c in self.chunks])  # (C, T)
        rank = np.cumsum(cover, axis=0) - 1  # 0 for the oldest chunk that predicts t
        w = np.where(cover, np.exp(-self.m * rank), 0.0)
        total = w.sum(axis=0)
        out = (w[..., None] * values).sum(axis=0) / np.where(total > 0, total, 1.0)[:, None]
        none = total == 0  # before or after every span: the newest chunk's held value
        out[none] = values[-1][none]
        return out

    def settled(self, now: float) -> _Plan:
        """The same command from ``now`` on, without finished crossfades and passed chunks."""
        live = tuple(c for c in self.chunks[:-1] if c.end >= now - _EPS) + self.chunks[-1:]
        done = self.previous is None or now >= self.switch + self.blend_s
        previous = None if done else self.previous.settled(now)  # type: ignore[union-attr]
        return _Plan(live, self.mode, self.m, previous, self.switch, self.blend_s)

    @property
    def end(self) -> float:
        return max(c.end for c in self.chunks)


class SchedulerEmpty(PolicyError):
    """The scheduler was asked for a command before any chunk arrived (or after a reset)."""


@dataclass
class ChunkScheduler:
    config: SchedulerConfig
    _plan: _Plan | None = field(default=None, init=False)
    _last_replan: float | None = field(default=None, init=False)

    def reset(self) -> None:
        self._plan, self._last_replan = None, None

    @property
    def has_plan(self) -> bool:
        return self._plan is not None

    @property
    def stored_chunks(self) -> int:
        return len(self._plan.chunks) if self._plan is not None else 0

    def replan_due(self, now: float) -> bool:
        """True (and the replan clock restarts) when an observation should go to inference now."""
        last = self._last_replan
        if last is not None and last <= now < last + self.config.replan_period - _EPS:
            return False
        self._last_replan = now  # also after a clock that went backwards (a twin reset)
        return True

    def add(self, t0: float, actions: np.ndarray, now: float) -> int:
        """Take a chunk computed from the observation at ``t0``; returns how many stale actions were dropped."""
        actions = np.asarray(actions, dtype=float)
        if actions.ndim != 2 or len(actions) == 0 or not np.all(np.isfinite(actions)):
            raise PolicyError(f"a chunk must be a finite (k, n_joints) array, got shape {actions.shape}")
        if self._plan is not None and actions.shape[1] != self._plan.chunks[-1].actions.shape[1]:
            raise PolicyError(f"chunk has {actions.shape[1]} joints; earlier chunks had "
                              f"{self._plan.chunks[-1].actions.shape[1]}")
        c = self.config
        first = 0
        if c.mode == "switch":  # actions meant for times already past are never executed
            passed = int(np.count_nonzero(t0 + c.action_period * np.arange(len(actions)) < now - _EPS))
            first = min(passed, len(actions) - 1)
        chunk = TimedChunk(t0, c.action_period, actions, first)
        old = self._plan.settled(now) if self._plan is not None else None
        kept = old.chunks if old is not None and c.mode == "ensemble" else ()
        self._plan = _Plan((*kept, chunk), c.mode, c.ensemble_m, old, now, c.blend_s if old else 0.0)
        return first

    def command(self, t: float) -> np.ndarray:
        """The joint command at time ``t`` (robot units)."""
        return self._require().sample(np.array([t], dtype=float))[0]

    def trajectory(self, now: float, horizon_s: float = math.inf, dt: float = 0.0) -> tuple[float, np.ndarray, np.ndarray]:
        """(t_first, times, positions): points every ``dt`` (default: the control period) from the first
        instant >= ``now`` on the newest chunk's time grid, up to ``now + horizon_s`` or the plan's end;
        ``times`` are offsets from ``t_first`` (JointTrajectory's time_from_start)."""
        plan = self._require().settled(now)
        self._plan = plan
        dt = dt or self.config.dt
        t0 = plan.chunks[-1].t0
        t_first = t0 + math.ceil((now - t0) / dt - 1e-6) * dt
        last = min(now + horizon_s, plan.end)
        count = max(1, int(math.floor((last - t_first) / dt + 1e-6)) + 1)
        times = dt * np.arange(count)
        return t_first, times, plan.sample(t_first + times)

    def _require(self) -> _Plan:
        if self._plan is None:
            raise SchedulerEmpty("no action chunk yet: submit an observation and add its chunk first")
        return self._plan
