"""The gate: the one path from action sources to a robot's command topic.

ROS-free core of the gate node. Sources hand in chunks; the gate keeps the
active source's chunk in a JTC-semantics follower, samples it at a fixed rate,
runs the safety filter and returns the command to stream. It holds position
when joint states go stale, when the active source falls silent, or while an
e-stop is latched.

Convention: tether's action sources stamp a chunk with the capture time of the
observation it was computed from, so ``publish time - chunk.start`` is the
observation-to-command latency.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from tether.errors import ConfigError, TetherError
from tether.joint_state import joint_vector
from tether.robot_profile import RobotProfile
from tether.safety import (
    ChunkRejected,
    PointRows,
    RateLimiter,
    SafetyFilter,
    SafetyLimits,
    max_chunk_bytes,
    validate_chunk,
)
from tether.stats import Histogram
from tether.trajectory import TrajectoryFollower


@dataclass(frozen=True)
class GateConfig:
    rate_hz: float = 200.0
    state_timeout: float = 0.1  # s; older joint states are not trusted
    source_timeout: float = 0.5  # s; a silent active source makes the gate hold
    max_step: float = 0.35  # rad; how far a command may lead the measured state
    sources: list[str] = field(default_factory=lambda: ["expert", "policy", "teleop"])
    active_source: str = "expert"  # the autonomous source: a policy, or the scripted expert
    human_source: str = "teleop"

    def __post_init__(self) -> None:
        for role in ("active_source", "human_source"):
            if getattr(self, role) not in self.sources:
                raise ConfigError(f"{role} '{getattr(self, role)}' is not one of the sources {self.sources}")
        if self.rate_hz <= 0 or self.state_timeout <= 0 or self.source_timeout <= 0:
            raise ConfigError("rate_hz, state_timeout and source_timeout must be positive")


class Mode(str, Enum):
    AUTONOMOUS = "autonomous"
    HUMAN = "human"
    PAUSED = "paused"


@dataclass(frozen=True)
class GateCommand:
    positions: np.ndarray
    hold: bool
    reason: str  # "tracking" or why the gate holds


class Gate:
    def __init__(self, profile: RobotProfile, config: GateConfig | None = None) -> None:
        self.profile = profile
        self.config = config or GateConfig()
        self.period = 1.0 / self.config.rate_hz
        self.filter = SafetyFilter(SafetyLimits.from_profile(profile, self.config.max_step))
        self.mode = Mode.AUTONOMOUS
        self.latency_ms = Histogram(width=0.05, limit=2000.0)  # observation -> command, the whole run
        self.counters: collections.Counter[str] = collections.Counter()
        self._follower: TrajectoryFollower | None = None
        self._measured: np.ndarray | None = None
        self._state_stamp = -np.inf
        self._last_chunk_rx = -np.inf
        self._pending_obs: float | None = None
        self._estop = False
        self.fault = ""  # a latched fault (a second commander on the robot's topic): hold until restarted
        self.shutting_down = False  # the gate's last act: a stop within the limits
        self._hold_reason = ""  # why the gate holds now ("" while tracking)
        self._step_faults = 0  # the filter's step_exceeded count already acted on
        self._fault = ""  # why the last trajectory was stopped, until a new chunk arrives
        limits = profile.chunks  # a flood of chunks from one source is dropped beyond the profile's rate
        self._rates = {s: RateLimiter(limits.max_rate_hz, max(1.0, limits.max_rate_hz * 0.05))
                       for s in self.config.sources}

    # --- inputs -------------------------------------------------------------
    def on_joint_state(self, names: Sequence[str], positions: Sequence[float], stamp: float) -> None:
        """Raises ``UnknownJointError`` or ``JointStateError`` for a state the gate cannot use (counted)."""
        try:
            q = joint_vector(self.profile.joint_names, names, positions)
        except TetherError:
            self.counters["joint_state_rejected"] += 1
            raise
        self._measured, self._state_stamp = q, stamp

    def on_chunk(
        self,
        source: str,
        joint_names: Sequence[str],
        start: float,
        times: Sequence[float],
        positions: PointRows,
        now: float,
    ) -> bool:
        """Accept a chunk; returns False when ``source`` is not the active one. Raises ChunkRejected."""
        if source not in self.config.sources:
            raise ChunkRejected("unknown_source", f"unknown source '{source}'; sources: {self.config.sources}")
        try:
            if not self._rates[source].take(now):
                raise ChunkRejected("rate_limited", f"source '{source}' sends more than "
                                                    f"{self.profile.chunks.max_rate_hz:g} chunks/s (chunks.max_rate_hz)")
            chunk, clamped = validate_chunk(self.profile, joint_names, start, times, positions, now=now)
        except ChunkRejected as exc:
            self.counters[f"rejected_{exc.reason}"] += 1
            raise
        self.counters["clamped_values"] += clamped
        if self.mode is Mode.PAUSED or source != self.active_source:
            return False
        if self._follower is None:
            anchor = self._anchor()
            if anchor is None:
                # No joint state yet: a chunk cannot be joined smoothly to an unknown pose.
                self.counters["rejected_no_joint_state"] += 1
                raise ChunkRejected("no_joint_state", "no joint state received yet; the chunk has nothing to start from")
            self._follower = TrajectoryFollower(anchor, now)
            self._fault = ""
        self._follower.command(chunk, now)
        self._last_chunk_rx = now
        self._pending_obs = start
        self.counters["chunks"] += 1
        return True

    def check_bytes(self, source: str, nbytes: int) -> None:
        """Refuse (and count) a chunk too large to hold ``chunks.max_points``, before anyone decodes it."""
        limit = max_chunk_bytes(self.profile.chunks, len(self.profile.joints))
        if nbytes > limit:
            self.counters["rejected_too_many_points"] += 1
            raise ChunkRejected("too_many_points", f"source '{source}': a {nbytes}-byte trajectory holds more than "
                                                   f"the {self.profile.chunks.max_points} points the profile allows "
                                                   f"(chunks.max_points; at most {limit} bytes)")

    def flooded(self, source: str, now: float) -> bool:
        """True when a chunk from ``source`` would be refused for its rate: a node can then drop it
        before decoding it. The refusal is counted here."""
        limiter = self._rates.get(source)
        if limiter is None or limiter.ready(now):
            return False
        self.counters["rejected_rate_limited"] += 1
        return True

    # --- control ------------------------------------------------------------
    def estop(self) -> None:
        if not self._estop:
            self.counters["estops"] += 1
        self._estop = True

    def latch_fault(self, reason: str) -> None:
        """Stop for good: unlike the e-stop, nothing clears it but a restart of the gate."""
        if not self.fault:
            self.counters["faults"] += 1
            self.fault = reason

    @property
    def at_rest(self) -> bool:
        """The command stream is standing still (a stop has finished decelerating)."""
        return not self.filter.moving

    def clear_estop(self) -> None:
        self._estop = False
        self.fault = ""  # a latched fault (a second commander on the robot's topic): hold until restarted
        self.shutting_down = False  # the gate's last act: a stop within the limits

    @property
    def estopped(self) -> bool:
        return self._estop

    def reset(self) -> None:
        """Forget the active trajectory and re-anchor on the measured state (after a robot reset).

        In the twin a reset teleports the robot, so the command stream jumps with it; on a real robot
        nothing teleports and the jump is nil. Counted, so that judges of the stream can leave it out.
        """
        self.counters["resets"] += 1
        self._follower = None
        self._pending_obs = None
        self._last_chunk_rx = -np.inf
        if self._measured is not None:
            self.filter.reset(self._measured)
        self._hold_reason = ""

    @property
    def active_source(self) -> str:
        return self.config.human_source if self.mode is Mode.HUMAN else self.config.active_source

    @property
    def intervention(self) -> bool:
        """A human is in control (HG-DAgger style label)."""
        return self.mode is Mode.HUMAN

    def set_mode(self, mode: Mode | str) -> bool:
        """Switch who drives; returns True when the mode changed.

        The new source starts from the last safe command (its chunks are anchored there and the
        safety filter keeps velocity continuous), so a takeover never jumps.
        """
        try:
            new = Mode(mode)
        except ValueError:
            raise ConfigError(f"unknown mode '{mode}'; modes: {', '.join(m.value for m in Mode)}") from None
        if new is self.mode:
            return False
        self.mode = new
        self.counters[f"mode_{new.value}"] += 1
        self._follower = None
        self._pending_obs = None
        self._last_chunk_rx = -np.inf
        return True

    def tick(self, now: float) -> GateCommand | None:
        """The command to stream now, or None before the first joint state."""
        if self._measured is None:
            return None
        reason = self._hold_cause(now)
        if reason:
            return self._hold(reason)
        assert self._follower is not None
        desired = self._follower.sample(now + self.period)
        out = self.filter(desired, self._measured, self.period)
        if self.filter.step_exceeded > self._step_faults:
            # The measured state ran out of the step band faster than the command may follow (a push,
            # a collision, a stalled joint): stop this trajectory, as JTC does past its path tolerance.
            self._step_faults = self.filter.step_exceeded
            self._follower, self._fault = None, "tracking_error"
        self._hold_reason = ""
        self.counters["commands"] += 1
        if self._pending_obs is not None:
            if now >= self._pending_obs:
                self.latency_ms.add((now - self._pending_obs) * 1e3)
            self._pending_obs = None
        return GateCommand(out, hold=False, reason="tracking")

    def _hold_cause(self, now: float) -> str:
        if self.shutting_down:
            return "shutdown"
        if self.fault:
            return "fault"
        if self._estop:
            return "estop"
        if self.mode is Mode.PAUSED:
            return "paused"
        if now - self._state_stamp > self.config.state_timeout:
            return "stale_joint_states"
        if self._follower is None:
            return self._fault or "source_silent"
        if now - self._last_chunk_rx > self.config.source_timeout:
            return "source_silent"
        return ""

    def _hold(self, reason: str) -> GateCommand:
        """Stop: decelerate within the limits to a standstill near the current command.

        Never a snap to the measured state: a gripper closed on an object stays closed.
        """
        if reason != self._hold_reason:
            self.counters["holds"] += 1
            self.counters[f"hold_{reason}"] += 1
            self._hold_reason = reason
            self._follower = None
            self._pending_obs = None
        self.counters["hold_ticks"] += 1
        assert self._measured is not None
        return GateCommand(self.filter.stop(self._measured, self.period), hold=True, reason=reason)

    def _anchor(self) -> np.ndarray | None:
        last = self.filter.last
        if last is not None:
            return last
        return None if self._measured is None else self._measured.copy()

    def diagnostics(self) -> dict[str, float | int | str | bool]:
        out: dict[str, float | int | str | bool] = dict(self.counters)
        out.update(
            active_source=self.active_source,
            mode=self.mode.value,
            estop=self._estop,
            fault=self.fault,
            hold_reason=self._hold_reason,
            limited=self.filter.limited_count,
            step_exceeded=self.filter.step_exceeded,
        )
        if self.latency_ms.count:
            out.update(latency_p50_ms=self.latency_ms.percentile(50), latency_p99_ms=self.latency_ms.percentile(99))
        return out
