"""`tether bench gate` end to end: a rehearsal under attack, judged by what reached the robot's topic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.cli import main

pytestmark = pytest.mark.slow


def test_under_a_flood_and_every_malformed_chunk_the_stream_keeps_its_limits(tmp_path: Path) -> None:
    out = tmp_path / "gate.json"
    assert main(["bench", "gate", "--seconds", "15", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["commands"] > 2000
    assert r["velocity_ratio_max"]["max"] <= 1.0 + 1e-6
    assert r["acceleration_ratio_max"]["max"] <= 1.0 + 1e-6
    assert r["position_excess_rad"] == 0.0
    # The random targets can make the arm fall back against its saturated servo faster than a command may
    # follow; the lead then exceeds max_step for a moment, and the gate stops that trajectory.
    if r["ticks_beyond_max_step"]:
        assert r["holds_by_reason"].get("tracking_error", 0) >= 1
    assert r["refused_by_reason"]["rate_limited"] > 0  # the flood was cut ...
    assert len(r["refused_by_reason"]) >= 6  # ... and malformed chunks that got through were refused by reason
    assert r["holds_by_reason"].get("estop", 0) >= 1 and sum(r["chunks_sent"].values()) > 10_000
    assert (tmp_path / "gate.md").read_text().startswith("# Gate under attack")
