"""Per-episode and dataset statistics in LeRobot's shape.

LeRobot keeps, per feature, ``min max mean std count q01 q10 q50 q90 q99``: vectors reduce over
frames (shape ``(d,)``, ``(1,)`` for scalars), images reduce per channel to ``(3, 1, 1)`` in
[0, 1]. Episode stats go into the episodes parquet as ``stats/<feature>/<stat>`` columns and
are merged into ``meta/stats.json`` (count-weighted mean/variance, min/max envelope, and for
quantiles the conservative envelope LeRobot uses).

Image stats come from a 256-bin histogram per channel of a strided pixel sample: histograms add
up across ~1 s staging segments, so the raw frames never have to be kept for the commit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
# About 64 sampled pixels on the short side; LeRobot also downsamples images before stats.
_SAMPLE_SIDE = 64

Stats = dict[str, np.ndarray]


def numeric_stats(values: np.ndarray) -> Stats:
    """Stats over frames of an (n,) or (n, d) array; scalars keep a (1,) shape like LeRobot."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out: Stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([x.shape[0]]),
    }
    for key, q in zip(QUANTILE_KEYS, QUANTILES):
        out[key] = np.quantile(x, q, axis=0)
    return out


class ImageHistogram:
    """Running per-channel histogram of uint8 RGB frames (a strided sample of each frame)."""

    def __init__(self, counts: np.ndarray | None = None, frames: int = 0) -> None:
        self.counts = np.zeros((3, 256), np.int64) if counts is None else np.asarray(counts, np.int64)
        self.frames = frames

    def add(self, rgb: np.ndarray) -> None:
        step = max(1, min(rgb.shape[:2]) // _SAMPLE_SIDE)
        sample = rgb[::step, ::step]
        for c in range(3):
            self.counts[c] += np.bincount(sample[..., c].ravel(), minlength=256)
        self.frames += 1

    def merge(self, other: ImageHistogram) -> None:
        self.counts += other.counts
        self.frames += other.frames

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "frames": self.frames}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageHistogram:
        return cls(np.array(obj["counts"], np.int64), int(obj["frames"]))

    def stats(self) -> Stats:
        """Per-channel stats in [0, 1], shaped (3, 1, 1); count is the number of frames."""
        values = np.arange(256, dtype=np.float64) / 255.0
        total = self.counts.sum(axis=1)
        mean = (self.counts * values).sum(axis=1) / total
        var = (self.counts * (values - mean[:, None]) ** 2).sum(axis=1) / total
        cum = np.cumsum(self.counts, axis=1)
        nonzero = self.counts > 0
        out: Stats = {
            "min": values[nonzero.argmax(axis=1)],
            "max": values[255 - nonzero[:, ::-1].argmax(axis=1)],
            "mean": mean,
            "std": np.sqrt(var),
        }
        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            out[key] = values[(cum >= q * total[:, None]).argmax(axis=1)]
        out = {k: v.reshape(3, 1, 1) for k, v in out.items()}
        out["count"] = np.array([self.frames])
        return out


def episode_stats(table: pa.Table, features: dict[str, dict[str, Any]], images: dict[str, ImageHistogram]) -> dict[str, Stats]:
    """Stats of one episode's data table (every numeric or bool column) and its camera histograms."""
    out: dict[str, Stats] = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            out[key] = images[key].stats()
        elif ft["dtype"] != "string":
            out[key] = numeric_stats(column_array(table, key))
    return out


def column_array(table: pa.Table, key: str) -> np.ndarray:
    """A data column as a numpy array: (n,) for scalars, (n, d) for fixed-size lists."""
    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)


def aggregate(stats_list: list[dict[str, Stats]]) -> dict[str, Stats]:
    """Merge per-episode stats the way LeRobot's ``aggregate_stats`` does."""
    keys = {k for s in stats_list for k in s}
    return {k: _aggregate_feature([s[k] for s in stats_list if k in s]) for k in keys}


def _aggregate_feature(items: list[Stats]) -> Stats:
    means = np.stack([s["mean"] for s in items])
    variances = np.stack([s["std"] ** 2 for s in items])
    counts = np.stack([s["count"] for s in items]).astype(np.float64)
    total = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = counts[..., None]
    mean = (means * counts).sum(axis=0) / total  # total has shape (1,): broadcasts to any stat shape
    var = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
    out: Stats = {
        "min": np.min(np.stack([s["min"] for s in items]), axis=0),
        "max": np.max(np.stack([s["max"] for s in items]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total.sum())]),
    }
    for key in QUANTILE_KEYS:
        stacked = np.stack([s[key] for s in items])
        # Exact global quantiles cannot be rebuilt from per-episode ones: keep an envelope.
        out[key] = stacked.min(axis=0) if int(key[1:]) <= 50 else stacked.max(axis=0)
    return out


def to_json(stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in ft.items()} for k, ft in sorted(stats.items())}


def from_json(obj: dict[str, dict[str, Any]]) -> dict[str, Stats]:
    return {k: {s: np.atleast_1d(np.asarray(v)) for s, v in ft.items()} for k, ft in obj.items()}


def to_columns(stats: dict[str, Stats]) -> dict[str, Any]:
    """Episode-row columns ``stats/<feature>/<stat>`` (LeRobot flattens with '/')."""
    return {f"stats/{k}/{s}": np.asarray(v).tolist() for k, ft in stats.items() for s, v in ft.items()}


def from_row(row: dict[str, Any]) -> dict[str, Stats]:
    out: dict[str, Stats] = {}
    for col, value in row.items():
        if col.startswith("stats/") and value is not None:
            feature, stat = col[len("stats/"):].rsplit("/", 1)
            out.setdefault(feature, {})[stat] = np.atleast_1d(np.asarray(value))
    return out
