"""A fixed-rate loop on its own thread: late ticks run once, missed deadlines are counted, never bunched."""

from __future__ import annotations

import time

import pytest

from tether.periodic import PeriodicLoop


def test_a_stalled_tick_skips_the_deadlines_it_missed_instead_of_bunching_them() -> None:
    starts: list[float] = []

    def tick() -> None:
        starts.append(time.monotonic())
        if len(starts) == 5:
            time.sleep(0.1)  # a stall of 20 periods

    loop = PeriodicLoop(0.005, tick, name="test").start()
    time.sleep(0.3)
    loop.stop()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[4] >= 0.1  # the stall
    # After it: back on the 5 ms grid, not a burst of 20 catch-up ticks. Counted, not timed per gap: on a
    # busy machine a late tick may fall just before the next deadline, which is still the grid.
    resumed = starts[5]
    assert sum(resumed <= t < resumed + 0.05 for t in starts) <= 11
    assert loop.missed >= 19 and not loop.running


def test_a_failing_tick_ends_the_loop_and_keeps_the_error() -> None:
    def tick() -> None:
        raise RuntimeError("publisher gone")

    loop = PeriodicLoop(0.005, tick, name="test").start()
    time.sleep(0.05)
    assert not loop.running and isinstance(loop.error, RuntimeError)


def test_on_start_runs_on_the_loop_thread() -> None:
    import threading

    seen: list[int] = []
    loop = PeriodicLoop(0.01, lambda: None, name="test", on_start=lambda: seen.append(threading.get_native_id()))
    loop.start()
    time.sleep(0.05)
    loop.stop()
    assert seen and seen[0] != threading.get_native_id()
    with pytest.raises(ValueError, match="positive"):
        PeriodicLoop(0.0, lambda: None, name="bad")


def test_a_sim_clock_runs_every_tick_at_its_exact_deadline_however_it_jumps() -> None:
    from tether.periodic import SimTimeLoop

    stamps: list[float] = []
    loop = SimTimeLoop(0.005, stamps.append)
    for now in (10.000, 10.004, 10.008, 10.012, 10.030):  # /clock in the twin's 4 ms steps, then a 18 ms jump
        loop.advance(now)
    assert [round((t - 10.0) * 1e3, 6) for t in stamps] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    loop.stop()
    loop.advance(11.0)
    assert len(stamps) == 7 and not loop.running
