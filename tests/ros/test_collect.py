"""`tether collect` end to end: the graph records LeRobot v3 episodes with labelled takeovers."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rclpy.node import Node
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from tether.cli import main
from tether.errors import TetherError
from tether.graph import CollectArgs, collect_graph
from tether.dataset import validate
from tether.dataset.layout import Layout
from tether.report import dropped_frames
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
    # The raw log beside the dataset: one rosbag2 MCAP bag per episode, with every recorded topic,
    # and every message in it decodes with rosbags (whose CDR decoder refuses any stray byte).
    for e in (0, 1):
        assert_bag_readable(tmp_path / "dataset_mcap" / f"episode_{e:06d}")
    # A plain PyAV reader sees as many frames per camera as the table has rows.
    for video in out.glob("videos/*/chunk-*/file-*.mp4"):
        with av.open(str(video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == len(episode)


def assert_bag_readable(bag: Path) -> None:
    store = get_typestore(Stores.ROS2_KILTED)
    counts: Counter[str] = Counter()
    with Reader(bag) as reader:
        assert reader.ros_distro == "kilted"
        latched = {c.topic: c.ext.offered_qos_profiles[0].durability.name for c in reader.connections}
        for conn, _, raw in reader.messages():
            store.deserialize_cdr(raw, conn.msgtype)
            counts[conn.topic] += 1
    assert latched["/tether/intervention"] == "TRANSIENT_LOCAL"
    for topic in ("/joint_states", "/camera/front/image_raw", "/tether/intervention", "joint_trajectory"):
        assert any(topic in t and n > 0 for t, n in counts.items()), (topic, counts)


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


@contextmanager
def collecting(args: list[str], ready: Callable[[], object]) -> Iterator[dict[str, int]]:
    """`tether collect ARGS` on a thread; yields once ``ready()`` holds (recording is under way), joins at the end.

    The dict it yields gets the command's exit code as ``code``.
    """
    result: dict[str, int] = {}
    run = threading.Thread(target=lambda: result.update(code=main(["collect", *args])))
    run.start()
    try:
        deadline = time.monotonic() + 90.0
        while not ready():
            assert time.monotonic() < deadline and run.is_alive(), "collect never started recording"
            time.sleep(0.1)
        yield result
    finally:
        run.join(timeout=120.0)


def segments(out: Path) -> list[Path]:
    """The staged segments of the running episode: frames have reached the disk."""
    return list(out.glob(".staging/episode_*/segment-*.parquet"))


def test_a_killed_writer_process_fails_the_collect_graph(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dataset"
    with collecting(["--device", "expert", "--episodes", "3", "--camera-size", "64", "48", "--out", str(out)],
                    lambda: segments(out)) as result:
        worker = writer_process_of(out)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
    assert result.get("code") == 2
    err = capsys.readouterr().err
    assert "node 'sim_station' exited with 1" in err and "killed by SIGKILL" in err, err[-3000:]


def _small_disk() -> type:
    """tests/teleop/recording/small_disk.py's SmallDisk: a tmpfs to fill (tests import with --import-mode=importlib)."""
    path = Path(__file__).parents[1] / "teleop" / "recording" / "small_disk.py"
    spec = importlib.util.spec_from_file_location("tether_tests_small_disk", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SmallDisk


@pytest.mark.slow
def test_a_full_disk_stops_collect_with_the_cause_and_recover_works_once_space_is_freed(tmp_path: Path, capsys) -> None:
    """What the user sees: the graph fails (exit 2) and the one error line names the disk, the dataset and the fix."""
    with _small_disk().mounted(tmp_path / "disk", size_mb=64) as disk:
        out = disk.path / "dataset"
        bag = Layout(out).raw_log(0)
        args = ["--device", "expert", "--episodes", "3", "--camera-size", "64", "48", "--out", str(out),
                "--report", str(tmp_path / "report")]
        # Until a segment and a log chunk are on disk.
        with collecting(args, lambda: segments(out) and any(f.stat().st_size for f in bag.glob("*.mcap"))) as result:
            disk.fill()
        assert result.get("code") == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, err[-3000:]
        assert f"the disk holding {out} is full (No space left on device) while " in errors[0]
        assert errors[0].endswith(f"; free space, then run `tether dataset recover {out}`")
        disk.free()
        assert main(["dataset", "recover", str(out)]) == 0
        assert "repaired the raw log dataset_mcap/episode_000000" in capsys.readouterr().out
        assert validate(out) == []
        store = get_typestore(Stores.ROS2_KILTED)
        with Reader(bag) as reader:  # every message decodes, with rosbags and with the mcap reader
            ours = Counter(c.topic for c, _, raw in reader.messages() if store.deserialize_cdr(raw, c.msgtype))
        with open(next(bag.glob("*.mcap")), "rb") as f:
            decoded = make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()
            assert ours == Counter(channel.topic for _, channel, _, _ in decoded)
        assert ours["/joint_states"] > 0 and ours["/tether/intervention"] == 1


@pytest.mark.parametrize("on_abort", ["truncate", "discard"])
def test_a_session_that_fails_mid_episode_never_leaves_a_normal_episode(tmp_path: Path, capsys, on_abort) -> None:
    """A node of the graph dies while episode 0 records: the graph fails (exit 2), and the recorder commits
    what it had marked truncated, with an unknown outcome, or (--on-abort discard) drops it."""
    out = tmp_path / "dataset"
    args = ["--device", "expert", "--episodes", "2", "--camera-size", "64", "48", "--out", str(out), "--on-abort", on_abort]
    with collecting(args, lambda: segments(out)) as result:
        (expert,) = [pid for pid, (ppid, cmd) in _processes().items()
                     if ppid == os.getpid() and "tether_ros.expert_node" in cmd]  # this graph's, not another's
        os.kill(expert, signal.SIGKILL)
    assert result.get("code") == 2
    assert validate(out) == []
    rows = [r for p in sorted(out.glob("meta/episodes/*/*.parquet")) for r in pq.read_table(p).to_pylist()]
    capsys.readouterr()
    assert main(["dataset", "info", str(out)]) == 0
    summary = capsys.readouterr().out
    if on_abort == "discard":
        assert rows == [] and "episodes: 0 (0 truncated" in summary
        return
    assert [(r["episode_index"], r["success"], r["truncated"]) for r in rows] == [(0, None, True)]
    assert rows[0]["length"] >= 30  # at least the flushed second
    assert "episodes: 1 (1 truncated by a crash or an aborted session)" in summary


def test_an_unknown_on_abort_is_refused_with_the_choices() -> None:
    with pytest.raises(TetherError, match="unknown on_abort 'keep'; choices: truncate, discard"):
        collect_graph(CollectArgs(on_abort="keep"))


def test_linger_keeps_recording_after_success(tmp_path: Path) -> None:
    """Demos then hold the release and retreat, not only the approach: frames run on past success."""
    out = tmp_path / "dataset"
    code = main(["collect", "--device", "expert", "--episodes", "1", "--seed", "3", "--linger", "1.5",
                 "--camera-size", "64", "48", "--out", str(out), "--report", str(tmp_path / "report")])
    assert code == 0 and validate(out) == []
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["successes"] == 1
    assert report["meta"]["clock"] == "sim"  # unattended collection runs on the twin's clock: nothing skipped
    to_success = report["episode_detail"][0]["duration_s"]  # the twin's time to success, linger excluded
    frames = pq.read_table(next(out.glob("data/chunk-*/file-*.parquet"))).num_rows
    # Every frame from the twin's start (it stands still until every node is reset) to the end of the
    # linger is in the episode, or counted as dropped; slack: rounding, and the two frames a camera
    # can still hold (drawing, queued) when the session commits.
    dropped = dropped_frames(report["meta"]["recorder_commits"][0])
    assert frames + dropped >= round((to_success + 1.5) * 30) - 3, (frames, dropped, to_success)


def test_corrections_of_a_policy_are_recorded_as_rollout_then_demonstration(tmp_path: Path) -> None:
    """HG-DAgger-style: the shipped policy drives, the replayed human corrects; training aims only at the correction."""
    from tether.dataset.reader import load_demos

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
