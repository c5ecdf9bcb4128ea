"""The dataset writer in its own process: same results as DatasetWriter, and no failure goes unnoticed.

Every test starts a real worker process (spawn) and checks the dataset it leaves with
``validate``; the crash tests SIGKILL the worker, or the process that owns it, mid-episode.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rosbags.rosbag2 import Reader
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.typesys import Stores, get_typestore

from tether.cli import main
from tether.errors import DatasetError, DatasetFrameError, McapLogError, WriterDiskFullError, WriterProcessError
from tether.dataset import DatasetSpec, recover, validate
from tether.dataset.layout import Layout
from tether.teleop.recording.mcap_log import TopicQos
from tether.teleop.recording.writer_process import WriterProcess
from tether_tests_cdr import KILTED, joint_state  # tests/teleop/recording/cdr.py, loaded by conftest

IMAGE_SIZE = (48, 64)
FPS = 30  # 1 s segments: 30 frames each
HELPER = Path(__file__).with_name("helpers_kill_owner.py")
T0 = 1_000_000_000


def state(frame: int) -> np.ndarray:
    return (frame / 100.0 + np.arange(6) / 10.0).astype(np.float32)


def add(writer: WriterProcess, frame: int) -> None:
    images = {cam: np.full((*IMAGE_SIZE, 3), frame % 250, np.uint8) for cam in writer.spec.cameras}
    writer.add_frame(state(frame), state(frame), images, T0 + frame * 33_000_000, False, "expert", "autonomous")


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def raises_soon(check: Callable[[], None], timeout: float = 10.0) -> WriterProcessError:
    """The WriterProcessError ``check`` raises once the worker's end has been noticed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            check()
        except WriterProcessError as exc:
            return exc
        time.sleep(0.02)
    raise AssertionError("the worker's end went unnoticed")


@pytest.fixture
def spec(so101) -> DatasetSpec:
    return DatasetSpec.from_profile(so101, fps=FPS, image_size=IMAGE_SIZE)


@pytest.fixture
def writer(tmp_path: Path, spec: DatasetSpec) -> Iterator[WriterProcess]:
    w = WriterProcess.start(tmp_path / "ds", spec)
    yield w
    w.abandon()


def data_table(root: Path) -> dict[str, list]:
    return pq.read_table(next(root.glob("data/chunk-*/file-*.parquet"))).to_pydict()


def episode_outcomes(root: Path) -> list[tuple[bool | None, bool]]:
    """(success, truncated) of each committed episode."""
    rows = pq.read_table(next(root.glob("meta/episodes/chunk-*/file-*.parquet"))).to_pylist()
    return [(r["success"], r["truncated"]) for r in rows]


def test_close_can_discard_the_running_episode_instead(writer: WriterProcess, tmp_path: Path) -> None:
    writer.begin_episode("pick the cube")
    for i in range(5):
        add(writer, i)
    with pytest.raises(DatasetError, match="on_abort 'drop' is not one of truncate, discard"):
        writer.close("drop")
    assert writer.episode_running  # a refused close changes nothing
    writer.close("discard")
    assert validate(tmp_path / "ds") == [] and not list((tmp_path / "ds").glob("meta/episodes/*/*.parquet"))


def test_episodes_commit_discard_and_close_as_with_dataset_writer(writer: WriterProcess, tmp_path: Path) -> None:
    writer.begin_episode("pick the cube")
    for i in range(40):
        add(writer, i)
    assert writer.end_episode(success=True) == 0
    assert (writer.num_episodes, writer.num_frames, writer.last_commit.frames) == (1, 40, 40)
    writer.begin_episode("pick the cube")
    for i in range(10):
        add(writer, 1000 + i)
    writer.discard_episode()  # never lands in the dataset
    writer.begin_episode("pick the cube")
    for i in range(5):
        add(writer, 2000 + i)
    writer.close()  # a running episode was cut short: committed as truncated, like DatasetWriter.close
    root = tmp_path / "ds"
    assert validate(root) == []
    assert episode_outcomes(root) == [(True, False), (None, True)]
    data = data_table(root)
    assert data["episode_index"] == [0] * 40 + [1] * 5
    expected = [state(i) for i in range(40)] + [state(2000 + i) for i in range(5)]
    np.testing.assert_array_equal(np.array(data["observation.state"], np.float32), np.array(expected))
    reopened = WriterProcess.start(root, writer.spec)  # appends
    reopened.wait_started()
    assert (reopened.num_episodes, reopened.num_frames) == (2, 45)
    reopened.close()


def test_a_dataset_the_worker_cannot_open_is_reported(writer: WriterProcess, tmp_path: Path) -> None:
    writer.wait_started()  # holds the dataset's lock
    second = WriterProcess.start(tmp_path / "ds", writer.spec)
    with pytest.raises(WriterProcessError, match="cannot open .* in use by another writer"):
        second.begin_episode("pick the cube")
    with pytest.raises(WriterProcessError):
        second.close()
    assert not second._process.is_alive()


def test_a_bad_frame_is_refused_here_and_the_worker_goes_on(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    add(writer, 0)
    with pytest.raises(DatasetFrameError, match="images\\['front'\\]"):
        writer.add_frame(state(1), state(1), {c: np.zeros((4, 4, 3), np.uint8) for c in writer.spec.cameras}, T0 + 10**9)
    with pytest.raises(DatasetFrameError, match="capture_time_ns"):
        add(writer, 0)  # not after the previous frame
    add(writer, 1)
    assert writer.end_episode(success=False) == 0 and writer.num_frames == 2


def test_a_refused_call_raises_here_and_leaves_the_worker_running(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    with pytest.raises(DatasetError, match="empty episode"):
        writer.end_episode(success=True)
    assert writer.episode_running  # as DatasetWriter: the empty episode still runs
    add(writer, 0)
    assert writer.end_episode(success=True) == 0


def test_ctrl_c_to_the_process_group_does_not_stop_the_worker(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    add(writer, 0)
    os.kill(writer.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to every process of the group
    add(writer, 1)
    assert writer.end_episode(success=True) == 0
    writer.check()


def test_the_raw_log_keeps_every_message_byte_for_byte(tmp_path: Path, so101) -> None:
    spec = DatasetSpec.from_profile(so101, fps=FPS, image_size=(160, 200))
    store = get_typestore(Stores.ROS2_KILTED)  # exact CDR, as a raw subscription receives it
    types = store.types
    image = types["sensor_msgs/msg/Image"](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        height=160, width=200, encoding="rgb8", is_bigendian=0, step=600,
        data=np.frombuffer(bytes(range(256)) * 375, np.uint8))
    sent = [("/chatter", bytes(store.serialize_cdr(types["std_msgs/msg/String"](data=f"m{i}"), "std_msgs/msg/String")))
            for i in range(3)]
    # > 64 KiB: through shared memory
    sent.append(("/camera/front/image_raw", bytes(store.serialize_cdr(image, "sensor_msgs/msg/Image"))))
    topics = {"/chatter": "std_msgs/msg/String", "/camera/front/image_raw": "sensor_msgs/msg/Image"}
    qos = {"/chatter": TopicQos("best_effort", "volatile", depth=5),
           "/camera/front/image_raw": TopicQos("reliable", "volatile")}
    with WriterProcess.start(tmp_path / "ds", spec, log_images=True) as writer:
        with pytest.raises(McapLogError, match="give one for each logged topic"):
            writer.open_log(tmp_path / "raw", topics, {"/chatter": qos["/chatter"]})
        writer.open_log(tmp_path / "raw", topics, qos)
        for i, (topic, cdr) in enumerate(sent):
            writer.log(topic, cdr, T0 + i)
        writer.close_log()
    with Reader(tmp_path / "raw") as reader:
        assert [(c.topic, bytes(raw)) for c, _, raw in reader.messages()] == sent
        chatter = next(c for c in reader.connections if c.topic == "/chatter").ext.offered_qos_profiles
    assert [(q.reliability.name, q.depth) for q in chatter] == [("BEST_EFFORT", 5)]


def test_a_killed_worker_is_reported_and_its_flushed_frames_recovered(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    for i in range(45):  # one closed 1 s segment (30 frames), 15 frames in the open one
        add(writer, i)
    staging = writer.root / ".staging" / "episode_000000"
    wait_for(lambda: (staging / "segment-000000.parquet").exists())
    os.kill(writer.pid, signal.SIGKILL)
    error = raises_soon(writer.check)
    assert "killed by SIGKILL" in str(error) and "episode 0 (45 frames handed over)" in str(error)
    assert "tether dataset recover" in str(error)
    with pytest.raises(WriterProcessError):
        add(writer, 45)  # every later call says the same, nothing is silently dropped
    writer.abandon()
    report = recover(writer.root)
    assert [(r.frames, r.truncated) for r in report.recovered] == [(30, True)]
    assert validate(writer.root) == []


LOGGED = {"/joint_states": "sensor_msgs/msg/JointState", "/tether/intervention": "std_msgs/msg/Bool"}
LOGGED_QOS = {"/joint_states": TopicQos("reliable", "volatile", depth=600),
              "/tether/intervention": TopicQos("reliable", "transient_local", depth=1)}


def record(writer: WriterProcess, frames: Iterable[int]) -> None:
    """Frames at 30 fps with the joint states of each logged beside them, in real time (the log flushes each second)."""
    for i in frames:
        add(writer, i)
        for j in range(3):
            writer.log("/joint_states", joint_state(3 * i + j), T0 + (3 * i + j) * 11_000_000)
        time.sleep(1 / FPS)


def logged_positions(bag: Path) -> list[float]:
    """Every joint state in ``bag``, decoded by rosbags and by the mcap reader, which must agree."""
    with Reader(bag) as reader:
        ours = [float(KILTED.deserialize_cdr(raw, c.msgtype).position[0]) for c, _, raw in reader.messages()
                if c.topic == "/joint_states"]
    (mcap,) = bag.glob("*.mcap")
    with open(mcap, "rb") as f:
        theirs = [float(m.position[0]) for _, ch, _, m in
                  make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages() if ch.topic == "/joint_states"]
    assert ours == theirs
    return ours


def test_recover_repairs_the_raw_log_of_a_worker_killed_mid_episode(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    bag = Layout(writer.root).raw_log(0)
    writer.open_log(bag, LOGGED, LOGGED_QOS)
    record(writer, range(75))  # 2.5 s: two segments and two log flushes on disk
    os.kill(writer.pid, signal.SIGKILL)
    raises_soon(writer.check)
    writer.abandon()
    problems = validate(writer.root)
    assert f"raw log ds_mcap/episode_000000: unreadable, its recording never closed it (a crash or a full disk: " \
           f"no metadata.yaml or MCAP footer); run `tether dataset recover {writer.root}`" in problems
    report = recover(writer.root)
    (log,) = report.logs
    assert log.bag == "ds_mcap/episode_000000"
    positions = logged_positions(bag)
    assert positions == [float(i) for i in range(len(positions))] and len(positions) >= 3 * FPS  # >= 1 s, a prefix
    assert log.repair.messages == {"/joint_states": len(positions)}
    (row,) = pq.read_table(next(writer.root.glob("meta/episodes/chunk-*/file-*.parquet"))).to_pylist()
    behind_s = (row["capture_end_ns"] - log.repair.last_ns) / 1e9  # how much of the episode the log lacks
    assert (f"it ends {behind_s:.2f} s before the episode's last frame" in str(log)) == (behind_s > 0)
    assert f"repaired the raw log ds_mcap/episode_000000 (its recording never closed it: a crash or a full disk): " \
           f"kept {len(positions)} messages on 1 topic" in str(report)
    assert validate(writer.root) == [] and recover(writer.root).clean


def test_a_full_disk_stops_the_writer_in_one_line_and_recover_works_once_space_is_freed(small_disk, spec, capsys) -> None:
    root = small_disk.path / "ds"
    writer = WriterProcess.start(root, spec)
    try:
        writer.begin_episode("pick the cube")
        writer.open_log(Layout(root).raw_log(0), LOGGED, LOGGED_QOS)
        record(writer, range(45))
        wait_for((root / ".staging" / "episode_000000" / "segment-000000.parquet").exists)
        small_disk.fill()
        more = iter(range(45, 10_000))
        error = raises_soon(lambda: record(writer, [next(more)]), timeout=30.0)  # record on until it fails
    finally:
        writer.abandon()
    assert isinstance(error, WriterDiskFullError)
    message = str(error)
    assert message.startswith(f"the disk holding {root} is full (No space left on device) while ")
    assert message.endswith(f"; free space, then run `tether dataset recover {root}`") and "\n" not in message

    capsys.readouterr()
    assert main(["dataset", "recover", str(root)]) == 2  # the disk is still full
    err = capsys.readouterr().err
    assert err.startswith(f"tether: error: the disk holding {root} is full (No space left on device) while ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(root.rglob("*.commit-tmp")) and not list(small_disk.path.rglob(".repair"))  # gave its space back

    small_disk.free()
    assert main(["dataset", "recover", str(root)]) == 0
    out = capsys.readouterr().out
    assert "recovered .staging/episode_000000 as episode 0" in out and "repaired the raw log ds_mcap/episode_000000" in out
    assert f"{root}: valid" in out and validate(root) == []
    positions = logged_positions(Layout(root).raw_log(0))
    assert positions == [float(i) for i in range(len(positions))] and len(positions) >= 3 * FPS


def test_sigterm_stages_every_frame_sent_before_the_worker_exits(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    for i in range(45):
        add(writer, i)
    os.kill(writer.pid, signal.SIGTERM)  # the frames may still be in the pipe: they are written first
    assert "exited with status 0" in str(raises_soon(writer.check))
    writer.abandon()
    assert [(r.frames, r.truncated) for r in recover(writer.root).recovered] == [(45, True)]


def test_a_failure_inside_the_worker_is_fatal_and_reported(writer: WriterProcess) -> None:
    writer.begin_episode("pick the cube")
    add(writer, 0)
    staging = writer.root / ".staging" / "episode_000000"
    wait_for(staging.exists)
    shutil.rmtree(staging)  # the disk loses the episode's folder: the next segment cannot be closed
    for i in range(1, 31):
        add(writer, i)
    error = raises_soon(writer.check)
    assert "the dataset writer process failed: frame:" in str(error) and "episode 0" in str(error)
    writer.abandon()
    assert writer._process.exitcode == 1


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped by its new parent


@pytest.mark.parametrize("end", ["killed", "exits without close"])
def test_an_owner_that_ends_uncleanly_loses_nothing_it_handed_over(tmp_path: Path, end: str) -> None:
    """Killed: the worker reads end-of-file. Exiting: multiprocessing SIGTERMs it. Either way it stages all."""
    root = tmp_path / "ds"
    extra = [] if end == "killed" else ["--exit"]
    owner = subprocess.Popen([sys.executable, str(HELPER), str(root), "--frames", "45", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: root.with_suffix(".ready").exists() or owner.poll() is not None, timeout=60.0)
        worker_pid, frames = (int(x) for x in root.with_suffix(".ready").read_text().split())
        if end == "killed":
            owner.kill()
        assert owner.wait(timeout=60.0) in (0, -signal.SIGKILL), owner.stdout.read().decode() if owner.stdout else ""
        wait_for(lambda: _gone(worker_pid))  # the worker staged everything and left
    finally:
        if owner.poll() is None:
            owner.kill()
    report = recover(root)
    assert [(r.frames, r.truncated) for r in report.recovered] == [(frames, True)]
    assert validate(root) == []
    data = data_table(root)
    np.testing.assert_array_equal(np.array(data["observation.state"], np.float32), np.array([state(i) for i in range(45)]))
