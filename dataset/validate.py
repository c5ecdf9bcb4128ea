"""Check every invariant of a written dataset, and summarise one.

``validate(root)`` reads the files back with plain pyarrow and PyAV (decoding every video frame)
and returns a list of problems, empty when the dataset is sound. ``quick=True`` reads frame
times from the mp4 packets without decoding them: every check but the pixel means, in a
fraction of the time. ``info(root)`` is a short human summary. Both say so when tether's own
per-episode columns are missing (see :mod:`tether.dataset.layout`), never assume a value.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from tether.errors import DatasetLayoutError
from tether.dataset import stats as st
from tether.dataset.layout import (
    CONTROL_SOURCES,
    PHASES,
    TETHER_COLUMNS,
    TMP_SUFFIX,
    Layout,
    episode_ranges,
    lacking,
    read_episodes,
    read_info,
)
from tether.teleop.recording.mcap_repair import bags, needs_repair

TIME_TOLERANCE_S = 1e-4  # LeRobot's default tolerance_s between queried and decoded timestamps
IMAGE_MEAN_TOLERANCE = 0.05  # H.264 at crf 23 moves channel means by far less than this


def intervention_frames(layout: Layout) -> dict[int, int] | None:
    """Frames labelled as interventions per episode, from the data's per-frame column (which LeRobot's
    tools keep, unlike our per-episode count); None when the data has no such column."""
    counts: Counter[int] = Counter()
    for path in sorted((layout.root / "data").glob("chunk-*/file-*.parquet")):
        if "intervention" not in pq.read_schema(path).names:
            return None
        table = pq.read_table(path, columns=["episode_index", "intervention"])
        episode = table.column("episode_index").to_numpy()
        labelled = table.column("intervention").to_numpy(zero_copy_only=False).astype(bool)
        for index, n in zip(*np.unique(episode[labelled], return_counts=True)):
            counts[int(index)] += int(n)
    return dict(counts)


def read_tasks(layout: Layout) -> list[str]:
    if not layout.tasks_path.is_file():
        return []
    t = pq.read_table(layout.tasks_path)
    by_index = dict(zip(t.column("task_index").to_pylist(), t.column("task").to_pylist()))
    return [by_index[i] for i in sorted(by_index)]


class _Decoded:
    """Every frame of one mp4: its time in seconds and (when decoded) per-channel mean in [0, 1]."""

    def __init__(self, path: Path, pixels: bool = True) -> None:
        times, means = [], []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.time_base is not None
            frames = container.decode(stream) if pixels else container.demux(stream)
            for frame in frames:
                if frame.pts is None:  # also the demuxer's empty flush packet
                    continue
                times.append(float(frame.pts * stream.time_base))
                if isinstance(frame, av.VideoFrame):
                    means.append(frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0) / 255.0)
        self.times = np.sort(np.array(times))  # packets come in decode order
        self.means = np.array(means).reshape(-1, 3) if pixels else None


class Validator:
    def __init__(self, root: Path, quick: bool = False, progress: bool = False) -> None:
        self.layout = Layout(root)
        self.quick, self.progress = quick, progress
        self.problems: list[str] = []
        self.info: dict[str, Any] = {}
        self.episodes: list[dict[str, Any]] = []
        self.tasks: list[str] = []
        self.data: dict[tuple[int, int], pa.Table] = {}
        self.videos: dict[Path, _Decoded | None] = {}

    def run(self) -> list[str]:
        try:
            self.info = read_info(self.layout.root)
        except (DatasetLayoutError, json.JSONDecodeError) as exc:
            return [str(exc)]
        self.fps = int(self.info["fps"])
        self.features = self.info["features"]
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self._leftovers()
        if not self._read_metadata():
            return self.problems
        self._totals()
        self._read_data()
        rows = tqdm(self.episodes, desc="validate", unit="ep", disable=not self.progress)
        episode_stats = [self._episode(row) for row in rows]
        self._unreferenced()
        self._dataset_stats([s for s in episode_stats if s is not None])
        return self.problems

    def _problem(self, text: str) -> None:
        self.problems.append(text)

    # -- metadata

    def _leftovers(self) -> None:
        """What a crash left for ``tether dataset recover``: the fix is named with the dataset's path."""
        fix = f"run `tether dataset recover {self.layout.root}`"
        if self.layout.journal_path.exists():
            self._problem(f"meta/commit.json: a commit was interrupted; {fix}")
        staged = sorted(self.layout.staging_root.glob("episode_*")) if self.layout.staging_root.is_dir() else []
        for path in staged:
            self._problem(f"{path.relative_to(self.layout.root)}: uncommitted episode; {fix}")
        for tmp in self.layout.root.rglob("*" + TMP_SUFFIX):
            if self.layout.staging_root not in tmp.parents:
                self._problem(f"{tmp.relative_to(self.layout.root)}: leftover of an unfinished commit; {fix}")
        for bag in bags(self.layout.raw_logs):
            if needs_repair(bag):
                self._problem(f"raw log {bag.relative_to(self.layout.root.parent)}: unreadable, its recording never "
                              f"closed it (a crash or a full disk: no metadata.yaml or MCAP footer); {fix}")

    def _read_metadata(self) -> bool:
        try:
            self.episodes = read_episodes(self.layout)
            self.tasks = read_tasks(self.layout)
        except (OSError, pa.ArrowException, KeyError) as exc:
            self._problem(f"metadata unreadable: {exc}")
            return False
        indices = [int(r["episode_index"]) for r in self.episodes]
        if indices != list(range(len(indices))):
            self._problem(f"meta/episodes: episode_index {indices} is not 0..{len(indices) - 1}")
            return False
        self._missing_columns()
        return True

    def _missing_columns(self) -> None:
        """tether's per-episode columns, which a tool that knows only LeRobot's may have dropped."""
        by_episodes: dict[tuple[int, ...], list[str]] = {}
        for column in TETHER_COLUMNS:
            missing = tuple(lacking(self.episodes, column))
            if missing:
                by_episodes.setdefault(missing, []).append(column)
        for missing, columns in by_episodes.items():
            self._problem(f"meta/episodes: episode(s) {episode_ranges(list(missing))} have no {', '.join(columns)} "
                          "column (a tool that keeps only LeRobot's columns drops them, e.g. lerobot's "
                          "delete_episodes): their outcome is unknown, and training on successful episodes only "
                          "refuses them (train with --include-failed)")

    def _totals(self) -> None:
        frames = sum(int(r["length"]) for r in self.episodes)
        checks = [
            ("total_episodes", len(self.episodes)),
            ("total_frames", frames),
            ("total_tasks", len(self.tasks)),
        ]
        for key, actual in checks:
            if int(self.info.get(key, -1)) != actual:
                self._problem(f"info.json {key}={self.info.get(key)} but the files hold {actual}")
        expected_from = 0
        for r in self.episodes:
            if (r["dataset_from_index"], r["dataset_to_index"]) != (expected_from, expected_from + r["length"]):
                self._problem(
                    f"episode {r['episode_index']}: dataset_from/to_index {r['dataset_from_index']}..{r['dataset_to_index']}"
                    f", expected {expected_from}..{expected_from + r['length']}"
                )
            expected_from += int(r["length"])
        if self.episodes and not self.layout.stats_path.is_file():
            self._problem("meta/stats.json is missing")

    # -- data and videos

    def _read_data(self) -> None:
        for path in sorted((self.layout.root / "data").glob("chunk-*/file-*.parquet")):
            chunk, file = int(path.parent.name[6:]), int(path.stem[5:])
            try:
                self.data[(chunk, file)] = pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                self._problem(f"{path.relative_to(self.layout.root)}: unreadable parquet ({exc})")

    def _episode(self, row: dict[str, Any]) -> dict[str, st.Stats] | None:
        ep, n = int(row["episode_index"]), int(row["length"])
        where = f"episode {ep}"
        loc = (int(row["data/chunk_index"]), int(row["data/file_index"]))
        path = self.layout.data_path(*loc)
        if not path.is_file():
            self._problem(f"{where}: data file {path.relative_to(self.layout.root)} is missing")
            return None
        if loc not in self.data:
            return None  # already reported unreadable
        table = self.data[loc]
        mask = pc.equal(table.column("episode_index"), ep)
        rows = table.filter(mask)
        if rows.num_rows != n:
            self._problem(f"{where}: {rows.num_rows} data rows, metadata length {n}")
            return None
        self._columns(where, rows, row)
        recomputed = st.episode_stats(rows, {k: f for k, f in self.features.items() if f["dtype"] != "video"}, {})
        self._compare_stats(where, st.from_row(row), recomputed)
        for key in self.video_keys:
            self._episode_video(where, key, row)
        return st.from_row(row)

    def _columns(self, where: str, rows: pa.Table, row: dict[str, Any]) -> None:
        n, first = rows.num_rows, int(row["dataset_from_index"])
        col = lambda name: rows.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
        if not np.array_equal(col("index"), np.arange(first, first + n)):
            self._problem(f"{where}: index is not {first}..{first + n - 1}")
        if not np.array_equal(col("frame_index"), np.arange(n)):
            self._problem(f"{where}: frame_index is not 0..{n - 1}")
        if not np.allclose(col("timestamp"), np.arange(n) / self.fps, atol=TIME_TOLERANCE_S, rtol=0):
            self._problem(f"{where}: timestamp is not frame_index / fps ({self.fps})")
        if np.any(np.diff(col("capture_time_ns")) <= 0):
            self._problem(f"{where}: capture_time_ns is not strictly increasing")
        tasks = set(col("task_index").tolist())
        names = {self.tasks[t] if 0 <= t < len(self.tasks) else f"<bad task_index {t}>" for t in tasks}
        if names != set(row["tasks"]):
            self._problem(f"{where}: data tasks {sorted(names)} but metadata tasks {row['tasks']}")
        for name, valid in (("control_source", CONTROL_SOURCES), ("phase", PHASES)):
            bad = set(col(name).tolist()) - set(valid)
            if bad:
                self._problem(f"{where}: {name} values {sorted(bad)} not in {', '.join(valid)}")
        for name in ("observation.state", "action"):
            values = st.column_array(rows, name)
            if not np.isfinite(values).all():
                self._problem(f"{where}: {name} has non-finite values")
        self._our_columns(where, rows, row)

    def _our_columns(self, where: str, rows: pa.Table, row: dict[str, Any]) -> None:
        """The per-episode columns tether derives from the frames agree with them (where present)."""
        col = lambda name: rows.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
        derived = {"intervention_frames": int(np.count_nonzero(col("intervention"))),
                   "capture_start_ns": int(col("capture_time_ns")[0]), "capture_end_ns": int(col("capture_time_ns")[-1])}
        for name, value in derived.items():
            if name in row and row[name] != value:
                self._problem(f"{where}: {name} is {row[name]} but the frames give {value}")

    def _decoded(self, path: Path) -> _Decoded | None:
        if path not in self.videos:
            try:
                self.videos[path] = _Decoded(path, pixels=not self.quick)
            except (OSError, av.FFmpegError, IndexError) as exc:
                self._problem(f"{path.relative_to(self.layout.root)}: undecodable video ({exc})")
                self.videos[path] = None
        return self.videos[path]

    def _episode_video(self, where: str, key: str, row: dict[str, Any]) -> None:
        path = self.layout.video_path(key, int(row[f"videos/{key}/chunk_index"]), int(row[f"videos/{key}/file_index"]))
        if not path.is_file():
            self._problem(f"{where}: video {path.relative_to(self.layout.root)} is missing")
            return
        decoded = self._decoded(path)
        if decoded is None:
            return
        start, end, n = row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"], int(row["length"])
        inside = (decoded.times >= start - TIME_TOLERANCE_S) & (decoded.times < end - TIME_TOLERANCE_S)
        if inside.sum() != n:
            self._problem(f"{where}: {key} decodes to {int(inside.sum())} frames in [{start:.4f}, {end:.4f}) s, data has {n}")
            return
        if not np.allclose(decoded.times[inside], start + np.arange(n) / self.fps, atol=TIME_TOLERANCE_S, rtol=0):
            self._problem(f"{where}: {key} frame times are not from_timestamp + frame_index / fps")
        if decoded.means is None:
            return
        stored = st.from_row(row).get(key, {})
        mean = stored.get("mean", np.zeros(0)).reshape(-1)
        if mean.shape != (3,) or np.abs(mean - decoded.means[inside].mean(axis=0)).max() > IMAGE_MEAN_TOLERANCE:
            self._problem(f"{where}: {key} stats mean {mean.round(3).tolist()} disagrees with the decoded video")

    def _unreferenced(self) -> None:
        frames_in_data = sum(t.num_rows for t in self.data.values())
        total = sum(int(r["length"]) for r in self.episodes)
        if self.data and frames_in_data != total:
            self._problem(f"data files hold {frames_in_data} rows, episodes account for {total}")
        all_index = np.sort(np.concatenate([t.column("index").to_numpy() for t in self.data.values()])) if self.data else np.array([])
        if self.data and not np.array_equal(all_index, np.arange(len(all_index))):
            self._problem("data: index column is not a permutation of 0..total_frames-1")
        for key in self.video_keys:
            per_file: Counter[Path] = Counter()
            for r in self.episodes:
                per_file[self.layout.video_path(key, int(r[f"videos/{key}/chunk_index"]), int(r[f"videos/{key}/file_index"]))] += int(r["length"])
            for path, frames in per_file.items():
                decoded = self.videos.get(path)
                if decoded is not None and len(decoded.times) != frames:
                    self._problem(f"{path.relative_to(self.layout.root)}: {len(decoded.times)} frames, episodes reference {frames}")

    # -- stats

    def _compare_stats(self, where: str, stored: dict[str, st.Stats], recomputed: dict[str, st.Stats]) -> None:
        for key, fresh in recomputed.items():
            for stat, value in fresh.items():
                have = stored.get(key, {}).get(stat)
                if have is None or have.shape != value.shape or not np.allclose(have, value, rtol=1e-5, atol=1e-6):
                    self._problem(f"{where}: stats/{key}/{stat} does not match the data")
                    return

    def _dataset_stats(self, per_episode: list[dict[str, st.Stats]]) -> None:
        if not per_episode or not self.layout.stats_path.is_file():
            return
        stored = st.from_json(json.loads(self.layout.stats_path.read_text()))
        expected = st.aggregate(per_episode) if len(per_episode) > 1 else per_episode[0]
        for key, value in expected.items():
            for stat, arr in value.items():
                have = stored.get(key, {}).get(stat)
                if have is None or have.shape != arr.shape or not np.allclose(have, arr, rtol=1e-5, atol=1e-6):
                    self._problem(f"meta/stats.json: {key}/{stat} is not the aggregate of the episode stats")
                    return


def validate(root: Path | str, *, quick: bool = False, progress: bool = False) -> list[str]:
    """Every broken invariant of the dataset at ``root``, as readable sentences; [] when sound.

    ``quick`` skips decoding: frame counts and times come from the mp4 packets, and the
    image means in the stats are not compared with the pixels.
    """
    return Validator(Path(root), quick, progress).run()


def info(root: Path | str) -> str:
    """Episodes, frames, duration, cameras, tasks, outcomes and interventions in a few lines.

    A column tether needs that is missing (see :mod:`tether.dataset.layout`) reads
    "unknown (column missing)", never as zero.
    """
    layout = Layout(Path(root))
    meta = read_info(layout.root)
    episodes = read_episodes(layout)
    fps, frames = int(meta["fps"]), int(meta["total_frames"])
    cams = [k.split(".")[-1] + f" {ft['shape'][1]}x{ft['shape'][0]}" for k, ft in meta["features"].items() if ft["dtype"] == "video"]
    return "\n".join(
        [
            f"dataset {layout.root} (LeRobot {meta['codebase_version']}, robot {meta.get('robot_type')})",
            f"episodes: {len(episodes)} ({_truncated(episodes)})",
            f"frames: {frames} at {fps} fps = {frames / fps:.1f} s",
            f"cameras: {', '.join(cams) or 'none'}",
            f"tasks: {', '.join(read_tasks(layout)) or 'none'}",
            f"success: {_success(episodes)}",
            f"interventions: {_interventions(intervention_frames(layout), frames)}",
        ]
    )


UNKNOWN = "unknown (column missing)"


def _unknown_part(rows: list[dict[str, Any]], column: str) -> str:
    missing = lacking(rows, column)
    return f"; {UNKNOWN} for episode(s) {episode_ranges(missing)}" if missing else ""


def _truncated(rows: list[dict[str, Any]]) -> str:
    if rows and len(lacking(rows, "truncated")) == len(rows):
        return f"truncated: {UNKNOWN}"
    n = sum(1 for r in rows if r.get("truncated"))
    return f"{n} truncated by a crash or an aborted session" + _unknown_part(rows, "truncated")


def _success(rows: list[dict[str, Any]]) -> str:
    if rows and len(lacking(rows, "success")) == len(rows):
        return UNKNOWN
    known = [bool(r["success"]) for r in rows if r.get("success") is not None]
    rate = f"{sum(known)}/{len(known)} ({100 * sum(known) / len(known):.1f}%)" if known else "n/a"
    return f"{rate} of episodes with a known outcome" + _unknown_part(rows, "success")


def _interventions(per_episode: dict[int, int] | None, frames: int) -> str:
    if per_episode is None:
        return f"{UNKNOWN}: the data has no per-frame 'intervention' column"
    total = sum(per_episode.values())
    share = f"{100 * total / frames:.1f}%" if frames else "n/a"
    return f"{total} frames ({share}) in {sum(1 for n in per_episode.values() if n)} episode(s)"
