"""The recorder node over real DDS: episodes land in the dataset, and a lost writer process fails the node."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.teleop.dataset import validate
from tether_ros.conversions import COMMAND_QOS, STATE_QOS, camera_topic, joint_state_msg, to_stamp, trajectory_msg
from tether_ros.recorder_node import RECORD_QOS, RecorderNode

H, W = 48, 64


class Station(Node):
    """Plays the twin at 30 Hz: joint state, gated command and both cameras of one moment."""

    def __init__(self, profile) -> None:
        super().__init__("station")
        self.profile = profile
        self.state_pub = self.create_publisher(JointState, profile.joint_states_topic, STATE_QOS)
        self.command_pub = self.create_publisher(JointTrajectory, profile.command_topic, COMMAND_QOS)
        self.image_pubs = {c.name: self.create_publisher(Image, camera_topic(c.name), RECORD_QOS(10)) for c in profile.cameras}
        self.create_timer(1 / 30, self._tick)

    def _tick(self) -> None:
        stamp = self.get_clock().now().nanoseconds * 1e-9
        q = self.profile.home
        self.state_pub.publish(joint_state_msg(self.profile.joint_names, q, np.zeros_like(q), stamp))
        self.command_pub.publish(trajectory_msg(self.profile.joint_names, stamp, [0.02], q[None]))
        for pub in self.image_pubs.values():
            msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=bytes(H * W * 3))
            msg.header.stamp = to_stamp(stamp)
            pub.publish(msg)


@pytest.fixture
def recorder(graph, tmp_path: Path) -> RecorderNode:
    node = RecorderNode(parameter_overrides=[
        Parameter("dataset", value=str(tmp_path / "ds")), Parameter("camera_height", value=H),
        Parameter("camera_width", value=W)])
    return graph.add(node)


def call(graph, node: Node, service: str) -> Trigger.Response:
    client = node.create_client(Trigger, service)
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert graph.spin_until(future.done, timeout=30.0)
    return future.result()


def test_an_episode_is_recorded_through_the_writer_process(graph, so101, recorder, tmp_path: Path) -> None:
    station = graph.add(Station(so101))
    assert call(graph, station, "/recorder/begin").message == "episode=0"
    graph.spin_for(1.5)
    done = call(graph, station, "/recorder/commit_success")
    assert done.success and done.message.startswith("episode=0 frames="), done.message
    assert int(done.message.split("frames=")[1].split()[0]) > 20
    assert validate(tmp_path / "ds") == []
    assert (tmp_path / "ds_mcap" / "episode_000000" / "metadata.yaml").exists()
    assert not recorder.finished


def test_a_dead_writer_process_fails_the_node_loudly(graph, so101, recorder) -> None:
    station = graph.add(Station(so101))
    assert call(graph, station, "/recorder/begin").success
    graph.spin_for(0.5)
    os.kill(recorder.writer.pid, signal.SIGKILL)
    assert graph.spin_until(lambda: recorder.finished, timeout=5.0)  # the process (and the graph) then ends
    assert recorder.exit_code == 1
    done = call(graph, station, "/recorder/commit_success")
    assert not done.success and "killed by SIGKILL" in done.message and "recover" in done.message
