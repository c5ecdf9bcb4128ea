"""`tether rehearse` end to end: the real graph, as processes over DDS, against the twin."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("extra", [["--policy", "models/x"], ["--replan-hz", "30"]])
def test_policy_options_need_the_policy_source(tmp_path: Path, capsys, extra: list[str]) -> None:
    assert main(["rehearse", "--source", "expert", *extra, "--report", str(tmp_path)]) == 2
    assert "are for --source policy" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
