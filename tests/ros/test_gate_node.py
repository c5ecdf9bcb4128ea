"""The gate node over real DDS: holds, timeouts, e-stop latch, clamping and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether_ros.conversions import COMMAND_QOS, DIAGNOSTICS, STATE_QOS, joint_state_msg, source_topic, trajectory_msg
from tether_ros.gate_node import GateNode


class Probe(Node):
    """Plays robot and action source; records what the gate sends to the robot."""

    def __init__(self, profile) -> None:
        super().__init__("probe")
        self.profile = profile
        self.state_pub = self.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.chunk_pub = self.create_publisher(JointTrajectory, source_topic("expert"), COMMAND_QOS)
        self.commands: list[JointTrajectory] = []
        self.diagnostics: list[str] = []
        self.rates: list[str] = []
        self.create_subscription(JointTrajectory, profile.command_topic, self.commands.append, COMMAND_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._diag, 50)

    def _diag(self, msg: DiagnosticArray) -> None:
        gate = [s for s in msg.status if s.name == "tether/gate"]
        self.diagnostics += [s.message for s in gate]
        self.rates += [kv.value for s in gate for kv in s.values if kv.key == "rate_hz" and kv.value != "0.0"]

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def send_state(self, q: np.ndarray) -> None:
        self.state_pub.publish(joint_state_msg(self.profile.joint_names, q, np.zeros_like(q), self.now()))

    def send_chunk(self, q, names=None, times=(0.05,)) -> None:
        names = names or self.profile.joint_names
        self.chunk_pub.publish(trajectory_msg(names, self.now(), list(times), np.atleast_2d(q)))

    def last(self) -> np.ndarray:
        return np.array(self.commands[-1].points[0].positions)


@pytest.fixture
def rig(graph, so101):
    gate = graph.add(GateNode(parameter_overrides=[
        Parameter("state_timeout", value=0.1), Parameter("source_timeout", value=0.2)]))
    probe = graph.add(Probe(so101))
    return graph, gate, probe


def drive(graph, probe, seconds: float, state=True, chunk=None) -> None:
    """Stream joint states at ~100 Hz and, optionally, a chunk each time."""
    steps = int(seconds / 0.01)
    for _ in range(steps):
        if state:
            probe.send_state(probe.profile.home)
        if chunk is not None:
            probe.send_chunk(chunk)
        graph.spin_for(0.01)


def test_gate_streams_the_source_at_its_rate_and_holds_when_states_go_stale(rig, so101) -> None:
    graph, gate, probe = rig
    target = np.clip(so101.home + 0.1, so101.lower, so101.upper)
    drive(graph, probe, 1.0, chunk=target)
    assert len(probe.commands) > 100  # ~200 Hz
    np.testing.assert_allclose(probe.last(), target, atol=1e-3)
    drive(graph, probe, 0.5, state=False, chunk=target + 0.1)  # states stop, source goes on
    assert gate.gate.diagnostics()["hold_stale_joint_states"] >= 1
    held = [np.array(c.points[0].positions) for c in probe.commands[-20:]]
    assert all(np.allclose(h, held[0]) for h in held)
    assert graph.spin_until(lambda: "stale_joint_states" in probe.diagnostics, 2.0)
    assert 150 < float(probe.rates[-1]) < 250  # the gate reports its own stream rate


def test_silent_source_makes_the_gate_hold(rig, so101) -> None:
    graph, gate, probe = rig
    drive(graph, probe, 0.5, chunk=so101.home + 0.05)
    assert probe.commands and gate.gate.diagnostics().get("hold_source_silent", 0) <= 1
    drive(graph, probe, 0.6)  # states only: the source has gone quiet
    assert gate.gate.diagnostics()["hold_source_silent"] >= 1
    assert graph.spin_until(lambda: "source_silent" in probe.diagnostics, 2.0)
    held = [np.array(c.points[0].positions) for c in probe.commands[-20:]]
    assert all(np.allclose(h, held[0]) for h in held)


def test_estop_latches_until_cleared(rig, so101) -> None:
    graph, gate, probe = rig
    drive(graph, probe, 0.3, chunk=so101.home)
    client = probe.create_client(Trigger, "/gate/estop")
    future = client.call_async(Trigger.Request())
    assert graph.spin_until(future.done)
    drive(graph, probe, 0.5, chunk=so101.home + 0.2)
    np.testing.assert_allclose(probe.last(), so101.home, atol=1e-9)
    clear = probe.create_client(Trigger, "/gate/clear_estop").call_async(Trigger.Request())
    assert graph.spin_until(clear.done)
    target = np.clip(so101.home + 0.2, so101.lower, so101.upper)
    drive(graph, probe, 0.5, chunk=target)
    np.testing.assert_allclose(probe.last(), target, atol=1e-3)
    assert gate.gate.diagnostics()["estops"] == 1


def test_targets_beyond_limits_are_clamped(rig, so101) -> None:
    graph, gate, probe = rig
    drive(graph, probe, 0.6, chunk=so101.upper + 1.0)
    out = np.array([c.points[0].positions for c in probe.commands])
    assert np.all(out <= so101.upper + 1e-12)
    assert np.all(np.abs(out - so101.home) <= gate.gate.config.max_step + 1e-9)
    assert gate.gate.diagnostics()["clamped_values"] > 0


BAD = {
    "unknown_joint": dict(names=["shoulder_pan", "elbow", "wrist_flex", "wrist_roll", "gripper", "shoulder_lift"]),
    "point_size": dict(q=[[0.0] * 5]),
    "non_finite_nan": dict(q=[[math.nan] * 6]),
    "non_finite_inf": dict(q=[[math.inf] + [0.0] * 5]),
    "time_order": dict(q=[[0.1] * 6, [0.2] * 6], times=(0.2, 0.1)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_trajectories_are_refused_and_never_forwarded(rig, so101, case) -> None:
    graph, gate, probe = rig
    drive(graph, probe, 0.3, chunk=so101.home)
    before = len(probe.commands)
    bad = BAD[case]
    for _ in range(10):
        probe.send_state(so101.home)
        probe.send_chunk(bad.get("q", [so101.home + 0.3]), names=bad.get("names"), times=bad.get("times", (0.05,)))
        graph.spin_for(0.01)
    reason = case.removesuffix("_nan").removesuffix("_inf")
    assert graph.spin_until(lambda: any(f"expert:{reason}" in m for m in probe.diagnostics), 2.0)
    for msg in probe.commands[before:]:
        q = np.array(msg.points[0].positions)
        assert list(msg.joint_names) == so101.joint_names
        assert np.all(np.isfinite(q)) and np.allclose(q, so101.home, atol=1e-6)


def test_takeover_is_published_as_a_latched_intervention(rig, so101) -> None:
    from std_msgs.msg import Bool

    from tether_ros.conversions import INTERVENTION, LATCHED_QOS

    graph, gate, probe = rig
    drive(graph, probe, 0.3, chunk=so101.home)
    future = probe.create_client(Trigger, "/gate/takeover").call_async(Trigger.Request())
    assert graph.spin_until(future.done) and "mode=human" in future.result().message
    # A late subscriber still learns that a human is driving (transient-local).
    late: list[bool] = []
    probe.create_subscription(Bool, INTERVENTION, lambda m: late.append(m.data), LATCHED_QOS)
    assert graph.spin_until(lambda: late and late[-1] is True)
    teleop_pub = probe.create_publisher(JointTrajectory, source_topic("teleop"), COMMAND_QOS)
    target = np.clip(so101.home + 0.1, so101.lower, so101.upper)
    for _ in range(40):
        probe.send_state(so101.home)
        probe.send_chunk(so101.home - 0.2)  # the policy is ignored now
        teleop_pub.publish(trajectory_msg(so101.joint_names, probe.now(), [0.05], np.atleast_2d(target)))
        graph.spin_for(0.01)
    np.testing.assert_allclose(probe.last(), target, atol=1e-3)
    back = probe.create_client(Trigger, "/gate/handback").call_async(Trigger.Request())
    assert graph.spin_until(back.done) and graph.spin_until(lambda: late[-1] is False)


def test_a_second_commander_is_a_latched_fault_that_stops_and_exits(rig, so101) -> None:
    """Nothing but the gate may publish on the robot's command topic; an intruder stops the gate for good."""
    graph, gate, probe = rig
    drive(graph, probe, 0.3, chunk=so101.home + 0.05)
    intruder = graph.add(Node("rogue_teleop"))
    rogue = intruder.create_publisher(JointTrajectory, so101.command_topic, COMMAND_QOS)
    for _ in range(300):  # up to 3 s: the gate sees the intruder once discovery has matched it
        probe.send_state(so101.home)
        probe.send_chunk(so101.home + 0.05)
        rogue.publish(trajectory_msg(so101.joint_names, probe.now(), [0.01], np.atleast_2d(so101.home + 0.3)))
        graph.spin_for(0.01)
        if gate.finished:
            break
    assert gate.finished and gate.exit_code == 3
    assert any("second commander" in m and "/rogue_teleop" in m for m in probe.diagnostics)
    ours = [c for c in probe.commands if np.allclose(c.points[0].time_from_start.nanosec, 5_000_000)]
    last = [np.array(c.points[0].positions) for c in ours[-5:]]
    assert all(np.allclose(q, last[-1]) for q in last)  # its last commands stand still


def test_the_gates_last_act_is_a_stop_within_the_limits(rig, so101) -> None:
    """Whatever ends the gate (a signal, a dead supervisor), it leaves the arm standing still, not frozen mid-swing."""
    import threading

    graph, gate, probe = rig
    far = so101.home.copy()
    far[0] = 1.5
    drive(graph, probe, 0.4, chunk=far)  # swinging the base at its velocity limit
    closing = threading.Thread(target=gate.close)
    closing.start()
    while closing.is_alive():
        probe.send_state(np.array(probe.commands[-1].points[0].positions) if probe.commands else so101.home)
        graph.spin_for(0.005)
    graph.spin_for(0.1)
    q = np.array([c.points[0].positions for c in probe.commands])[:, 0]
    v = np.diff(q) / gate.gate.period
    moving = np.flatnonzero(np.abs(v) > 2.5)
    assert moving.size and v[-1] == 0.0  # it was swinging, and ended at rest ...
    stop = v[moving[-1]:]
    assert np.all(np.abs(np.diff(stop)) / gate.gate.period <= so101.max_acceleration[0] * (1 + 1e-6))  # ... braking
    assert gate.gate.diagnostics()["hold_shutdown"] == 1


def test_on_sim_time_the_stream_follows_clock_at_exact_deadlines(graph, so101) -> None:
    """use_sim_time: /clock (here in the twin's 4 ms steps) drives the ticks, each stamped at its own deadline."""
    from rosgraph_msgs.msg import Clock

    from tether_ros.conversions import to_stamp

    gate = graph.add(GateNode(parameter_overrides=[Parameter("use_sim_time", value=True)]))
    probe = graph.add(Probe(so101))
    clock = probe.create_publisher(Clock, "/clock", 10)
    sim = 100.0
    for _ in range(400):  # 1.6 s of sim time, whatever the wall clock does meanwhile
        sim += 0.004
        clock.publish(Clock(clock=to_stamp(sim)))
        probe.state_pub.publish(joint_state_msg(so101.joint_names, so101.home, np.zeros(6), sim))
        probe.chunk_pub.publish(trajectory_msg(so101.joint_names, sim, [0.05], np.atleast_2d(so101.home + 0.05)))
        graph.spin_for(0.003)
    graph.spin_for(0.2)
    stamps = np.array([c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 for c in probe.commands])
    assert len(stamps) > 200
    np.testing.assert_allclose(np.diff(stamps), 0.005, atol=1e-6)  # every tick, evenly spaced in sim time
    assert gate.gate.diagnostics()["chunks"] > 0 and stamps[-1] <= sim + 1e-6
