"""The recorder node over real DDS: episodes land in the dataset, its raw log is readable by any tool,
a session cut short leaves a truncated episode, and a lost writer process fails the node."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError
from tether.dataset import recover, validate
from tether_ros.conversions import (
    COMMAND_QOS,
    INTERVENTION,
    LATCHED_QOS,
    STATE_QOS,
    camera_topic,
    joint_state_msg,
    to_stamp,
    trajectory_msg,
)
from tether_ros.recorder_node import RECORD_QOS, RecorderNode

H, W = 48, 64


def _small_disk() -> type:
    """tests/teleop/recording/small_disk.py's SmallDisk: a tmpfs to fill (tests import with --import-mode=importlib)."""
    path = Path(__file__).parents[1] / "teleop" / "recording" / "small_disk.py"
    spec = importlib.util.spec_from_file_location("tether_tests_small_disk", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SmallDisk


SmallDisk = _small_disk()


class Station(Node):
    """Plays the twin at 30 Hz: joint state, gated command and both cameras of one moment."""

    def __init__(self, profile, takeovers: bool = True) -> None:
        super().__init__("station")
        self.profile, self.takeovers = profile, takeovers
        self.state_pub = self.create_publisher(JointState, profile.joint_states_topic, STATE_QOS)
        self.command_pub = self.create_publisher(JointTrajectory, profile.command_topic, COMMAND_QOS)
        self.image_pubs = {c.name: self.create_publisher(Image, camera_topic(c.name), RECORD_QOS(10)) for c in profile.cameras}
        self.intervention_pub = self.create_publisher(Bool, INTERVENTION, LATCHED_QOS)  # as the gate's
        self.intervention_pub.publish(Bool(data=False))
        self.ticks = 0
        self.create_timer(1 / 30, self._tick)

    def _tick(self) -> None:
        stamp = self.get_clock().now().nanoseconds * 1e-9
        q = self.profile.home
        self.ticks += 1
        if self.takeovers and self.ticks % 15 == 0:  # a human takes over, then hands back, every half second
            self.intervention_pub.publish(Bool(data=self.ticks % 30 == 0))
        # Empty efforts, like the twin's: rclpy's serialize_message pads this message with 4 stray bytes.
        self.state_pub.publish(joint_state_msg(self.profile.joint_names, q, np.zeros_like(q), stamp))
        self.command_pub.publish(trajectory_msg(self.profile.joint_names, stamp, [0.02], q[None]))
        for pub in self.image_pubs.values():
            msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=bytes(H * W * 3))
            msg.header.stamp = to_stamp(stamp)
            pub.publish(msg)


def make_recorder(tmp_path: Path, **parameters) -> RecorderNode:
    return RecorderNode(parameter_overrides=[
        Parameter("dataset", value=str(tmp_path / "ds")), Parameter("camera_height", value=H),
        Parameter("camera_width", value=W), *(Parameter(k, value=v) for k, v in parameters.items())])


@pytest.fixture
def recorder(graph, tmp_path: Path) -> RecorderNode:
    return graph.add(make_recorder(tmp_path))


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


def read_every_message(bag: Path) -> int:
    """Decode every message of ``bag`` with rosbags (strict CDR) and the mcap reader; they must agree on the count."""
    store = get_typestore(Stores.ROS2_KILTED)
    with Reader(bag) as reader:
        ours = sum(1 for conn, _, raw in reader.messages() if store.deserialize_cdr(raw, conn.msgtype) is not None)
    (mcap_file,) = bag.glob("*.mcap")
    with open(mcap_file, "rb") as f:
        theirs = sum(1 for _ in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    assert ours == theirs
    return ours


def test_recover_repairs_the_raw_log_a_killed_writer_left(graph, so101, recorder, tmp_path: Path) -> None:
    station = graph.add(Station(so101))
    assert call(graph, station, "/recorder/begin").success
    graph.spin_for(2.5)  # the log flushes once a second
    os.kill(recorder.writer.pid, signal.SIGKILL)
    assert graph.spin_until(lambda: recorder.finished, timeout=5.0)
    recorder.close()
    bag = tmp_path / "ds_mcap" / "episode_000000"
    assert not (bag / "metadata.yaml").exists()  # cut off: no reader opens it
    report = recover(tmp_path / "ds")
    (log,) = report.logs
    assert log.bag == "ds_mcap/episode_000000" and log.repair.kept > 30
    assert read_every_message(bag) == log.repair.kept
    assert validate(tmp_path / "ds") == []


def test_a_full_disk_ends_the_node_with_one_line_naming_the_cause(graph, so101, tmp_path: Path, capfd) -> None:
    with SmallDisk.mounted(tmp_path / "disk", size_mb=64) as disk:
        root = disk.path / "ds"
        recorder = graph.add(make_recorder(disk.path))
        station = graph.add(Station(so101))
        assert call(graph, station, "/recorder/begin").success
        assert graph.spin_until((root / ".staging/episode_000000/segment-000000.parquet").exists, timeout=10.0)
        disk.fill()
        assert graph.spin_until(lambda: recorder.finished, timeout=30.0)  # the process, and the graph, then end
        recorder.close()
        assert recorder.exit_code == 1
        errors = [line for line in capfd.readouterr().err.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, errors  # said once, when it happened; closing does not repeat it
        assert f"[recorder]: the disk holding {root} is full (No space left on device) while " in errors[0]
        assert errors[0].endswith(f"; free space, then run `tether dataset recover {root}`")
        disk.free()
        report = recover(root)
        assert [r.episode_index for r in report.recovered] == [0] and len(report.logs) == 1
        assert read_every_message(disk.path / "ds_mcap" / "episode_000000") == report.logs[0].repair.kept
        assert validate(root) == []


ROS_TYPES = {"sensor_msgs/msg/JointState": JointState, "trajectory_msgs/msg/JointTrajectory": JointTrajectory,
             "std_msgs/msg/Bool": Bool}


def test_every_logged_message_decodes_with_rosbags_mcap_and_rclpy(graph, so101, recorder, tmp_path: Path) -> None:
    station = graph.add(Station(so101))
    assert call(graph, station, "/recorder/begin").success
    graph.spin_for(1.5)
    assert call(graph, station, "/recorder/commit_success").success
    bag = tmp_path / "ds_mcap" / "episode_000000"
    store = get_typestore(Stores.ROS2_KILTED)
    counts: dict[str, int] = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            store.deserialize_cdr(raw, conn.msgtype)  # strict: "CDR message size mismatch" on any stray byte
            deserialize_message(raw, ROS_TYPES[conn.msgtype])
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    # The log names topics fully qualified, as they went over the wire (the graph's names are relative).
    states, commands, intervention = ("/" + t for t in (so101.joint_states_topic, so101.command_topic, INTERVENTION))
    assert set(counts) == {states, commands, intervention}
    assert counts[states] > 20 and counts[commands] > 20
    assert counts[intervention] >= 2  # the latched state at the start, then each takeover and hand-back
    (mcap_file,) = bag.glob("*.mcap")
    with open(mcap_file, "rb") as f:
        decoded = sum(1 for _ in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    assert decoded == sum(counts.values())


def test_the_bag_metadata_carries_each_topics_qos_and_the_ros_distribution(graph, so101, recorder, tmp_path) -> None:
    station = graph.add(Station(so101, takeovers=False))  # the intervention label is latched once, before the take
    assert call(graph, station, "/recorder/begin").success
    graph.spin_for(0.5)
    assert call(graph, station, "/recorder/commit_success").success
    bag = tmp_path / "ds_mcap" / "episode_000000"
    with Reader(bag) as reader:
        assert reader.ros_distro == "kilted"
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
        labels = [raw for c, _, raw in reader.messages() if c.topic == "/" + INTERVENTION]  # fully qualified
    # Each bag starts with the latched label, so a replay of it knows who is in control.
    assert [deserialize_message(raw, Bool).data for raw in labels] == [False]
    (latched,) = qos["/" + INTERVENTION]
    assert (latched.reliability, latched.durability, latched.depth) == (
        QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, 1)  # a replay latches it again
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["ros_distro"] == "kilted"
    profiles = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
                for t in meta["topics_with_message_count"]}
    (state,) = profiles["/" + so101.joint_states_topic]
    assert (state["reliability"], state["durability"], state["history"], state["depth"]) == (
        "reliable", "volatile", "keep_last", 600)


def episode_rows(root: Path) -> list[dict]:
    return [r for p in sorted(root.glob("meta/episodes/*/*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_closing_mid_episode_commits_it_as_truncated(graph, so101, recorder, tmp_path: Path) -> None:
    """What happens when the session fails: the node is closed with an episode recording."""
    station = graph.add(Station(so101))
    assert call(graph, station, "/recorder/begin").success
    graph.spin_for(1.0)
    recorder.close()
    (row,) = episode_rows(tmp_path / "ds")
    assert (row["success"], row["truncated"]) == (None, True) and row["length"] > 10
    assert validate(tmp_path / "ds") == []


def test_on_abort_discard_drops_the_episode_and_other_choices_are_refused(graph, so101, tmp_path: Path) -> None:
    with pytest.raises(TetherError, match="on_abort 'keep' is not one of truncate, discard"):
        make_recorder(tmp_path, on_abort="keep")
    recorder = graph.add(make_recorder(tmp_path, on_abort="discard"))
    station = graph.add(Station(so101))
    assert call(graph, station, "/recorder/begin").success
    graph.spin_for(1.0)
    recorder.close()
    assert episode_rows(tmp_path / "ds") == [] and validate(tmp_path / "ds") == []
