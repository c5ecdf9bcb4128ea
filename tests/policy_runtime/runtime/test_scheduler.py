"""Chunk scheduling: ACT ensembling weights, stale-action dropping, smooth switches, replan vs control."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.errors import ConfigError
from tether.policy_runtime.runtime.scheduler import ChunkScheduler, SchedulerConfig, SchedulerEmpty

P = 0.1  # action period


def const(value: float, k: int = 20, joints: int = 2) -> np.ndarray:
    return np.full((k, joints), value)


def ramp(k: int = 20, joints: int = 2) -> np.ndarray:
    return np.repeat(np.arange(k, dtype=float)[:, None], joints, axis=1)  # action i == i


def sched(mode: str = "ensemble", **kw: float) -> ChunkScheduler:
    return ChunkScheduler(SchedulerConfig(action_period=P, replan_period=kw.pop("replan", 0.2), mode=mode, **kw))


def test_ensemble_weights_oldest_prediction_first() -> None:
    s = sched(ensemble_m=0.5, blend_s=0.0)
    s.add(0.0, const(1.0), now=0.0)
    s.add(0.1, const(3.0), now=0.1)
    w0, w1 = 1.0, math.exp(-0.5)  # the oldest prediction gets exp(-m * 0)
    np.testing.assert_allclose(s.command(0.5), (w0 * 1 + w1 * 3) / (w0 + w1))
    s.add(0.2, const(7.0), now=0.2)
    w2 = math.exp(-1.0)
    np.testing.assert_allclose(s.command(0.5), (w0 * 1 + w1 * 3 + w2 * 7) / (w0 + w1 + w2))


def test_ensemble_averages_each_chunks_own_prediction_for_that_time() -> None:
    s = sched(ensemble_m=0.0, blend_s=0.0)
    s.add(0.0, ramp(), now=0.0)  # predicts i at 0.1 i
    s.add(0.3, ramp() + 100, now=0.3)  # predicts 100 + i at 0.3 + 0.1 i
    t = 0.5  # first chunk: 5, second: 102
    np.testing.assert_allclose(s.command(t), (5 + 102) / 2)
    # Past the first chunk's span (1.9 s) only the second predicts.
    np.testing.assert_allclose(s.command(2.0), 100 + 17)


def test_chunks_whose_span_has_passed_are_dropped() -> None:
    s = sched(ensemble_m=0.0, blend_s=0.0)
    s.add(0.0, const(1.0, k=5), now=0.0)  # spans 0 .. 0.4
    s.add(0.3, const(3.0, k=5), now=0.3)
    assert s.stored_chunks == 2
    s.add(0.6, const(5.0, k=5), now=0.6)
    assert s.stored_chunks == 2  # the first ended at 0.4
    np.testing.assert_allclose(s.command(0.65), 4.0)  # (3 + 5) / 2: the first no longer takes part
    s.trajectory(now=1.2)
    assert s.stored_chunks == 1  # past every span: only the newest stays (its last action is held)


def test_switch_mode_drops_actions_whose_time_has_passed() -> None:
    s = sched("switch", blend_s=0.0)
    dropped = s.add(0.0, ramp(), now=0.25)  # actions 0, 1, 2 were due at 0, 0.1, 0.2
    assert dropped == 3
    np.testing.assert_allclose(s.command(0.25), 3.0)  # not 2.5: action 2 is never executed
    t_first, times, q = s.trajectory(now=0.25)
    assert t_first == pytest.approx(0.3)
    np.testing.assert_allclose(q[:, 0], np.arange(3, 20))
    np.testing.assert_allclose(times, P * np.arange(17), atol=1e-12)
    s.add(1.0, ramp() + 50, now=1.05)  # replaces the old chunk entirely
    np.testing.assert_allclose(s.command(1.3), 53.0)


def commands_across_a_switch(blend_s: float, mode: str = "switch") -> np.ndarray:
    s = sched(mode, blend_s=blend_s)
    s.add(0.0, const(0.0, k=40), now=0.0)
    ts = np.arange(0.0, 2.0, 0.005)
    out = []
    for t in ts:
        if abs(t - 1.0) < 1e-9:
            s.add(0.98, const(1.0, k=40), now=t)  # a chunk that disagrees by 1 rad
        out.append(s.command(t)[0])
    return np.array(out)


@pytest.mark.parametrize("mode", ["switch", "ensemble"])
def test_a_new_chunk_is_crossfaded_in_without_a_jump(mode: str) -> None:
    raw = np.abs(np.diff(commands_across_a_switch(0.0, mode))).max()
    smooth = commands_across_a_switch(0.2, mode)
    step = np.abs(np.diff(smooth)).max()
    assert raw >= 0.49  # switching at once jumps by (about) the disagreement
    assert step <= 1.0 * 0.005 / 0.2 + 1e-9  # crossfade: the jump spread over blend_s
    w = math.exp(-0.01)  # ensemble: the newer chunk's weight beside the older one's 1
    assert smooth[-1] == pytest.approx(1.0 if mode == "switch" else w / (1 + w))


def test_replan_period_is_independent_of_the_control_period() -> None:
    fast = ChunkScheduler(SchedulerConfig(action_period=0.1, replan_period=0.25, control_period=0.02))
    slow = ChunkScheduler(SchedulerConfig(action_period=0.1, replan_period=0.25, control_period=0.05))
    ticks = np.round(np.arange(0.0, 1.0, 0.01), 6)
    for s in (fast, slow):
        assert [t for t in ticks if s.replan_due(t)] == [0.0, 0.25, 0.5, 0.75]
        s.add(0.0, ramp(), now=0.0)
    _, t_fast, q_fast = fast.trajectory(now=0.0, horizon_s=0.4)
    _, t_slow, _ = slow.trajectory(now=0.0, horizon_s=0.4)
    np.testing.assert_allclose(np.diff(t_fast), 0.02)  # output points at the control period
    np.testing.assert_allclose(np.diff(t_slow), 0.05)
    np.testing.assert_allclose(q_fast[:, 0], t_fast / 0.1, atol=1e-9)  # interpolated between actions


def test_trajectory_starts_on_the_chunk_grid_and_ends_with_the_plan() -> None:
    s = sched(blend_s=0.0)
    s.add(10.0, ramp(k=5), now=10.03)
    t_first, times, q = s.trajectory(now=10.03)
    assert t_first == pytest.approx(10.1) and len(times) == 4  # 10.1 .. 10.4
    np.testing.assert_allclose(q[:, 0], [1, 2, 3, 4])
    t_first, times, q = s.trajectory(now=11.0)  # the plan has ended: hold its last action
    assert len(times) == 1 and q[0, 0] == 4.0


def test_reset_empties_and_bad_input_is_refused() -> None:
    s = sched()
    with pytest.raises(SchedulerEmpty, match="no action chunk yet"):
        s.command(0.0)
    s.add(0.0, ramp(), now=0.0)
    s.reset()
    assert not s.has_plan and s.replan_due(5.0)
    with pytest.raises(ConfigError, match="modes: ensemble, switch"):
        SchedulerConfig(action_period=0.1, replan_period=0.1, mode="blend")
    with pytest.raises(Exception, match="finite"):
        s.add(0.0, np.full((3, 2), np.nan), now=0.0)
