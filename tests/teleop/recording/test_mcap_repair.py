"""Repairing a raw MCAP log that a crash cut off: a real kill -9 mid-write, then a file cut at every byte.

After ``repair`` both readers a user has decode every message: rosbags' ``Reader`` (with the message
definitions the bag itself carries) and the ``mcap`` reader with ``mcap_ros2``'s decoder. Each
topic keeps its QoS and its message definition, and the report says what was kept and lost.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")
mcap_reader = pytest.importorskip("mcap.reader")
mcap_decoder = pytest.importorskip("mcap_ros2.decoder")

from rosbags.interfaces import QosDurability  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from tether.errors import McapLogError  # noqa: E402
from tether.teleop.recording.mcap_log import McapLog, TopicQos  # noqa: E402
from tether.teleop.recording.mcap_repair import WORK, needs_repair, repair  # noqa: E402
from tether_tests_cdr import KILTED, joint_state  # tests/teleop/recording/cdr.py, loaded by conftest

T0 = 1_700_000_000_000_000_000
STREAM = TopicQos("reliable", "volatile", "keep_last", 600)
LATCHED = TopicQos("reliable", "transient_local", "keep_last", 1)
LABEL_DEF = "string label\nfloat64 score\n"  # a type outside every type store: only the bag knows it

# Writes JointStates whose first position counts 0, 1, 2, ... (and a latched flag every 25th), flushing
# every 20 messages and saying so, until it is killed.
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from rosbags.typesys import Stores, get_typestore
    from tether.teleop.recording.mcap_log import McapLog, TopicQos

    store = get_typestore(Stores.ROS2_KILTED)
    T = store.types
    log = McapLog(sys.argv[1], flush_period=float("inf"))
    log.add_topic("/joint_states", "sensor_msgs/msg/JointState", qos=TopicQos("reliable", "volatile", depth=600))
    log.add_topic("/tether/intervention", "std_msgs/msg/Bool", qos=TopicQos("reliable", "transient_local", depth=1))
    i = 0
    while True:
        stamp = T["builtin_interfaces/msg/Time"](sec=i // 100, nanosec=(i % 100) * 10_000_000)
        msg = T["sensor_msgs/msg/JointState"](header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="base"),
                                              name=["pan", "gripper"], position=np.array([float(i), -0.2]),
                                              velocity=np.zeros(0), effort=np.zeros(0))
        log.write("/joint_states", store.serialize_cdr(msg, "sensor_msgs/msg/JointState"), {t0} + i * 10_000_000)
        if i % 25 == 0:
            flag = T["std_msgs/msg/Bool"](data=i % 50 == 0)
            log.write("/tether/intervention", store.serialize_cdr(flag, "std_msgs/msg/Bool"), {t0} + i * 10_000_000)
        i += 1
        if i % 20 == 0:
            log.flush()
            print(f"flushed {i}", flush=True)
        time.sleep(0.002)
""").replace("{t0}", str(T0))


def bag_store(reader: Reader):
    """A type store holding only the message definitions the bag carries."""
    types: dict = {}
    for conn in reader.connections:
        types.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
    store = get_typestore(Stores.EMPTY)
    store.register(types)
    return store


def read_with_rosbags(bag: Path) -> list[tuple[str, int, object]]:
    """(topic, log time, first field) of every message, decoded strictly (any stray byte fails)."""
    with Reader(bag) as reader:
        store = bag_store(reader)
        return [(c.topic, t, first_field(store.deserialize_cdr(raw, c.msgtype))) for c, t, raw in reader.messages()]


def read_with_mcap(bag: Path) -> list[tuple[str, int, object]]:
    (path,) = bag.glob("*.mcap")
    with open(path, "rb") as f:
        reader = mcap_reader.make_reader(f, decoder_factories=[mcap_decoder.DecoderFactory()])
        return [(ch.topic, m.log_time, first_field(msg)) for _, ch, m, msg in reader.iter_decoded_messages()]


def first_field(msg: object) -> object:
    if hasattr(msg, "position"):
        return float(msg.position[0])
    return getattr(msg, "data", getattr(msg, "label", None))


def test_a_log_killed_mid_write_is_repaired_in_place_and_both_readers_decode_every_message(tmp_path) -> None:
    bag = tmp_path / "episode_000003"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(bag)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        flushed = 0
        while flushed < 200:  # ten chunks on disk, and more messages in memory
            flushed = int(proc.stdout.readline().split()[1])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert needs_repair(bag) and not (bag / "metadata.yaml").exists()
    with pytest.raises(Exception):  # what a user met: rosbags wants metadata.yaml ...
        Reader(bag).open()
    with pytest.raises(Exception):  # ... and the mcap reader a footer (RecordLengthLimitExceeded)
        read_with_mcap(bag)

    result = repair(bag)

    assert not needs_repair(bag) and not (bag / WORK).exists()
    assert [p.name for p in bag.glob("*.mcap")] == ["episode_000003.mcap"]  # the same file, now whole
    ours, theirs = read_with_rosbags(bag), read_with_mcap(bag)
    assert ours == theirs
    positions = [value for topic, _, value in ours if topic == "/joint_states"]
    assert positions == [float(i) for i in range(len(positions))]  # a prefix of what was written, in order
    assert len(positions) >= flushed  # everything flushed before the kill
    flags = [value for topic, _, value in ours if topic == "/tether/intervention"]
    assert flags == [i % 50 == 0 for i in range(0, len(positions), 25)][:len(flags)] and len(flags) >= flushed // 25
    assert result.messages == {"/joint_states": len(positions), "/tether/intervention": len(flags)}
    assert result.first_ns == T0 and result.last_ns == max(t for _, t, _ in ours)
    with Reader(bag) as reader:
        assert reader.ros_distro == "kilted"
        definitions = {c.msgtype: c.msgdef.data for c in reader.connections}
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
    assert definitions["sensor_msgs/msg/JointState"] == KILTED.generate_msgdef("sensor_msgs/msg/JointState", ros_version=2)[0]
    (latched,) = qos["/tether/intervention"]
    assert (latched.durability, latched.depth) == (QosDurability.TRANSIENT_LOCAL, 1)  # a replay still latches it
    (stream,) = qos["/joint_states"]
    assert stream.depth == 600
    assert f"kept {result.kept} messages on 2 topics" in str(result) and "bytes cut off" in str(result)


def unclosed_log(path: Path, messages: int, every: int) -> bytes:
    """The bytes a crash leaves of a log flushed every ``every`` messages (read before close)."""
    log = McapLog(path, flush_period=float("inf"))
    log.add_topic("/joint_states", "sensor_msgs/msg/JointState", qos=STREAM)
    for i in range(messages):
        log.write("/joint_states", joint_state(i), T0 + i * 1_000_000)
        if (i + 1) % every == 0:
            log.flush()
    (mcap,) = path.glob("*.mcap")
    data = mcap.read_bytes()
    log.close()
    return data


def crashed_bag(path: Path, data: bytes) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / f"{path.name}.mcap").write_bytes(data)
    return path


def test_a_file_cut_at_any_byte_repairs_to_every_whole_message_before_the_cut(tmp_path) -> None:
    """A full disk stops a chunk part way: the whole messages at its start are kept too, and the cut is measured."""
    data = unclosed_log(tmp_path / "source", messages=60, every=10)
    kept_counts, prev = set(), 0
    for cut in [*range(0, len(data), max(1, len(data) // 150)), len(data)]:
        bag = crashed_bag(tmp_path / "cut", data[:cut])
        result = repair(bag)
        ours = read_with_rosbags(bag)
        assert ours == read_with_mcap(bag), cut
        assert [v for _, _, v in ours] == [float(i) for i in range(len(ours))], cut  # a prefix, never a torn message
        assert len(ours) >= prev and result.kept == len(ours), cut
        assert 0 <= result.bytes_lost < cut or cut < 8, cut
        if result.seconds_lost is not None:  # a cut-off chunk's header said how far it ran
            assert result.seconds_lost <= (59 - len(ours) + 1) * 1e-3 + 1e-9, cut
        prev = len(ours)
        kept_counts.add(len(ours))
    assert prev == 60 and repair(crashed_bag(tmp_path / "cut", data)).bytes_lost == 0
    assert len(kept_counts) > 7  # more than the 6 chunk boundaries: messages of cut-off chunks are kept


def test_a_type_only_the_bag_defines_keeps_its_definition(tmp_path) -> None:
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(LABEL_DEF, "tether_msgs/msg/Label"))
    log = McapLog(tmp_path / "source", flush_period=float("inf"))
    log.add_topic("/tether/label", "tether_msgs/msg/Label", msgdef=LABEL_DEF, qos=LATCHED)
    for i in range(3):
        label = store.types["tether_msgs/msg/Label"](label=f"take {i}", score=float(i))
        log.write("/tether/label", store.serialize_cdr(label, "tether_msgs/msg/Label"), T0 + i)
    log.flush()
    data = next((tmp_path / "source").glob("*.mcap")).read_bytes()
    log.close()
    bag = crashed_bag(tmp_path / "episode_000000", data)
    repair(bag)  # no definitions handed in: they come from the bag
    assert [v for _, _, v in read_with_rosbags(bag)] == ["take 0", "take 1", "take 2"]
    assert [v for _, _, v in read_with_mcap(bag)] == ["take 0", "take 1", "take 2"]
    with Reader(bag) as reader:
        assert reader.connections[0].msgdef.data.startswith(LABEL_DEF.strip())


def test_a_repair_cut_short_is_done_again(tmp_path) -> None:
    """Killed after the new .mcap replaced the old one, before metadata.yaml: the next repair finishes it."""
    bag = crashed_bag(tmp_path / "episode_000000", unclosed_log(tmp_path / "source", messages=30, every=10))
    first = repair(bag)
    (bag / "metadata.yaml").unlink()
    (bag / WORK).mkdir()
    (bag / WORK / "half-written").write_bytes(b"x")
    assert needs_repair(bag)
    again = repair(bag)
    assert again.kept == first.kept == 30 and again.ended and "none lost" in str(again)
    assert not (bag / WORK).exists() and len(read_with_mcap(bag)) == 30


def test_an_empty_file_becomes_an_empty_bag_and_a_foreign_one_is_refused(tmp_path) -> None:
    empty = crashed_bag(tmp_path / "episode_000000", b"")  # killed before its first flush
    result = repair(empty)
    assert result.kept == 0 and read_with_rosbags(empty) == [] and read_with_mcap(empty) == []
    foreign = crashed_bag(tmp_path / "episode_000001", b"not an mcap file at all")
    with pytest.raises(McapLogError, match="not an MCAP file"):
        repair(foreign)
    assert (foreign / "episode_000001.mcap").read_bytes() == b"not an mcap file at all"  # left as it was
    assert not (foreign / WORK).exists()
