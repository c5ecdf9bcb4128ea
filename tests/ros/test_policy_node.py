"""The policy node over real DDS: tiny ONNX models, a fake robot and cameras, and the gate in the loop."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.safety import validate_chunk
from tether_ros.conversions import (
    COMMAND_QOS,
    DIAGNOSTICS,
    STATE_QOS,
    camera_topic,
    joint_state_msg,
    source_topic,
    to_stamp,
    trajectory_fields,
)
from tether_ros.gate_node import GateNode
from tether_ros.policy_node import PolicyNode

# pytest runs in importlib mode: the shared ONNX builders are loaded by path.
fx = SimpleNamespace(**runpy.run_path(str(Path(__file__).parents[1] / "policy_runtime" / "onnx_fixtures.py")))
PERIOD = 0.05  # the tiny model's control period


class Robot(Node):
    """Plays the robot and its cameras; records the policy's chunks, the gate's commands and diagnostics."""

    def __init__(self, profile, size: tuple[int, int]) -> None:
        super().__init__("fake_robot")
        self.profile, self.size = profile, size
        self.state_pub = self.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.image_pubs = {c: self.create_publisher(Image, camera_topic(c), 5) for c in ("front", "wrist")}
        self.chunks: list[tuple[float, JointTrajectory]] = []  # (when the policy node published it, the chunk)
        self.commands: list[JointTrajectory] = []
        self.diagnostics: list[str] = []
        self.state_stamps: list[float] = []
        self.create_subscription(JointTrajectory, source_topic("policy"),
                                 self._on_chunk, COMMAND_QOS)
        self.create_subscription(JointTrajectory, profile.command_topic, self.commands.append, COMMAND_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._diag, 50)

    def _diag(self, msg: DiagnosticArray) -> None:
        self.diagnostics += [s.message for s in msg.status if s.name == "tether/policy"]

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_chunk(self, msg: JointTrajectory, info: MessageInfo) -> None:
        # The publisher's write time, not this probe's receive time: on a busy machine the probe may
        # take the sample hundreds of ms later, which says nothing about the chunk the node sent.
        self.chunks.append((info["source_timestamp"] * 1e-9, msg))

    def publish(self, image_age: float = 0.0, size: tuple[int, int] | None = None, state_age: float = 0.0) -> None:
        q, now = self.profile.home, self.now() - state_age
        self.state_stamps.append(now)
        self.state_pub.publish(joint_state_msg(self.profile.joint_names, q, np.zeros_like(q), now))
        w, h = size or self.size
        for cam, pub in self.image_pubs.items():
            msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=bytes(w * h * 3))
            msg.header.stamp = to_stamp(now - image_age)
            pub.publish(msg)


def run(graph, robot: Robot, seconds: float, **publish) -> None:
    for _ in range(int(seconds / 0.01)):  # joint states and frames at ~100 Hz
        robot.publish(**publish)
        graph.spin_for(0.01)


@pytest.fixture
def rig(graph, so101, tmp_path: Path):
    def make(nan: bool = False):
        policy = fx.TinyPolicy(chunk_length=10, control_period_s=PERIOD, nan=nan)  # action k = state + 0.01 k
        model = fx.write_model(tmp_path / "model", policy)
        node = graph.add(PolicyNode(parameter_overrides=[
            Parameter("model_dir", value=str(model)), Parameter("replan_hz", value=20.0),
            Parameter("mode", value="switch"), Parameter("blend_s", value=0.0)]))
        gate = graph.add(GateNode(parameter_overrides=[
            Parameter("active_source", value="policy"), Parameter("source_timeout", value=0.2),
            Parameter("realtime_priority", value=0)]))
        robot = graph.add(Robot(so101, next(iter(policy.cameras.values()))))
        return node, gate, robot
    return make


def test_the_node_publishes_valid_timed_chunks_that_the_gate_follows(rig, graph, so101) -> None:
    node, gate, robot = rig()
    run(graph, robot, 1.5)
    assert len(robot.chunks) >= 5  # ~20 Hz replans (fewer on a loaded machine)
    for published, msg in robot.chunks:
        names, start, times, positions = trajectory_fields(msg)
        validate_chunk(so101, names, start, times, positions)  # what the gate checks; raises if malformed
        t = np.asarray(times)
        assert np.min(np.abs(np.asarray(robot.state_stamps) - start)) < 1e-6  # a joint state's capture time
        assert 0.0 <= published - start < 0.5
        assert start + t[0] >= published - 0.05  # no point in the past is sent
        np.testing.assert_allclose(t / PERIOD, np.round(t / PERIOD), atol=1e-4)  # on the action grid (float s: ~0.2 us)
        # Switch mode, no blend: point i is action round(t_i / period) = home + 0.01 * that index.
        expected = so101.home + 0.01 * np.round(t / PERIOD)[:, None]
        np.testing.assert_allclose(np.asarray(positions), expected, atol=1e-5)
    diag = gate.gate.diagnostics()
    assert diag["chunks"] >= 5 and not any(k.startswith("rejected_") for k in diag)
    assert 0.0 < diag["latency_p50_ms"] < 300.0  # the gate measures observation -> command from the stamp
    command = np.array(robot.commands[-1].points[0].positions)
    assert np.all(command >= so101.home - 1e-6) and np.any(command > so101.home + 1e-3)  # it tracks the policy
    reset = robot.create_client(Trigger, "/policy/reset").call_async(Trigger.Request())
    assert graph.spin_until(reset.done) and reset.result().success
    before = len(robot.chunks)
    run(graph, robot, 0.5)
    assert len(robot.chunks) > before  # the next episode runs again


def test_a_nan_model_publishes_nothing_and_the_gate_holds(rig, graph, so101) -> None:
    node, gate, robot = rig(nan=True)
    run(graph, robot, 1.0)
    assert robot.chunks == []
    assert gate.gate.diagnostics()["hold_source_silent"] >= 1
    held = [np.array(c.points[0].positions) for c in robot.commands]
    assert held and all(np.allclose(q, so101.home) for q in held)
    assert node.counters["skipped_PolicyOutputError"] >= 5
    assert any("NaN/inf" in m for m in robot.diagnostics)


@pytest.mark.parametrize("publish, message", [
    ({"image_age": 1.0}, r"camera '\w+' image is \+1\.0\d* s off the joint state \(limit 0\.5 s\)"),
    ({"size": (32, 24)}, r"image is uint8 \(24, 32, 3\); expected uint8 \(12, 16, 3\) RGB"),
    ({"state_age": 0.5}, r"joint state is 0\.5\d* s old \(limit 0\.1 s\)"),
])
def test_stale_inputs_and_wrong_size_images_are_skipped_with_a_diagnostic(rig, graph, publish, message) -> None:
    node, gate, robot = rig()
    run(graph, robot, 0.6, **publish)
    assert robot.chunks == []
    assert graph.spin_until(lambda: any(re.search(message, m) for m in robot.diagnostics), 2.0), robot.diagnostics[-3:]
