"""Small statistics used by every evaluation report."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, {n}]")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class Histogram:
    """Percentiles of a long stream in constant memory and time: fixed-width bins up to ``limit``.

    The gate reports its latency percentiles every second for runs of any length; sorting every
    sample it ever saw took it milliseconds under the lock its command stream needs.
    """

    def __init__(self, width: float, limit: float) -> None:
        if width <= 0 or limit <= width:
            raise ValueError(f"need 0 < width < limit, got width {width}, limit {limit}")
        self.width = width
        self._counts = np.zeros(int(math.ceil(limit / width)) + 1, dtype=np.int64)  # the last bin: >= limit
        self.count = 0

    def add(self, value: float) -> None:
        self._counts[min(len(self._counts) - 1, max(0, int(value / self.width)))] += 1
        self.count += 1

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100), to within one bin width (the bin's upper edge); NaN when empty."""
        if self.count == 0:
            return float("nan")
        rank = max(1.0, q / 100.0 * self.count)
        return float(np.searchsorted(np.cumsum(self._counts), rank) + 1) * self.width
