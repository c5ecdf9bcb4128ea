"""A busy machine slows the graph, never breaks it: rehearse and collect beside CPU hogs on every core.

    make test-load                          # hogs on both cores (TETHER_LOAD_HOGS per core, default 2)
    TETHER_LOAD_HOGS=0 make test-load       # the same run on an otherwise idle machine, to compare

The figures (success, latency, command timing, the twin's real-time factor, skipped frames,
the load) go to ``runs/load/<hogs>.md`` and ``.json``. Nothing here is a timed assertion: what
is asserted is that every episode completes and the expert still succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tether.cli import main
from tether.report import dropped_frames

pytestmark = pytest.mark.slow

HOGS_PER_CORE = int(os.environ.get("TETHER_LOAD_HOGS", "2"))
OUT = Path(os.environ.get("TETHER_LOAD_OUT", "runs/load"))
BUSY_LOOP = "while True: pass"


@pytest.fixture
def cpu_hogs() -> Iterator[int]:
    """Busy processes at normal priority, ``HOGS_PER_CORE`` for each core, for the test's duration."""
    count = HOGS_PER_CORE * (os.cpu_count() or 1)
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        yield count
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_rehearse_and_collect_complete_beside_cpu_hogs(cpu_hogs: int, tmp_path: Path) -> None:
    rehearse, collect = tmp_path / "rehearse", tmp_path / "collect"
    assert main(["rehearse", "--episodes", "5", "--seed", "0", "--report", str(rehearse)]) == 0
    assert main(["collect", "--episodes", "3", "--seed", "0", "--out", str(tmp_path / "dataset"),
                 "--report", str(collect)]) == 0
    reports = {name: json.loads((path / "report.json").read_text()) for name, path in
               (("rehearse", rehearse), ("collect", collect))}
    _write_summary(cpu_hogs, reports)
    assert reports["rehearse"]["episodes"] == 5 and reports["rehearse"]["successes"] >= 4
    assert reports["collect"]["episodes"] == 3 and len(reports["collect"]["meta"]["recorder_commits"]) == 3
    _assert_every_frame_recorded_or_counted(tmp_path / "dataset", reports["collect"])
    for report in reports.values():  # the report says how busy the machine was and how the twin kept up
        machine = report["machine"]
        assert machine["twin_realtime_factor"]["p50"] is not None
        assert machine["camera_frames"]["rendered"] > 0
        if cpu_hogs:
            assert machine["load_average_1min"]["max"] >= machine["load_average_1min"]["cpus"]


# Frames the episode may end without: rounding, plus the two a camera can still hold when the session
# commits (one being drawn, one queued), which belong to no episode. A start that lost the first
# second of the episode (the reset chain on a busy machine, before the twin waited) is 30.
IN_FLIGHT_AT_COMMIT = 3


def _assert_every_frame_recorded_or_counted(dataset: Path, report: dict) -> None:
    """An episode holds every frame from the twin's start to its success, or counts the missing ones as dropped."""
    lengths = pq.read_table(next((dataset / "meta" / "episodes").glob("*/*.parquet"))).column("length").to_pylist()
    for length, episode, commit in zip(lengths, report["episode_detail"], report["meta"]["recorder_commits"]):
        counted = dropped_frames(commit)
        assert length + counted >= round(episode["duration_s"] * 30) - IN_FLIGHT_AT_COMMIT, (length, counted, episode)


def _write_summary(hogs: int, reports: dict[str, dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = ["| run | success | obs→command p50 / p99 ms | command period p50 / p99 ms | missed deadlines | "
            "twin real-time factor p50 / min | sim time slipped s | frames rendered / skipped | dropped frames | "
            "load p50 / max | samples refused |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        lat, per, m = r["latency_ms"]["obs_to_command"], r["command_period_ms"], r["machine"]
        drops = ", ".join(c.split("dropped=")[1].split()[0] for c in r["meta"].get("recorder_commits", [])) or "-"
        rows.append(f"| {name} | {r['successes']}/{r['episodes']} | {_f(lat.get('p50'))} / {_f(lat.get('p99'))} | "
                    f"{_f(per['p50'])} / {_f(per['p99'])} | {r['missed_deadlines']} | "
                    f"{_f(m['twin_realtime_factor']['p50'])} / {_f(m['twin_realtime_factor']['min'])} | "
                    f"{m['twin_slipped_s']:.2f} | {m['camera_frames']['rendered']} / {m['camera_frames']['skipped']} | "
                    f"{drops} | {_f(m['load_average_1min']['p50'])} / {_f(m['load_average_1min']['max'])} | "
                    f"{m['publish_failures']} |")
    title = f"# Load test: {hogs} CPU hogs on {os.cpu_count()} cores\n\n"
    (OUT / f"hogs{hogs}.md").write_text(title + "\n".join(rows) + "\n")
    (OUT / f"hogs{hogs}.json").write_text(json.dumps(reports, indent=2) + "\n")
    print("\n" + title + "\n".join(rows))


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
