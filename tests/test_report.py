"""Rehearsal reports: JSON for machines, Markdown and a PNG for people."""

import json

import numpy as np

from tether.report import EpisodeResult, MachineTiming, RehearsalReport, dropped_frames


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


def test_the_report_says_how_busy_the_machine_was_and_how_the_twin_kept_up(tmp_path) -> None:
    machine = MachineTiming(realtime_factor=[1.0, 0.62, 0.9], compute_rtf=[3.0, 5.0], slipped_s=1.25,
                            frames_rendered=300, frames_skipped=100, load_average=[3.5, 6.0, 4.0], cpus=2)
    data = RehearsalReport([EpisodeResult(0, 0, True, 5.0)], {}, [5.0], 5.0, machine=machine).write(tmp_path)
    m = data["machine"]
    assert m["twin_realtime_factor"] == {"p50": 0.9, "min": 0.62} and m["twin_slipped_s"] == 1.25
    assert m["camera_frames"] == {"rendered": 300, "skipped": 100, "skipped_share": 0.25}
    assert m["load_average_1min"] == {"p50": 4.0, "max": 6.0, "cpus": 2}
    md = (tmp_path / "report.md").read_text()
    assert "| twin real-time factor (sim s per wall s) | p50 0.90, min 0.62; sim time slipped 1.25 s |" in md
    assert "| camera frames rendered / skipped | 300 / 100 (25.0 % skipped) |" in md
    assert "| machine load (1-min average) | p50 4.00, max 6.00 on 2 CPUs |" in md


def test_dropped_frames_are_read_from_a_recorder_commit_message() -> None:
    assert dropped_frames("episode=0 frames=212 dropped=none commit_s=0.3") == 0
    assert dropped_frames("episode=3 frames=190 dropped=camera_gap:2,stale_state:1 commit_s=0.5") == 3
