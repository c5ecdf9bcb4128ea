"""Rehearsal reports: JSON for machines, Markdown and a PNG for people."""

import json

import numpy as np

from tether.report import EpisodeResult, RehearsalReport


def test_report_summarizes_outcomes_latency_and_timing(tmp_path) -> None:
    episodes = [EpisodeResult(i, 10 + i, success=i != 2, duration_s=5.0 + i) for i in range(4)]
    episodes[2] = EpisodeResult(2, 12, False, 20.0, missed=("outside_target", "held"), distance_m=0.061)
    periods = list(np.r_[np.full(980, 5.0), np.full(20, 11.0)])
    report = RehearsalReport(
        episodes=episodes,
        obs_to_command_ms={"p50": 3.0, "p99": 9.0},
        command_periods_ms=periods,
        nominal_period_ms=5.0,
        gate={"holds": "4", "estops": "1"},
        meta={"robot": "so101", "task": "pick_place", "source": "expert"},
    )
    data = report.write(tmp_path)
    assert (data["episodes"], data["successes"], data["success_rate"]) == (4, 3, 0.75)
    assert data["ci95"][0] < 0.75 < data["ci95"][1]
    assert data["missed_deadlines"] == 20  # periods over twice the nominal
    assert data["command_jitter_ms"]["p99"] == 6.0
    assert (data["gate_holds"], data["estops"]) == (4, 1)
    assert json.loads((tmp_path / "report.json").read_text()) == data
    md = (tmp_path / "report.md").read_text()
    assert data["failures"] == {"outside_target": 1, "held": 1}
    assert data["episode_detail"][2]["missed"] == ["outside_target", "held"]
    assert "3/4 = 0.75" in md and "| 2 | 12 | no | 20.00 | 6.1 | outside_target, held |" in md
    assert "| failed episodes missed | outside_target 1, held 1 |" in md
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_unmeasured_figures_are_null_not_nan(tmp_path) -> None:
    report = RehearsalReport([EpisodeResult(0, 0, False, 20.0)], {}, [], 5.0)
    data = report.write(tmp_path)
    assert data["twin_compute_rtf"] is None and data["command_period_ms"]["p50"] is None
    json.loads((tmp_path / "report.json").read_text())  # strict JSON
    md = (tmp_path / "report.md").read_text()
    assert "| twin compute real-time factor | n/a |" in md  # no unit on a figure that was not measured
