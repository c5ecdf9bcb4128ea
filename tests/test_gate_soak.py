"""Judging a recorded command stream against the limits: per tick, lost messages and the graph's stop aside."""

from __future__ import annotations

import numpy as np
import pytest

from tether.gate_soak import SoakRecord, analyse, markdown

PERIOD = 0.005


def stream(so101, velocity: float, n: int = 400) -> SoakRecord:
    """Shoulder pan ramping at ``velocity`` rad/s, a command every period."""
    t = 100.0 + np.arange(n) * PERIOD
    q = np.tile(so101.home, (n, 1))
    q[:, 0] += np.minimum(velocity * (t - t[0]), 1.0)
    return SoakRecord(t, q, q.copy(), {"rejected_non_finite": "3", "hold_estop": "1", "chunks": "40",
                                       "tick_period_p99_ms": "5.3"}, {"valid": 40, "non_finite": 3})


def test_a_stream_within_the_limits_reads_at_most_one(so101, tmp_path) -> None:
    record = stream(so101, velocity=2.9)  # the limit is 3.0 rad/s, the ramp starts with a step of accel
    record.commands[1:, 0] = record.commands[0, 0] + np.cumsum(np.minimum(np.arange(1, 400) * 20 * PERIOD, 2.9)) * PERIOD
    record.save(tmp_path)
    r = analyse(SoakRecord.load(tmp_path), so101, PERIOD, max_step=0.35)
    assert r["velocity_ratio_max"]["max"] == pytest.approx(2.9 / 3.0, rel=1e-6)
    assert r["acceleration_ratio_max"]["max"] <= 1.0 + 1e-9
    assert r["refused_by_reason"] == {"non_finite": 3} and r["holds_by_reason"] == {"estop": 1}
    assert "| non_finite | 3 |" in markdown(r)


def test_a_jump_is_caught_and_a_lost_message_is_not_one(so101) -> None:
    record = stream(so101, velocity=1.0)
    lost = np.delete(np.arange(400), 200)  # one command lost on the way: two ticks between neighbours
    r = analyse(SoakRecord(record.stamps[lost], record.commands[lost], record.measured[lost]), so101, PERIOD, 0.35)
    assert r["velocity_ratio_max"]["max"] == pytest.approx(1.0 / 3.0, rel=1e-6)
    record.commands[150, 0] += 0.05  # a teleport the limits forbid
    assert analyse(record, so101, PERIOD, 0.35)["velocity_ratio_max"]["max"] > 3.0


def test_the_graphs_stop_at_the_end_is_left_out(so101) -> None:
    record = stream(so101, velocity=1.0)
    record.commands[-10:, 0] += 0.5  # the last 50 ms: the graph being stopped around the gate
    assert analyse(record, so101, PERIOD, 0.35, tail_s=0.1)["velocity_ratio_max"]["max"] < 1.0
    with pytest.raises(ValueError, match="nothing to judge"):
        analyse(SoakRecord(np.zeros(2), np.zeros((2, 6)), np.zeros((2, 6))), so101, PERIOD, 0.35)
