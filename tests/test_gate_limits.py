"""Every command the gate emits respects every limit: a property over random chunks, switches, stale states and e-stops.

The robot is a servo that follows the command at up to its own velocity limit; the gate sees its
position as joint states, except during random stale periods. Whatever happens, each emitted tick
must lie within the joint limits and within ``max_step`` of the measured state, and the stream's
velocity and acceleration (finite differences over the gate's period) must stay within the
profile's limits: at start-up, in holds, at e-stops and across source switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.gate import Gate, GateConfig, Mode
from tether.robot_profile import RobotProfile, load_profile
from tether.safety import ChunkRejected

PROFILE = load_profile("so101")
CONFIG = GateConfig(rate_hz=200.0, state_timeout=0.05, source_timeout=0.2, max_step=0.35,
                    active_source="expert", human_source="teleop")
TOL = 1e-9  # floating-point slack, rad (and rad/s, rad/s^2 scaled by the period)

joint_vector = st.lists(st.floats(-3.5, 3.5), min_size=6, max_size=6).map(np.array)
chunk = st.tuples(
    st.sampled_from(["expert", "teleop"]),
    st.floats(-0.3, 0.3),  # header stamp relative to now
    st.lists(st.floats(0.001, 0.4), min_size=1, max_size=12),  # gaps between points
    st.lists(joint_vector, min_size=12, max_size=12),
)
event = st.one_of(
    st.tuples(st.just("chunk"), chunk),
    st.tuples(st.sampled_from(["estop", "clear", "human", "autonomous", "pause"]), st.none()),
    st.tuples(st.just("stale"), st.integers(1, 60)),  # ticks without joint states
    st.tuples(st.just("wait"), st.integers(1, 80)),
)


@dataclass
class Stream:
    """What the gate sent, and the measured state it saw when it sent it."""

    commands: list[np.ndarray] = field(default_factory=list)
    measured: list[np.ndarray] = field(default_factory=list)


class Servo:
    """A robot joint set that moves toward the command at up to its velocity limit."""

    def __init__(self, profile: RobotProfile, q: np.ndarray) -> None:
        self.profile, self.q = profile, q.copy()

    def follow(self, command: np.ndarray, dt: float) -> None:
        reach = self.profile.max_velocity * dt
        self.q += np.clip(command - self.q, -reach, reach)


def run(events: list[tuple[str, object]], start: np.ndarray) -> Stream:
    gate, servo, stream = Gate(PROFILE, CONFIG), Servo(PROFILE, np.clip(start, PROFILE.lower, PROFILE.upper)), Stream()
    dt, now, stale = gate.period, 0.0, 0
    for kind, arg in [("wait", 5), *events, ("wait", 120)]:
        ticks = int(arg) if kind in ("wait", "stale") else 1  # type: ignore[call-overload]
        stale = ticks if kind == "stale" else stale
        _apply(gate, kind, arg, now)
        for _ in range(ticks):
            if stale > 0:
                stale -= 1
            else:
                gate.on_joint_state(PROFILE.joint_names, servo.q, stamp=now)
            cmd = gate.tick(now)
            if cmd is not None:
                stream.commands.append(cmd.positions)
                stream.measured.append(servo.q.copy())
                servo.follow(cmd.positions, dt)
            now += dt
    return stream


def _apply(gate: Gate, kind: str, arg: object, now: float) -> None:
    if kind == "chunk":
        source, offset, gaps, points = arg  # type: ignore[misc]
        times = np.cumsum(gaps).tolist()
        try:
            gate.on_chunk(source, PROFILE.joint_names, now + offset, times, points[:len(times)], now=now)
        except ChunkRejected:
            pass
    elif kind == "estop":
        gate.estop()
    elif kind == "clear":
        gate.clear_estop()
    elif kind in ("human", "autonomous", "pause"):
        gate.set_mode({"human": Mode.HUMAN, "autonomous": Mode.AUTONOMOUS, "pause": Mode.PAUSED}[kind])


def check_limits(stream: Stream, dt: float) -> None:
    q = np.array(stream.commands)
    assert np.all(q >= PROFILE.lower - TOL) and np.all(q <= PROFILE.upper + TOL), "position limit"
    lead = np.abs(q - np.array(stream.measured))
    assert np.all(lead <= CONFIG.max_step + TOL), f"step limit: lead {lead.max():.4f} rad"
    v = np.diff(q, axis=0) / dt
    assert np.all(np.abs(v) <= PROFILE.max_velocity * (1 + 1e-6) + TOL), \
        f"velocity {np.max(np.abs(v) / PROFILE.max_velocity):.3f}x the limit"
    a = np.diff(np.vstack([np.zeros(6), v]), axis=0) / dt  # the stream starts at rest
    assert np.all(np.abs(a) <= PROFILE.max_acceleration * (1 + 1e-6) + TOL / dt), \
        f"acceleration {np.max(np.abs(a) / PROFILE.max_acceleration):.3f}x the limit"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(event, min_size=1, max_size=25), start=joint_vector)
def test_every_emitted_tick_respects_every_limit(events: list[tuple[str, object]], start: np.ndarray) -> None:
    check_limits(run(events, start), 1.0 / CONFIG.rate_hz)


def test_an_estop_mid_motion_decelerates_and_keeps_the_gripper_closed() -> None:
    """The gripper closes on an object (the servo stops at 0.3 rad); an e-stop must not open it."""
    gate = Gate(PROFILE, CONFIG)
    q, dt, now = PROFILE.home.copy(), gate.period, 0.0
    q[5] = 0.3
    gate.on_joint_state(PROFILE.joint_names, q, stamp=now)
    closed = q.copy()
    closed[5] = 0.05  # squeeze the gripper ...
    moving = closed.copy()
    moving[0] += 1.0  # ... then swing the base
    commands = []
    for k in range(160):
        if k == 100:
            gate.estop()
        gate.on_joint_state(PROFILE.joint_names, q, stamp=now)
        plan = [(t - now, q) for t, q in ((0.2, closed), (1.0, moving)) if t > now] or [(0.01, moving)]
        if k % 4 == 0:  # the plan, resent at 50 Hz as a source would
            gate.on_chunk("expert", PROFILE.joint_names, now, [t for t, _ in plan], [q for _, q in plan], now=now)
        commands.append(gate.tick(now).positions)
        q[0] = commands[-1][0]  # the base follows; the gripper is blocked by the object at 0.3
        now += dt
    c = np.array(commands)
    assert np.all(c[100:, 5] < 0.3), "the e-stop opened the gripper"
    assert abs(c[-1, 5] - c[99, 5]) < 0.02  # it stops near its last command
    v = np.diff(c[:, 0]) / dt
    assert abs(v[99]) > 0.5 and abs(v[-1]) < 1e-9  # the base was moving, and came to rest ...
    assert np.all(np.abs(np.diff(v)) / dt <= PROFILE.max_acceleration[0] * (1 + 1e-6))  # ... within its limit
