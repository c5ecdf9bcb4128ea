"""A loop that runs a function at a fixed rate on a thread of its own, at absolute deadlines.

    loop = PeriodicLoop(0.005, gate_tick, name="gate-stream").start()
    ...
    loop.stop()

The gate streams commands this way instead of from an executor timer, so its timing does not
depend on what else the executor serves (a burst of chunks, a slow service), and a service (the
e-stop) never waits behind a publish. A tick that comes late runs at once and the schedule moves
on to the next deadline: missed deadlines are counted, never run in a burst to catch up.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import numpy as np


class PeriodicLoop:
    def __init__(self, period: float, tick: Callable[[], None], *, name: str,
                 on_start: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.period = period
        self._tick, self._on_start, self._clock = tick, on_start, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.missed = 0  # deadlines that passed while the previous tick was still running (or asleep late)
        self.error: BaseException | None = None  # what ended the loop, when ``tick`` raised
        self._periods: collections.deque[float] = collections.deque(maxlen=2000)  # ms between tick starts

    def start(self) -> PeriodicLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def period_ms(self) -> dict[str, float]:
        """Median and p99 of recent periods between tick starts, in ms."""
        periods = np.asarray(self._periods)
        if periods.size == 0:
            return {}
        return {"p50": float(np.percentile(periods, 50)), "p99": float(np.percentile(periods, 99))}

    def _run(self) -> None:
        self._on_start()  # on this thread: e.g. its real-time priority
        deadline, last = self._clock(), None
        try:
            while not self._stop.is_set():
                now = self._clock()
                if last is not None:
                    self._periods.append((now - last) * 1e3)
                last = now
                self._tick()
                deadline += self.period
                behind = self._clock() - deadline
                if behind >= self.period:  # whole periods gone: drop those deadlines instead of bunching ticks
                    skipped = int(behind // self.period)
                    self.missed += skipped
                    deadline += skipped * self.period
                self._stop.wait(max(0.0, deadline - self._clock()))  # a late tick runs at once
        except Exception as exc:  # noqa: BLE001 - kept for the owner, which must fail loudly
            self.error = exc


class SimTimeLoop:
    """The same fixed-rate ticks, driven by a simulated clock instead of a thread and the wall clock.

    ``advance(t)`` runs every tick whose deadline has come, each at its exact deadline, so the
    ticks of a ``use_sim_time`` graph are evenly spaced in sim time however the clock jumps
    (the twin publishes /clock in steps of its own period). Nothing is skipped: a sim clock never
    runs ahead of the work it waits for. Same ``missed``/``period_ms``/``stop`` as PeriodicLoop.
    """

    def __init__(self, period: float, tick: Callable[[float], None]) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.period, self._tick = period, tick
        self._next: float | None = None
        self._stopped = False
        self.missed = 0
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return not self._stopped

    def advance(self, now: float) -> None:
        """Sim time is ``now``: run the ticks due up to it."""
        if self._stopped:
            return
        if self._next is None or now < self._next - 10 * self.period:  # the first /clock, or a reset back in time
            self._next = now
        while self._next <= now + 1e-12:
            self._tick(self._next)
            self._next += self.period

    def period_ms(self) -> dict[str, float]:
        return {"p50": self.period * 1e3, "p99": self.period * 1e3}

    def stop(self, timeout: float = 0.0) -> None:
        self._stopped = True
