"""`tether collect` end to end: the graph records LeRobot v3 episodes with labelled takeovers."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from tether.cli import main
from tether.teleop.dataset import validate
from tether_ros.conversions import DIAGNOSTICS


def test_replay_takeover_is_recorded_and_labelled(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    code = main(["collect", "--device", "replay", "--takeover-after", "1.5", "--episodes", "2", "--mcap-images",
                 "--camera-size", "64", "48", "--out", str(out)])
    assert code == 0
    assert validate(out) == []
    data = pq.read_table(next(out.glob("data/chunk-*/file-*.parquet"))).to_pydict()
    episode = np.array(data["episode_index"])
    assert set(episode.tolist()) == {0, 1}
    for e in (0, 1):
        m = episode == e
        labels = np.array(data["intervention"])[m]
        first = int(np.argmax(labels))
        assert 0 < first and labels[first:].all()  # autonomous, then the human keeps control
        assert set(np.array(data["control_source"])[m][:first]) == {"expert"}
        assert set(np.array(data["phase"])[m][first:]) == {"correction"}
        capture = np.array(data["capture_time_ns"])[m]
        assert np.all(np.diff(capture) > 0)
    # The raw log beside the dataset: one rosbag2 MCAP bag per episode, with every recorded topic.
    for e in (0, 1):
        meta = (tmp_path / "dataset_mcap" / f"episode_{e:06d}" / "metadata.yaml").read_text()
        for topic in ("/joint_states", "/camera/front/image_raw", "/tether/intervention", "joint_trajectory"):
            assert topic in meta
    # A plain PyAV reader sees as many frames per camera as the table has rows.
    for video in out.glob("videos/*/chunk-*/file-*.mp4"):
        with av.open(str(video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == len(episode)


class RecorderWatch(Node):
    """Follows the recorder's 1 Hz diagnostics: the running take's frame count (None while idle)."""

    def __init__(self) -> None:
        super().__init__("recorder_watch")
        self.frames: int | None = None
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diag, 50)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "tether/recorder":
                values = {kv.key: kv.value for kv in status.values}
                self.frames = int(values["episode_frames"]) if values["recording"] == "True" else None


def press_during_a_take(graph, watch: RecorderWatch, master: int, key: bytes) -> int:
    """Once a take has ~1.5 s of frames, type ``key``; wait until that take is over. The press's wall time."""
    assert graph.spin_until(lambda: (watch.frames or 0) >= 45, timeout=90.0)
    os.write(master, key)
    pressed_ns = time.time_ns()
    # That take only grows from here: idle, or fewer frames, means the next take has begun.
    assert graph.spin_until(lambda: watch.frames is None or watch.frames < 40, timeout=30.0)
    return pressed_ns


def test_discarded_and_rerecorded_takes_never_land_in_the_dataset(graph, pty, monkeypatch, tmp_path: Path) -> None:
    """Keys on a real terminal: take 1 discarded (x), take 2 re-recorded (b), take 3 committed as episode 0."""
    master, tty_path = pty
    out = tmp_path / "dataset"
    watch = graph.add(RecorderWatch())
    result: dict[str, int] = {}
    with open(tty_path) as terminal:
        monkeypatch.setattr(sys, "stdin", terminal)  # `collect --device keyboard` reads the operator's terminal
        run = threading.Thread(target=lambda: result.update(code=main(
            ["collect", "--device", "keyboard", "--episodes", "2", "--camera-size", "64", "48", "--out", str(out)])))
        run.start()
        try:
            press_during_a_take(graph, watch, master, b"x")  # discard
            rerecorded_ns = press_during_a_take(graph, watch, master, b"b")  # rerecord
        finally:
            run.join(timeout=180.0)
    assert result.get("code") == 0
    assert validate(out) == []
    info = json.loads((out / "meta" / "info.json").read_text())
    meta = json.loads((tmp_path / "dataset_report" / "report.json").read_text())["meta"]
    assert (info["total_episodes"], meta["discarded_episodes"], meta["rerecorded_episodes"]) == (1, 1, 1)
    (commit,) = meta["recorder_commits"]
    data = pq.read_table(next(out.glob("data/chunk-*/file-*.parquet"))).to_pydict()
    assert set(data["episode_index"]) == {0} and f"frames={len(data['episode_index'])} " in commit
    assert min(data["capture_time_ns"]) > rerecorded_ns  # every frame is from the take after the rerecord
    # The dropped takes' raw logs are kept aside, never overwritten (nor in the dataset).
    assert sorted(p.name for p in (tmp_path / "dataset_mcap").iterdir()) == [
        "episode_000000", "episode_000000.old0", "episode_000000.old1"]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (ValueError, OSError):
            continue
    return found


def writer_process_of(dataset: Path) -> int | None:
    """The dataset writer spawned by the recorder in the collect graph's sim_station process."""
    procs = _processes()
    station = [pid for pid, (_, cmd) in procs.items() if "tether_ros.container" in cmd and str(dataset) in cmd]
    workers = [pid for pid, (ppid, cmd) in procs.items() if ppid in station and "spawn_main" in cmd]
    return workers[0] if workers else None


def test_a_killed_writer_process_fails_the_collect_graph(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dataset"
    result: dict[str, int] = {}
    run = threading.Thread(target=lambda: result.update(code=main(
        ["collect", "--device", "expert", "--episodes", "3", "--camera-size", "64", "48", "--out", str(out)])))
    run.start()
    try:
        deadline = time.monotonic() + 90.0
        while not list(out.glob(".staging/episode_*/segment-*.parquet")):  # recording is under way
            assert time.monotonic() < deadline and run.is_alive(), "collect never started recording"
            time.sleep(0.1)
        worker = writer_process_of(out)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
    finally:
        run.join(timeout=120.0)
    assert result.get("code") == 2
    err = capsys.readouterr().err
    assert "node 'sim_station' exited with 1" in err and "killed by SIGKILL" in err, err[-3000:]


def test_linger_keeps_recording_after_success(tmp_path: Path) -> None:
    """Demos then hold the release and retreat, not only the approach: frames run on past success."""
    out = tmp_path / "dataset"
    code = main(["collect", "--device", "expert", "--episodes", "1", "--seed", "3", "--linger", "1.5",
                 "--camera-size", "64", "48", "--out", str(out), "--report", str(tmp_path / "report")])
    assert code == 0 and validate(out) == []
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["successes"] == 1
    to_success = report["episode_detail"][0]["duration_s"]  # wall time to success, linger excluded
    frames = pq.read_table(next(out.glob("data/chunk-*/file-*.parquet"))).num_rows
    assert frames / 30.0 >= to_success + 1.2  # 30 fps; 1.5 s of linger less the first frame's wait


def test_corrections_of_a_policy_are_recorded_as_rollout_then_demonstration(tmp_path: Path) -> None:
    """HG-DAgger-style: the shipped policy drives, the replayed human corrects; training aims only at the correction."""
    from tether.policy_runtime.dataset import load_demos

    out = tmp_path / "dataset"
    # 3 s: on a loaded machine the policy's first chunk can take over a second (no frames before it).
    code = main(["collect", "--autonomous", "policy", "--device", "replay", "--takeover-after", "3",
                 "--episodes", "1", "--seed", "7", "--out", str(out), "--report", str(tmp_path / "report")])
    assert code == 0 and validate(out) == []
    data = pq.read_table(next(out.glob("data/chunk-*/file-*.parquet"))).to_pydict()
    labels = np.array(data["intervention"])
    first = int(np.argmax(labels))
    assert 0 < first and labels[first:].all()
    assert set(np.array(data["control_source"])[:first]) == {"policy"}  # the policy's own commands
    assert set(np.array(data["control_source"])[first:]) == {"human"}
    episode = load_demos(out, only_success=False).episodes[0]
    assert episode.targets.tolist() == labels.tolist()
