"""Wilson score intervals, checked against published values."""

import pytest

from tether.stats import wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(8, 10, 0.4902, 0.9433), (50, 50, 0.9287, 1.0), (0, 20, 0.0, 0.1611), (19, 20, 0.7639, 0.9911)],
)
def test_wilson_interval_matches_reference_values(k, n, lo, hi) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_interval_contains_the_estimate_and_rejects_nonsense() -> None:
    lo, hi = wilson_interval(3, 7)
    assert lo < 3 / 7 < hi
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_a_histogram_gives_percentiles_to_within_one_bin_in_constant_memory() -> None:
    import numpy as np

    from tether.stats import Histogram

    values = np.random.default_rng(0).exponential(5.0, size=100_000)
    h = Histogram(width=0.05, limit=100.0)
    for v in values:
        h.add(v)
    for q in (50, 99):
        assert abs(h.percentile(q) - np.percentile(values, q)) <= 0.05
    h.add(1e6)  # beyond the limit: counted in the last bin, never an error
    assert h.count == 100_001 and Histogram(0.1, 1.0).percentile(50) != Histogram(0.1, 1.0).percentile(50)  # NaN
