"""Raw MCAP log: wire bytes in, a rosbag2 bag out that rosbags, the mcap reader and rclpy all decode, with
each topic's QoS and the ROS distribution in its metadata. What a kill -9 leaves, and its repair: test_mcap_repair."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags")
rclpy_serialization = pytest.importorskip("rclpy.serialization")

from rosbags.interfaces import QosDurability, QosHistory, QosReliability  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from tether.errors import McapLogError  # noqa: E402
from tether.teleop.recording.mcap_log import McapLog, TopicQos, ros_distro  # noqa: E402

deserialize_message = rclpy_serialization.deserialize_message
STORE = get_typestore(Stores.ROS2_KILTED)
T0 = 1_700_000_000_000_000_000
TOPICS = {
    "/joint_states": "sensor_msgs/msg/JointState",
    "/camera/front/image_raw": "sensor_msgs/msg/Image",
    "/tether/source/teleop/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/tether/intervention": "std_msgs/msg/Bool",
}
STREAM = TopicQos("reliable", "volatile", "keep_last", 600)
LATCHED = TopicQos("reliable", "transient_local", "keep_last", 1)


def cdr(msgtype: str, **fields) -> bytes:
    """A message's exact CDR bytes, as a raw subscription receives them (rosbags' encoder is exact)."""
    types = STORE.types
    return bytes(STORE.serialize_cdr(types[msgtype](**fields), msgtype))


def header(sec: int, frame_id: str = ""):
    types = STORE.types
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def joint_state(i: int) -> bytes:
    return cdr("sensor_msgs/msg/JointState", header=header(i, "base"), name=["shoulder_pan", "gripper"],
               position=np.array([0.1 * i, -0.2]), velocity=np.zeros(0), effort=np.zeros(0))


def image() -> bytes:
    return cdr("sensor_msgs/msg/Image", header=header(0), height=4, width=3, encoding="rgb8", is_bigendian=0, step=9,
               data=np.arange(4 * 3 * 3, dtype=np.uint8))


def trajectory() -> bytes:
    types = STORE.types
    point = types["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.array([0.0, 1.0]), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=types["builtin_interfaces/msg/Duration"](sec=0, nanosec=50_000_000))
    return cdr("trajectory_msgs/msg/JointTrajectory", header=header(0), joint_names=["shoulder_pan", "gripper"],
               points=[point])


def flag(value: bool) -> bytes:
    return cdr("std_msgs/msg/Bool", data=value)


def test_bytes_are_stored_exactly_as_given(tmp_path) -> None:
    sent = joint_state(1)
    with McapLog(tmp_path / "raw") as log:
        log.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        log.write("/joint_states", sent, T0)
    with Reader(tmp_path / "raw") as reader:
        assert [bytes(raw) for _, _, raw in reader.messages()] == [sent]


def write_session(path) -> None:
    """What the recorder node does: topics with their QoS up front, then wire bytes as they come."""
    with McapLog(path) as log:
        for name, msgtype in TOPICS.items():
            log.add_topic(name, msgtype, qos=LATCHED if name == "/tether/intervention" else STREAM)
        for i in range(3):
            log.write("/joint_states", joint_state(i), T0 + i * 10_000_000)
        log.write("/camera/front/image_raw", image(), T0 + 5_000_000)
        log.write("/tether/source/teleop/joint_trajectory", trajectory(), T0 + 6_000_000)
        log.write("/tether/intervention", flag(True), T0 + 7_000_000)


ROS_TYPES = {"sensor_msgs/msg/JointState": JointState, "sensor_msgs/msg/Image": Image,
             "trajectory_msgs/msg/JointTrajectory": JointTrajectory, "std_msgs/msg/Bool": Bool}


def test_every_message_decodes_with_rosbags_and_with_rclpy(tmp_path) -> None:
    write_session(tmp_path / "raw")
    got: dict[str, list] = {}
    with Reader(tmp_path / "raw") as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == TOPICS
        for conn, stamp, raw in reader.messages():
            ours = STORE.deserialize_cdr(raw, conn.msgtype)  # strict: the size must match exactly
            theirs = deserialize_message(raw, ROS_TYPES[conn.msgtype])  # as ros2 bag play would
            got.setdefault(conn.topic, []).append((stamp, ours, theirs))
    states = got["/joint_states"]
    assert [s for s, _, _ in states] == [T0, T0 + 10_000_000, T0 + 20_000_000]
    for _, ours, theirs in states[2:]:
        assert list(ours.name) == list(theirs.name) == ["shoulder_pan", "gripper"]
        assert list(ours.position) == list(theirs.position) == [0.2, -0.2]
        assert theirs.header.stamp.sec == 2 and theirs.header.frame_id == "base"
    _, img, rclpy_img = got["/camera/front/image_raw"][0]
    assert (rclpy_img.height, rclpy_img.width, rclpy_img.encoding) == (4, 3, "rgb8")
    assert bytes(rclpy_img.data) == bytes(img.data) == bytes(range(36))
    _, traj, rclpy_traj = got["/tether/source/teleop/joint_trajectory"][0]
    assert list(traj.points[0].positions) == list(rclpy_traj.points[0].positions) == [0.0, 1.0]
    assert rclpy_traj.points[0].time_from_start.nanosec == 50_000_000
    assert got["/tether/intervention"][0][2].data is True


def test_metadata_yaml_lists_topics_counts_qos_and_distro(tmp_path) -> None:
    write_session(tmp_path / "raw")
    info = yaml.safe_load((tmp_path / "raw" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap"
    assert info["relative_file_paths"] == ["raw.mcap"] and info["message_count"] == 6
    assert info["ros_distro"] == "kilted"  # the rclpy wheels' release, not "rosbags"
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert {name: t["message_count"] for name, t in topics.items()} == {
        "/joint_states": 3, "/camera/front/image_raw": 1, "/tether/source/teleop/joint_trajectory": 1,
        "/tether/intervention": 1}
    assert info["duration"]["nanoseconds"] == 20_000_000
    (latched,) = topics["/tether/intervention"]["topic_metadata"]["offered_qos_profiles"]
    assert (latched["reliability"], latched["durability"], latched["history"], latched["depth"]) == (
        "reliable", "transient_local", "keep_last", 1)
    (stream,) = topics["/joint_states"]["topic_metadata"]["offered_qos_profiles"]
    assert (stream["durability"], stream["depth"]) == ("volatile", 600)


def test_rosbags_reads_the_qos_and_the_distro_back(tmp_path) -> None:
    write_session(tmp_path / "raw")
    with Reader(tmp_path / "raw") as reader:
        assert reader.ros_distro == "kilted"
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
    (latched,) = qos["/tether/intervention"]
    assert (latched.reliability, latched.durability, latched.history, latched.depth) == (
        QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, QosHistory.KEEP_LAST, 1)
    assert all(len(profiles) == 1 for profiles in qos.values())


def test_mcap_reader_decodes_the_file(tmp_path) -> None:
    reader_mod = pytest.importorskip("mcap.reader")
    decoder = pytest.importorskip("mcap_ros2.decoder")
    write_session(tmp_path / "raw")
    with open(tmp_path / "raw" / "raw.mcap", "rb") as f:
        reader = reader_mod.make_reader(f, decoder_factories=[decoder.DecoderFactory()])
        summary = reader.get_summary()
        assert summary.statistics.message_count == 6
        assert {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()} == TOPICS
        decoded = [(ch.topic, msg) for _, ch, _, msg in reader.iter_decoded_messages()]
        (embedded,) = [m for m in reader.iter_metadata() if m.name == "rosbag2"]
    states = [m for topic, m in decoded if topic == "/joint_states"]
    assert list(states[1].position) == [0.1, -0.2]
    assert [m.data for topic, m in decoded if topic == "/tether/intervention"] == [True]
    assert yaml.safe_load(embedded.metadata["serialized_metadata"])["ros_distro"] == "kilted"


def test_the_distribution_comes_from_ros_distro_then_the_rclpy_wheel(monkeypatch) -> None:
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    assert ros_distro() == "kilted"  # ros-rclpy 9.x
    monkeypatch.setenv("ROS_DISTRO", "jazzy")  # a sourced ROS install
    assert ros_distro() == "jazzy"


def test_a_distribution_rosbags_has_no_definitions_for_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ROS_DISTRO", "zesty")
    with pytest.raises(McapLogError, match="no message definitions for ROS 2 'zesty'.*kilted"):
        McapLog(tmp_path / "raw")


def test_a_bad_qos_names_the_valid_choices() -> None:
    with pytest.raises(McapLogError, match="durability 'latched' is not one of .*transient_local"):
        TopicQos("reliable", "latched")


def test_close_is_idempotent_and_final(tmp_path) -> None:
    log = McapLog(tmp_path / "raw")
    log.add_topic("/flag", "std_msgs/msg/Bool")
    log.write("/flag", flag(False), T0)
    log.close()
    log.close()
    assert log.closed and (tmp_path / "raw" / "metadata.yaml").exists()
    with pytest.raises(McapLogError, match="is closed"):
        log.write("/flag", b"", T0)


def test_an_exception_still_leaves_a_readable_bag(tmp_path) -> None:
    with pytest.raises(RuntimeError), McapLog(tmp_path / "raw") as log:
        log.add_topic("/flag", "std_msgs/msg/Bool")
        log.write("/flag", flag(True), T0)
        raise RuntimeError("the recorder failed")
    with Reader(tmp_path / "raw") as reader:
        assert reader.message_count == 1


def test_mistakes_are_typed_errors(tmp_path) -> None:
    with McapLog(tmp_path / "raw") as log:
        with pytest.raises(McapLogError, match="'sensor_msgs/JointState' is not in the ROS2_KILTED type store"):
            log.add_topic("/joint_states", "sensor_msgs/JointState")
        log.add_topic("/flag", "std_msgs/msg/Bool")
        with pytest.raises(McapLogError, match="topic '/other' was not added; added topics: /flag"):
            log.write("/other", b"", T0)
        with pytest.raises(McapLogError, match="already added"):
            log.add_topic("/flag", "std_msgs/msg/Bool")
        with pytest.raises(McapLogError, match="cannot write a Bool; give the CDR bytes a raw subscription"):
            log.write("/flag", Bool(data=True), T0)  # rclpy's serialize_message would pad it with stray bytes
    with pytest.raises(McapLogError, match="exists already"):
        McapLog(tmp_path / "raw")


def test_custom_message_type_with_its_definition(tmp_path) -> None:
    msgdef = "string label\nfloat64 score\n"
    with McapLog(tmp_path / "raw") as log:
        log.add_topic("/tether/label", "tether_msgs/msg/Label", msgdef=msgdef)
        store = get_typestore(Stores.ROS2_KILTED)
        from rosbags.typesys import get_types_from_msg

        store.register(get_types_from_msg(msgdef, "tether_msgs/msg/Label"))
        label = store.types["tether_msgs/msg/Label"](label="success", score=1.0)
        log.write("/tether/label", store.serialize_cdr(label, "tether_msgs/msg/Label"), T0)
    with Reader(tmp_path / "raw") as reader:
        (conn, _, raw), = reader.messages()
        assert store.deserialize_cdr(raw, conn.msgtype).label == "success"


def test_flush_period_bounds_what_is_held_in_memory(tmp_path) -> None:
    clock = [0.0]
    log = McapLog(tmp_path / "raw", flush_period=1.0, clock=lambda: clock[0])
    log.add_topic("/flag", "std_msgs/msg/Bool")
    mcap_file = tmp_path / "raw" / "raw.mcap"
    log.write("/flag", flag(True), T0)
    size = mcap_file.stat().st_size
    clock[0] = 1.5
    log.write("/flag", flag(True), T0 + 1)
    assert mcap_file.stat().st_size > size  # the chunk went to the file
    log.close()
