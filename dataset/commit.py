"""One staged episode becomes the next committed episode, all-or-nothing.

The staged segments are joined into new versions of the v3 data, video, episodes, tasks, stats and
info files, each written beside its target as ``*.commit-tmp`` and fsynced; then ``meta/commit.json``
(the journal) lists the renames, and only then are they applied. Before the journal exists a crash
rolls back (temporaries deleted, the episode is still staged); after it, ``recover`` rolls forward.
``info.json`` is replaced last, so its totals never count an episode whose files are not in place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tether.dataset import stats as st
from tether.dataset.layout import (
    Layout,
    data_schema,
    json_bytes,
    next_chunk_file,
    read_info,
    replace_durably,
    tmp_sibling,
    write_bytes_tmp,
    write_json_atomic,
)
from tether.dataset.staging import StagedEpisode
from tether.dataset.videos import concat_videos
from tether.errors import DatasetError
from tether.teleop.recording.durable import fsync_dir, fsync_file

# Called with a stage name during a commit ("prepared", "journal", "replaced <path>", "done");
# tests use it to stop a commit at a known point.
CommitHook = Callable[[str], None]
_MB = 1024 * 1024


@dataclass
class DatasetState:
    """What a commit needs to know of the committed dataset."""

    info: dict[str, Any]
    tasks: list[str]
    stats: dict[str, st.Stats] | None
    last_episode: dict[str, Any] | None

    @classmethod
    def load(cls, layout: Layout) -> DatasetState:
        info = read_info(layout.root)
        tasks: list[str] = []
        if layout.tasks_path.is_file():
            t = pq.read_table(layout.tasks_path)
            order = np.argsort(t.column("task_index").to_numpy())
            tasks = [t.column("task").to_pylist()[i] for i in order]
        stats = st.from_json(json.loads(layout.stats_path.read_text())) if layout.stats_path.is_file() else None
        last = None
        files = sorted((layout.root / "meta" / "episodes").glob("*/*.parquet"))
        if files:
            rows = pq.read_table(files[-1]).to_pylist()
            last = rows[-1] if rows else None
        return cls(info, tasks, stats, last)


def tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes a frame indexed by ``task`` (LeRobot reads it with pandas)."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def episodes_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """One meta/episodes row: LeRobot's columns, then ours (outcome, crash truncation, interventions, capture span)."""
    fields = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", pa.list_(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    fields += [f for key, ft in features.items() if ft["dtype"] == "video" for f in _video_fields(key)]
    fields += [
        pa.field("meta/episodes/chunk_index", pa.int64()),
        pa.field("meta/episodes/file_index", pa.int64()),
        # Ours: outcome, crash truncation, intervention count, real capture span.
        pa.field("success", pa.bool_()),
        pa.field("truncated", pa.bool_()),
        pa.field("intervention_frames", pa.int64()),
        pa.field("capture_start_ns", pa.int64()),
        pa.field("capture_end_ns", pa.int64()),
    ]
    return pa.schema(fields + _stats_fields(features))


def _video_fields(key: str) -> list[pa.Field]:
    return [
        pa.field(f"videos/{key}/chunk_index", pa.int64()),
        pa.field(f"videos/{key}/file_index", pa.int64()),
        pa.field(f"videos/{key}/from_timestamp", pa.float64()),
        pa.field(f"videos/{key}/to_timestamp", pa.float64()),
    ]


def _stats_fields(features: dict[str, dict[str, Any]]) -> list[pa.Field]:
    fields = []
    for key, ft in features.items():
        if ft["dtype"] == "string":
            continue
        value: pa.DataType = pa.float64()
        if ft["dtype"] == "video":
            value = pa.list_(pa.list_(value))
        for stat in st.STAT_KEYS:
            fields.append(pa.field(f"stats/{key}/{stat}", pa.list_(pa.int64() if stat == "count" else value)))
    return fields


@dataclass
class CommitResult:
    episode_index: int
    frames: int
    seconds: float


class Commit:
    """Turns one staged episode into the next committed episode, all-or-nothing."""

    def __init__(self, layout: Layout, state: DatasetState, staged: StagedEpisode, truncated: bool, hook: CommitHook | None = None) -> None:
        self.layout, self.state, self.staged, self.truncated = layout, state, staged, truncated
        self.hook = hook or (lambda stage: None)
        self.info = json.loads(json.dumps(state.info))  # a copy to edit
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.fps = int(self.info["fps"])
        self.replace: list[tuple[Path, Path]] = []

    def run(self) -> CommitResult:
        start = time.perf_counter()
        if self.staged.frames == 0:
            raise DatasetError(f"{self.staged.path}: no frames to commit")
        ep = int(self.info["total_episodes"])
        tasks, task_index = self._task(self.staged.task)
        table = self._data_table(ep, task_index)
        row, merged = self._prepare(ep, table, tasks)
        self.hook("prepared")
        apply_journal(self.layout, self._journal(ep), self.hook)
        self.state.info, self.state.tasks, self.state.stats, self.state.last_episode = self.info, tasks, merged, row
        return CommitResult(ep, table.num_rows, time.perf_counter() - start)

    def _prepare(self, ep: int, table: pa.Table, tasks: list[str]) -> tuple[dict[str, Any], dict[str, st.Stats]]:
        """Write every file of the new version beside its target; returns the episode's row and the merged stats."""
        row: dict[str, Any] = {"episode_index": ep, "tasks": [self.staged.task], "length": table.num_rows}
        row.update(self._write_data(table))
        for key in self.staged.videos:
            row.update(self._write_video(key))
        ep_stats = st.episode_stats(table, self.features, self.staged.histograms)
        row.update(self._outcome(table))
        row.update(st.to_columns(ep_stats))
        self._write_episodes(row)
        if tasks != self.state.tasks:
            self._stage(self.layout.tasks_path, _parquet_bytes(tasks_table(tasks)))
        merged = st.aggregate([self.state.stats, ep_stats]) if self.state.stats else ep_stats
        self._stage(self.layout.stats_path, json_bytes(st.to_json(merged)))
        self.info["total_episodes"] = ep + 1
        self.info["total_frames"] = int(self.info["total_frames"]) + table.num_rows
        self.info["total_tasks"] = len(tasks)
        self.info["splits"] = {"train": f"0:{ep + 1}"}
        self._stage(self.layout.info_path, json_bytes(self.info))  # last: the totals readers trust
        return row, merged

    def _journal(self, ep: int) -> dict[str, Any]:
        """The point of no return: once the journal is on disk, recover() finishes the renames it lists."""
        journal = {
            "episode_index": ep,
            "staging": str(self.staged.path.relative_to(self.layout.root)),
            "replace": [[str(t.relative_to(self.layout.root)), str(f.relative_to(self.layout.root))] for t, f in self.replace],
        }
        write_json_atomic(self.layout.journal_path, journal)
        self.hook("journal")
        return journal

    def _stage(self, final: Path, data: bytes) -> None:
        self.replace.append((write_bytes_tmp(final, data), final))

    def _task(self, task: str) -> tuple[list[str], int]:
        tasks = list(self.state.tasks)
        if task not in tasks:
            tasks.append(task)
        return tasks, tasks.index(task)

    def _data_table(self, ep: int, task_index: int) -> pa.Table:
        t = self.staged.table
        n, first = t.num_rows, int(self.info["total_frames"])
        extra = {
            "episode_index": pa.array(np.full(n, ep, np.int64)),
            "index": pa.array(np.arange(first, first + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index, np.int64)),
        }
        schema = data_schema(self.features)
        return pa.table([extra[f.name] if f.name in extra else t.column(f.name) for f in schema], schema=schema)

    def _next_location(self, prefix: str, path_of: Callable[[int, int], Path], new_bytes: int, limit_mb: float) -> tuple[int, int, bool]:
        """(chunk, file, append): keep filling the last file until it would pass the size limit."""
        last = self.state.last_episode
        if last is None or f"{prefix}/chunk_index" not in last:
            return 0, 0, False
        chunk, file = int(last[f"{prefix}/chunk_index"]), int(last[f"{prefix}/file_index"])
        current = path_of(chunk, file)
        if current.is_file() and current.stat().st_size + new_bytes < limit_mb * _MB:
            return chunk, file, True
        return (*next_chunk_file(chunk, file, int(self.info["chunks_size"])), False)

    def _write_data(self, table: pa.Table) -> dict[str, Any]:
        chunk, file, append = self._next_location("data", self.layout.data_path, table.nbytes, self.info["data_files_size_in_mb"])
        final = self.layout.data_path(chunk, file)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(final)
        # v3 packs episodes per file; parquet cannot be appended, so the file is rewritten whole,
        # one row group per episode (as LeRobot writes it), beside the old one.
        with pq.ParquetWriter(tmp, table.schema, compression="snappy") as writer:
            if append:
                old = pq.ParquetFile(final)
                for rg in range(old.num_row_groups):
                    writer.write_table(old.read_row_group(rg).cast(table.schema))
            writer.write_table(table)
        fsync_file(tmp)
        self.replace.append((tmp, final))
        first = int(self.info["total_frames"])
        return {
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": first,
            "dataset_to_index": first + table.num_rows,
        }

    def _write_video(self, key: str) -> dict[str, Any]:
        segments = self.staged.videos[key]
        new_bytes = sum(p.stat().st_size for p in segments)
        path_of = lambda c, f: self.layout.video_path(key, c, f)  # noqa: E731
        chunk, file, append = self._next_location(f"videos/{key}", path_of, new_bytes, self.info["video_files_size_in_mb"])
        final = path_of(chunk, file)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(final)
        counts = concat_videos(([final] if append else []) + segments, tmp, self.fps)
        before = counts[0] if append else 0
        added = sum(counts[1:] if append else counts)
        if added != self.staged.frames:
            raise DatasetError(f"{key}: {added} video frames staged for {self.staged.frames} rows")
        self.replace.append((tmp, final))
        return {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": before / self.fps,
            f"videos/{key}/to_timestamp": (before + added) / self.fps,
        }

    def _outcome(self, table: pa.Table) -> dict[str, Any]:
        capture = table.column("capture_time_ns").to_numpy()
        return {
            "success": self.staged.success,
            "truncated": self.truncated,
            "intervention_frames": int(np.count_nonzero(table.column("intervention").to_numpy(zero_copy_only=False))),
            "capture_start_ns": int(capture[0]),
            "capture_end_ns": int(capture[-1]),
        }

    def _write_episodes(self, row: dict[str, Any]) -> None:
        schema = episodes_schema(self.features)
        new_bytes = 64 * len(schema)  # a row is small; roll files by the data size limit like LeRobot
        chunk, file, append = self._next_location("meta/episodes", self.layout.episodes_path, new_bytes, self.info["data_files_size_in_mb"])
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = chunk, file
        final = self.layout.episodes_path(chunk, file)
        rows = pq.read_table(final).to_pylist() if append else []
        self._stage(final, _parquet_bytes(pa.Table.from_pylist(rows + [row], schema=schema)))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def apply_journal(layout: Layout, journal: dict[str, Any], hook: CommitHook | None = None) -> None:
    """Finish a journaled commit; safe to repeat after a crash at any point inside it."""
    hook = hook or (lambda stage: None)
    for tmp_rel, final_rel in journal["replace"]:
        tmp, final = layout.root / tmp_rel, layout.root / final_rel
        if tmp.exists():  # gone means this rename already happened
            replace_durably(tmp, final)
            hook(f"replaced {final_rel}")
    staging = layout.root / journal["staging"]
    if staging.exists():
        # Out of .staging before the journal goes, so a staged episode is never committed twice.
        layout.trash_root.mkdir(exist_ok=True)
        os.replace(staging, layout.trash_root / f"{staging.name}-{uuid.uuid4().hex[:8]}")
        fsync_dir(staging.parent)
    layout.journal_path.unlink()
    fsync_dir(layout.journal_path.parent)
    shutil.rmtree(layout.trash_root, ignore_errors=True)
    hook("done")
