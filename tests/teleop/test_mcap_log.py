"""Raw MCAP log: rclpy messages in, a rosbag2 bag out that rosbags and the mcap reader both read;
what a kill -9 leaves and how it is recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags")
rclpy_serialization = pytest.importorskip("rclpy.serialization")

from builtin_interfaces.msg import Duration  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from tether.errors import McapLogError  # noqa: E402
from tether.teleop.mcap_log import McapLog, recover  # noqa: E402

serialize_message = rclpy_serialization.serialize_message
deserialize_message = rclpy_serialization.deserialize_message
T0 = 1_700_000_000_000_000_000
TOPICS = {
    "/joint_states": "sensor_msgs/msg/JointState",
    "/camera/front/image_raw": "sensor_msgs/msg/Image",
    "/tether/source/teleop/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/tether/intervention": "std_msgs/msg/Bool",
}


def joint_state(i: int) -> JointState:
    msg = JointState(name=["shoulder_pan", "gripper"], position=[0.1 * i, -0.2])
    msg.header.stamp.sec, msg.header.frame_id = i, "base"
    return msg


def image() -> Image:
    pixels = np.arange(4 * 3 * 3, dtype=np.uint8)
    return Image(height=4, width=3, encoding="rgb8", step=9, data=pixels.tobytes())


def trajectory() -> JointTrajectory:
    point = JointTrajectoryPoint(positions=[0.0, 1.0], time_from_start=Duration(sec=0, nanosec=50_000_000))
    return JointTrajectory(joint_names=["shoulder_pan", "gripper"], points=[point])


def test_bytes_are_stored_exactly_as_rclpy_serialized_them(tmp_path) -> None:
    sent = serialize_message(joint_state(1))
    with McapLog(tmp_path / "raw") as log:
        log.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        log.write("/joint_states", sent, T0)
    with Reader(tmp_path / "raw") as reader:
        assert [bytes(raw) for _, _, raw in reader.messages()] == [sent]


def write_session(path) -> None:
    """What the recorder node does: topics up front, then CDR bytes (or messages) as they come."""
    with McapLog(path) as log:
        for name, msgtype in TOPICS.items():
            log.add_topic(name, msgtype)
        for i in range(3):
            log.write("/joint_states", serialize_message(joint_state(i)), T0 + i * 10_000_000)
        log.write("/camera/front/image_raw", serialize_message(image()), T0 + 5_000_000)
        log.write("/tether/source/teleop/joint_trajectory", trajectory(), T0 + 6_000_000)  # an rclpy message
        log.write("/tether/intervention", serialize_message(Bool(data=True)), T0 + 7_000_000)


ROS_TYPES = {"sensor_msgs/msg/JointState": JointState, "sensor_msgs/msg/Image": Image,
             "trajectory_msgs/msg/JointTrajectory": JointTrajectory, "std_msgs/msg/Bool": Bool}


def test_log_reads_back_with_rosbags(tmp_path) -> None:
    write_session(tmp_path / "raw")
    got: dict[str, list] = {}
    with Reader(tmp_path / "raw") as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == TOPICS
        for conn, stamp, raw in reader.messages():
            # Decoded as ros2 bag play would, by rclpy: rosbags' own CDR decoder is stricter than
            # Fast-CDR and refuses the alignment padding it writes after an empty float64[].
            got.setdefault(conn.topic, []).append((stamp, deserialize_message(raw, ROS_TYPES[conn.msgtype])))
    states = got["/joint_states"]
    assert [s for s, _ in states] == [T0, T0 + 10_000_000, T0 + 20_000_000]
    assert list(states[2][1].name) == ["shoulder_pan", "gripper"] and list(states[2][1].position) == [0.2, -0.2]
    assert states[2][1].header.stamp.sec == 2 and states[2][1].header.frame_id == "base"
    img = got["/camera/front/image_raw"][0][1]
    assert (img.height, img.width, img.encoding) == (4, 3, "rgb8")
    assert bytes(img.data) == bytes(image().data)
    traj = got["/tether/source/teleop/joint_trajectory"][0][1]
    assert list(traj.points[0].positions) == [0.0, 1.0] and traj.points[0].time_from_start.nanosec == 50_000_000
    assert got["/tether/intervention"][0][1].data is True


def test_metadata_yaml_lists_topics_and_counts(tmp_path) -> None:
    write_session(tmp_path / "raw")
    info = yaml.safe_load((tmp_path / "raw" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap"
    assert info["relative_file_paths"] == ["raw.mcap"] and info["message_count"] == 6
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]}
    assert counts == {"/joint_states": 3, "/camera/front/image_raw": 1,
                      "/tether/source/teleop/joint_trajectory": 1, "/tether/intervention": 1}
    assert info["duration"]["nanoseconds"] == 20_000_000


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
    states = [m for topic, m in decoded if topic == "/joint_states"]
    assert list(states[1].position) == [0.1, -0.2]
    assert [m.data for topic, m in decoded if topic == "/tether/intervention"] == [True]


def test_close_is_idempotent_and_final(tmp_path) -> None:
    log = McapLog(tmp_path / "raw")
    log.add_topic("/flag", "std_msgs/msg/Bool")
    log.write("/flag", serialize_message(Bool(data=False)), T0)
    log.close()
    log.close()
    assert log.closed and (tmp_path / "raw" / "metadata.yaml").exists()
    with pytest.raises(McapLogError, match="is closed"):
        log.write("/flag", b"", T0)


def test_an_exception_still_leaves_a_readable_bag(tmp_path) -> None:
    with pytest.raises(RuntimeError), McapLog(tmp_path / "raw") as log:
        log.add_topic("/flag", "std_msgs/msg/Bool")
        log.write("/flag", serialize_message(Bool(data=True)), T0)
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
        with pytest.raises(McapLogError, match="cannot write a dict"):
            log.write("/flag", {"data": True}, T0)
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


CRASHING_RECORDER = textwrap.dedent("""
    import sys, time
    from rosbags.typesys import Stores, get_typestore
    from tether.teleop.mcap_log import McapLog

    store = get_typestore(Stores.ROS2_KILTED)
    Bool = store.types["std_msgs/msg/Bool"]
    log = McapLog(sys.argv[1], flush_period=0.0)  # flush after every message
    log.add_topic("/flag", "std_msgs/msg/Bool")
    for i in range(5):
        log.write("/flag", store.serialize_cdr(Bool(data=bool(i % 2)), "std_msgs/msg/Bool"), {t0} + i)
    log.flush_period = float("inf")  # from here on nothing reaches the file before close()
    for i in range(5, 8):
        log.write("/flag", store.serialize_cdr(Bool(data=True), "std_msgs/msg/Bool"), {t0} + i)
    print("written", flush=True)
    time.sleep(60)
""").replace("{t0}", str(T0))


def test_kill_9_loses_only_the_unflushed_tail(tmp_path) -> None:
    bag = tmp_path / "raw"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_RECORDER, str(bag)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (bag / "metadata.yaml").exists()  # what rosbags writes only on close()
    with pytest.raises(Exception):
        Reader(bag).open()
    fixed = recover(bag)
    assert fixed == tmp_path / "raw-recovered"
    store = get_typestore(Stores.ROS2_KILTED)
    with Reader(fixed) as reader:
        msgs = [(t, store.deserialize_cdr(raw, c.msgtype).data) for c, t, raw in reader.messages()]
    assert msgs == [(T0 + i, bool(i % 2)) for i in range(5)]  # the three unflushed ones are gone


def test_flush_period_bounds_what_is_held_in_memory(tmp_path) -> None:
    clock = [0.0]
    log = McapLog(tmp_path / "raw", flush_period=1.0, clock=lambda: clock[0])
    log.add_topic("/flag", "std_msgs/msg/Bool")
    mcap_file = tmp_path / "raw" / "raw.mcap"
    log.write("/flag", serialize_message(Bool(data=True)), T0)
    size = mcap_file.stat().st_size
    clock[0] = 1.5
    log.write("/flag", serialize_message(Bool(data=True)), T0 + 1)
    assert mcap_file.stat().st_size > size  # the chunk went to the file
    log.close()
