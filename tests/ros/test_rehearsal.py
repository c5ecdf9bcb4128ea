"""`tether rehearse` end to end: the real graph, as processes over DDS, against the twin."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from tether.cli import main
from tether.graph import NodeSpec
from tether.runner import GraphFailed, run_graph


def test_short_rehearsal_writes_a_complete_report(tmp_path: Path) -> None:
    report = tmp_path / "rehearsal"
    code = main(["rehearse", "--episodes", "2", "--seed", "3", "--camera-size", "64", "48", "--report", str(report)])
    assert code == 0
    data = json.loads((report / "report.json").read_text())
    for key in ("episodes", "successes", "success_rate", "ci95", "latency_ms", "command_rate_hz", "gate_holds", "estops"):
        assert key in data
    assert data["episodes"] == 2
    assert [e["seed"] for e in data["episode_detail"]] == [3, 4]
    for episode in data["episode_detail"]:  # the twin says where the cube ended and why an episode failed
        assert episode["distance_m"] is not None
        assert (episode["missed"] == []) == episode["success"]
        assert (episode["distance_m"] <= 0.04) if episode["success"] else episode["missed"]
    lo, hi = data["ci95"]
    assert 0.0 <= lo <= data["success_rate"] <= hi <= 1.0
    lat = data["latency_ms"]["obs_to_command"]
    assert 0.0 < lat["p50"] <= lat["p99"]
    assert 150.0 < data["command_rate_hz"] < 250.0  # the gate streams at 200 Hz
    assert (report / "report.md").read_text().startswith("# Rehearsal")
    assert (report / "report.png").stat().st_size > 10_000
    with av.open(str(report / "episode_000.mp4")) as video:
        frames = sum(1 for _ in video.decode(video=0))
    assert frames > 30  # ~30 fps of the first episode


def test_a_node_that_dies_fails_the_graph(tmp_path: Path) -> None:
    nodes = [
        NodeSpec("gate_node", "gate", {"robot": "no_such_robot"}),
        NodeSpec("session_node", "session", {"episodes": 1, "report": str(tmp_path)}, terminal=True),
    ]
    with pytest.raises(GraphFailed, match="unknown robot profile 'no_such_robot'"):
        run_graph(nodes, tmp_path / "logs", timeout=60)


def test_bad_arguments_fail_before_any_process_starts(tmp_path: Path, capsys) -> None:
    assert main(["rehearse", "--robot", "nope", "--report", str(tmp_path)]) == 2
    assert "available: panda, so101" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("extra", [["--policy", "models/x"], ["--replan-hz", "30"], ["--scheduler", "switch"]])
def test_policy_options_need_the_policy_source(tmp_path: Path, capsys, extra: list[str]) -> None:
    assert main(["rehearse", "--source", "expert", *extra, "--report", str(tmp_path)]) == 2
    assert "are for --source policy" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent pid
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, or a zombie nobody has reaped yet (that one is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_rehearsal(tmp_path: Path) -> tuple[subprocess.Popen[bytes], set[int]]:
    tether = subprocess.Popen([sys.executable, "-m", "tether.cli", "rehearse", "--episodes", "50",
                               "--camera-size", "64", "48", "--report", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    nodes: set[int] = set()
    while len(nodes) < 4 and time.monotonic() < deadline and tether.poll() is None:
        time.sleep(0.2)
        nodes = _children(tether.pid)
    assert len(nodes) == 4, f"the graph did not start: {nodes}"
    # Until the first episode's video has frames: every node is then busy in its callbacks when the signal comes.
    while not (tmp_path / "episode_000.mp4").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    return tether, nodes


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_terminating_tether_stops_every_node_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """The nodes run in their own sessions; `kill` (or a closed terminal) on tether must still stop them,
    and each stops without an exception (rclpy's own signal handling raised in timers and wait sets)."""
    tether, nodes = _start_rehearsal(tmp_path)
    tether.send_signal(sig)
    assert tether.wait(timeout=30) == 130
    alive = [pid for pid in nodes if _alive(pid)]
    assert not alive, f"nodes {alive} outlived tether"
    for log in (tmp_path / "logs").glob("*.log"):
        text = _read(log)
        assert "Traceback" not in text and "[FATAL]" not in text and "[ERROR]" not in text, f"{log.name}:\n{text}"


def test_nodes_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """`kill -9` of tether cannot run any handler: the nodes must notice on their own and stop driving."""
    tether, nodes = _start_rehearsal(tmp_path)
    tether.kill()
    tether.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in nodes if _alive(pid)]
    assert not alive, f"nodes {alive} kept running after their supervisor was killed"


def test_two_graphs_in_two_namespaces_run_side_by_side_on_one_domain(tmp_path: Path) -> None:
    """Every name in the graph is relative, so two whole graphs run on one ROS domain at once, each under
    its own namespace, without hearing each other (the wall clock: /clock is global, as ROS has it)."""
    from concurrent.futures import ThreadPoolExecutor

    from tether.graph import RehearsalArgs, rehearsal_graph

    def rehearse(namespace: str) -> int:
        args = RehearsalArgs(episodes=1, camera_width=64, camera_height=48, video_episodes=0,
                             report=str(tmp_path / namespace), namespace=namespace)
        return run_graph(rehearsal_graph(args), tmp_path / namespace / "logs", timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(pool.map(rehearse, ["arm1", "arm2"]))
    assert codes == [0, 0]
    for namespace in ("arm1", "arm2"):
        assert json.loads((tmp_path / namespace / "report.json").read_text())["successes"] == 1
        assert f"[{namespace}.gate]" in (tmp_path / namespace / "logs" / "gate.log").read_text()
