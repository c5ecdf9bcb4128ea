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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image
from std_msgs.msg import String

from tether.errors import DatasetError, DatasetFrameError, WriterProcessError
from tether.teleop.dataset import DatasetSpec, recover, validate
from tether.teleop.writer_process import WriterProcess

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
    writer.close()  # a running episode is committed with an unknown outcome, like DatasetWriter.close
    root = tmp_path / "ds"
    assert validate(root) == []
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
    image = Image(height=160, width=200, encoding="rgb8", step=600, data=bytes(range(256)) * 375)
    sent = [("/chatter", serialize_message(String(data=f"m{i}"))) for i in range(3)]
    sent.append(("/camera/front/image_raw", serialize_message(image)))  # > 64 KiB: through shared memory
    with WriterProcess.start(tmp_path / "ds", spec, log_images=True) as writer:
        writer.open_log(tmp_path / "raw", {"/chatter": "std_msgs/msg/String", "/camera/front/image_raw": "sensor_msgs/msg/Image"})
        for i, (topic, cdr) in enumerate(sent):
            writer.log(topic, cdr, T0 + i)
        writer.close_log()
    with Reader(tmp_path / "raw") as reader:
        assert [(c.topic, bytes(raw)) for c, _, raw in reader.messages()] == sent


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
