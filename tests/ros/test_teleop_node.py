"""The teleop node with a real keyboard (a pty's terminal) driving the real gate over DDS."""

from __future__ import annotations

import os

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from tether.cli import main
from tether.errors import DeviceError
from tether.teleop.gamepad import Gamepad
from tether_ros.conversions import COMMAND_QOS, INTERVENTION, LATCHED_QOS, STATE_QOS, TELEOP_EVENT, joint_state_msg
from tether_ros.gate_node import GateNode
from tether_ros.teleop_node import TeleopNode


class Probe(Node):
    """Plays the robot (joint states at home) and listens to the gate and the operator."""

    def __init__(self, profile) -> None:
        super().__init__("probe")
        self.profile = profile
        self.state_pub = self.create_publisher(JointState, profile.joint_states_topic, STATE_QOS)
        self.commands: list[np.ndarray] = []
        self.intervention: list[bool] = []
        self.events: list[str] = []
        self.create_subscription(JointTrajectory, profile.command_topic,
                                 lambda m: self.commands.append(np.array(m.points[0].positions)), COMMAND_QOS)
        self.create_subscription(Bool, INTERVENTION, lambda m: self.intervention.append(m.data), LATCHED_QOS)
        self.create_subscription(String, TELEOP_EVENT, lambda m: self.events.append(m.data), 10)
        self.create_timer(0.01, self._publish)

    def _publish(self) -> None:
        stamp = self.get_clock().now().nanoseconds * 1e-9
        q = self.profile.home
        self.state_pub.publish(joint_state_msg(self.profile.joint_names, q, np.zeros_like(q), stamp))


def test_keyboard_takes_over_the_gate_and_moves_the_arm(graph, so101, pty) -> None:
    master, tty_path = pty
    gate = graph.add(GateNode())
    teleop = graph.add(TeleopNode(parameter_overrides=[
        Parameter("device", value="keyboard"), Parameter("device_path", value=tty_path)]))
    probe = graph.add(Probe(so101))
    assert graph.spin_until(lambda: len(probe.commands) > 20)  # the gate holds at the measured state
    assert probe.intervention[-1:] in ([], [False])
    os.write(master, b"t")  # the takeover key
    assert graph.spin_until(lambda: probe.intervention[-1:] == [True], timeout=5.0)
    assert teleop.active and gate.gate.mode.name == "HUMAN"
    for _ in range(20):  # hold "w" (forward) for ~2 s; a terminal repeats held keys
        os.write(master, b"w")
        graph.spin_for(0.1)
    last = probe.commands[-1]
    assert np.max(np.abs(last - so101.home)) > 0.01  # the arm is driven away from home
    assert np.all(last >= so101.lower - 1e-9) and np.all(last <= so101.upper + 1e-9)
    os.write(master, b"y")  # the success key
    assert graph.spin_until(lambda: "success" in probe.events)
    os.write(master, b"g")  # hand back
    assert graph.spin_until(lambda: probe.intervention[-1:] == [False])


def test_collect_with_no_gamepad_fails_in_one_line_before_the_graph(tmp_path, capsys) -> None:
    try:
        Gamepad().connect()
    except DeviceError:
        pass
    else:
        pytest.skip("a gamepad is plugged into this machine")
    out = tmp_path / "dataset"
    code = main(["collect", "--device", "gamepad", "--episodes", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "gamepad" in lines[0], captured.err
    assert not out.exists() and not (tmp_path / "dataset_report").exists()  # no graph was started
