"""A joint state that lacks one of the robot's joints: every node that reads it says so on /diagnostics
and goes on (the expert used to die of a KeyError; teleop and the recorder dropped it in silence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState

from tether_ros.conversions import DIAGNOSTICS, STATE_QOS, joint_state_msg
from tether_ros.expert_node import ExpertNode
from tether_ros.recorder_node import RecorderNode
from tether_ros.teleop_node import TeleopNode


class BrokenArm(Node):
    """Publishes joint states without the gripper, then whole ones; collects every WARN on /diagnostics."""

    def __init__(self, profile) -> None:
        super().__init__("broken_arm")
        self.profile = profile
        self.pub = self.create_publisher(JointState, profile.joint_states_topic, STATE_QOS)
        self.warnings: dict[str, DiagnosticStatus] = {}
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diag, 50)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.level == DiagnosticStatus.WARN:
                self.warnings[status.name] = status

    def publish(self, whole: bool) -> None:
        names = self.profile.joint_names if whole else self.profile.joint_names[:-1]
        q = self.profile.home[: len(names)]
        self.pub.publish(joint_state_msg(names, q, np.zeros_like(q), self.get_clock().now().nanoseconds * 1e-9))


def _expert(_tmp: Path) -> Node:
    return ExpertNode(parameter_overrides=[Parameter("realtime_priority", value=0)])


def _teleop(_tmp: Path) -> Node:
    return TeleopNode(parameter_overrides=[Parameter("device", value="replay")])


def _recorder(tmp: Path) -> Node:
    return RecorderNode(parameter_overrides=[Parameter("dataset", value=str(tmp / "ds")),
                                             Parameter("camera_height", value=48), Parameter("camera_width", value=64)])


@pytest.mark.parametrize("make", [_expert, _teleop, _recorder], ids=["expert", "teleop", "recorder"])
def test_a_joint_state_missing_a_joint_is_reported_and_the_node_goes_on(graph, so101, tmp_path, make) -> None:
    node = graph.add(make(tmp_path))
    arm = graph.add(BrokenArm(so101))
    name = f"tether/{node.get_name()}/input"
    assert graph.spin_until(lambda: arm.pub.get_subscription_count() > 0, timeout=5.0)

    def broken_until_reported() -> bool:
        arm.publish(whole=False)
        graph.spin_for(0.02)
        return name in arm.warnings

    assert graph.spin_until(broken_until_reported, timeout=5.0)
    warning = arm.warnings[name]
    assert "no position for the robot's joint 'gripper'" in warning.message
    assert {v.key for v in warning.values} == {f"refused {so101.joint_states_topic}"}
    for _ in range(10):  # whole states after broken ones are taken as usual: the node is alive
        arm.publish(whole=True)
        graph.spin_for(0.01)
    assert node.bad_input.counts[so101.joint_states_topic] >= 1
