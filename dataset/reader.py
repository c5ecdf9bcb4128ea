"""Training frames from a local LeRobotDataset v3: parquet tables plus mp4 segments, held in memory.

Small datasets (tens of episodes at 96x96) fit in RAM as uint8, so sampling a batch
is indexing, with no loader processes on a 2-core machine. Any LeRobot v3.0 folder
works: paths come from ``meta/info.json``'s templates, episodes from
``meta/episodes/*/*.parquet`` and their video segments from the from/to timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tether.errors import DatasetError, DatasetLayoutError
from tether.dataset import layout
from tether.dataset.layout import read_episodes, require

STATE = "observation.state"
ACTION = "action"
IMAGE_PREFIX = "observation.images."
CONTROL_SOURCE = "control_source"
# A frame whose command came from a learned policy is a rollout, not a demonstration: its action is
# what is being corrected, so training never aims at it (HG-DAgger keeps only the corrections).
NOT_DEMONSTRATED = "policy"


@dataclass
class Episode:
    index: int
    success: bool | None
    state: np.ndarray  # [T, D] float32
    action: np.ndarray  # [T, D] float32
    images: dict[str, np.ndarray]  # camera -> [T, H, W, 3] uint8
    targets: np.ndarray  # [T] bool: frames whose actions training may aim at (demonstrated ones)

    def __len__(self) -> int:
        return len(self.state)


@dataclass
class DemoSet:
    """Episodes plus what a policy needs to know about them."""

    root: Path
    fps: float
    robot: str
    joint_names: list[str]
    cameras: list[str]
    image_size: tuple[int, int]  # (H, W) after any resize
    episodes: list[Episode]

    @property
    def frames(self) -> int:
        return sum(len(e) for e in self.episodes)

    @property
    def demonstrated_frames(self) -> int:
        return sum(int(e.targets.sum()) for e in self.episodes)


def read_info(root: Path) -> dict[str, Any]:
    """The dataset's info.json (the writer's own check of the v3.0 layout), with the features training needs."""
    info = layout.read_info(root)
    for key in (STATE, ACTION):
        if key not in info["features"]:
            raise DatasetLayoutError(f"{root}: no '{key}' feature; features: {', '.join(info['features'])}")
    return info


def episode_rows(root: Path) -> list[dict[str, Any]]:
    rows = read_episodes(layout.Layout(root))
    if not rows:
        raise DatasetLayoutError(f"{root}: no meta/episodes/*/*.parquet; run `tether dataset recover {root}`")
    return sorted(rows, key=lambda r: r["episode_index"])


def load_demos(root: Path | str, *, image_size: tuple[int, int] | None = None, only_success: bool = True,
               episodes: list[int] | None = None, progress: Callable[[int, int], None] | None = None) -> DemoSet:
    """Decode the chosen episodes; ``image_size`` (H, W) resizes frames while decoding.

    With ``only_success``, episodes recorded as failures are left out (unknown outcomes stay); a
    dataset whose episodes lost their ``success`` column (a tool that keeps only LeRobot's columns)
    is then refused rather than read as all-unknown. Episodes in which a policy drove throughout
    (no demonstrated action) are left out too.
    """
    root = Path(root)
    info = read_info(root)
    cameras = [k[len(IMAGE_PREFIX):] for k, f in info["features"].items()
               if k.startswith(IMAGE_PREFIX) and f["dtype"] == "video"]
    if not cameras:
        raise DatasetError(f"{root}: no video cameras; policies here need image observations")
    h, w = info["features"][IMAGE_PREFIX + cameras[0]]["shape"][:2]
    size = image_size or (int(h), int(w))
    all_rows = episode_rows(root)
    rows = _chosen(root, all_rows, only_success, episodes)
    if not rows:
        raise DatasetError(f"{root}: no episodes left to train on (only_success={only_success}, episodes={episodes})")
    tables: dict[tuple[int, int], Any] = {}
    # Data files hold consecutive global indices; a file's first episode says where it starts.
    file_starts: dict[tuple[int, int], int] = {}
    for r in all_rows:
        key = (r["data/chunk_index"], r["data/file_index"])
        file_starts[key] = min(file_starts.get(key, r["dataset_from_index"]), r["dataset_from_index"])
    videos = _VideoCache(size, _spans(root, info, rows, cameras))
    loaded = []
    for i, row in enumerate(rows):
        episode = _episode(root, info, row, cameras, tables, file_starts, videos)
        if episode is not None:
            loaded.append(episode)
        if progress is not None:
            progress(i + 1, len(rows))
    if not loaded:
        raise DatasetError(f"{root}: every chosen episode is a policy's own rollout (control_source=policy); "
                           "no demonstrated actions to train on")
    names = list(info["features"][STATE]["names"] or [])
    return DemoSet(root, float(info["fps"]), str(info.get("robot_type") or ""), names, cameras, size, loaded)


def _spans(root: Path, info: dict[str, Any], rows: list[dict[str, Any]],
           cameras: list[str]) -> dict[Path, tuple[float, float]]:
    spans: dict[Path, tuple[float, float]] = {}
    for row in rows:
        for cam in cameras:
            path = _video_path(root, info, row, IMAGE_PREFIX + cam)
            lo, hi = row[f"videos/{IMAGE_PREFIX + cam}/from_timestamp"], row[f"videos/{IMAGE_PREFIX + cam}/to_timestamp"]
            old = spans.get(path, (lo, hi))
            spans[path] = (min(old[0], lo), max(old[1], hi))
    return spans


def _video_path(root: Path, info: dict[str, Any], row: dict[str, Any], vkey: str) -> Path:
    return root / info["video_path"].format(video_key=vkey, chunk_index=row[f"videos/{vkey}/chunk_index"],
                                            file_index=row[f"videos/{vkey}/file_index"])


def _chosen(root: Path, rows: list[dict[str, Any]], only_success: bool,
            episodes: list[int] | None) -> list[dict[str, Any]]:
    rows = [r for r in rows if episodes is None or r["episode_index"] in episodes]
    if not only_success:
        return rows
    require(root, rows, "success", "the failed episodes cannot be told apart: train on every episode with "
            "--include-failed (only_success=False), or restore the column")
    return [r for r in rows if r["success"] is not False]


def _episode(root: Path, info: dict[str, Any], row: dict[str, Any], cameras: list[str],
             tables: dict[tuple[int, int], Any],
             file_starts: dict[tuple[int, int], int], videos: _VideoCache) -> Episode | None:
    """The episode's frames; None (nothing decoded) for a policy's rollout that nobody corrected."""
    key = (row["data/chunk_index"], row["data/file_index"])
    if key not in tables:
        path = root / info["data_path"].format(chunk_index=key[0], file_index=key[1])
        columns = ["episode_index", "frame_index", STATE, ACTION]
        if CONTROL_SOURCE in pq.read_schema(path).names:  # ours; other LeRobot datasets lack it
            columns.append(CONTROL_SOURCE)
        tables[key] = pq.read_table(path, columns=columns)
    table = tables[key]
    start, stop = row["dataset_from_index"], row["dataset_to_index"]
    part = table.slice(start - file_starts[key], stop - start)
    state = np.asarray(part.column(STATE).to_pylist(), dtype=np.float32)
    action = np.asarray(part.column(ACTION).to_pylist(), dtype=np.float32)
    targets = np.ones(len(state), bool)
    if CONTROL_SOURCE in part.column_names:
        targets = pc.not_equal(part.column(CONTROL_SOURCE), NOT_DEMONSTRATED).to_numpy(zero_copy_only=False)
    if not targets.any():
        return None
    images = {cam: _segment(root, info, row, cam, len(state), videos) for cam in cameras}
    return Episode(int(row["episode_index"]), row.get("success"), state, action, images, targets)


class _VideoCache:
    """Whole video files decoded once (sequential decoding; seeking per episode re-decodes each GOP)."""

    def __init__(self, size: tuple[int, int], spans: dict[Path, tuple[float, float]]) -> None:
        self.size, self.spans = size, spans  # spans: the (from, to) seconds needed of each file
        self._files: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def frames(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(times in s, frames [N, H, W, 3] uint8) of one mp4."""
        if path not in self._files:
            times, frames = [], []
            lo, hi = self.spans.get(path, (0.0, float("inf")))
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                if lo > 1.0 and stream.time_base is not None:
                    container.seek(int((lo - 1.0) / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    t = float(frame.time) if frame.time is not None else np.nan
                    if t > hi:
                        break
                    times.append(t)
                    frames.append(frame.to_ndarray(format="rgb24", width=self.size[1], height=self.size[0]))
            self._files[path] = (np.asarray(times), np.stack(frames) if frames else np.empty((0, *self.size, 3)))
        return self._files[path]


def _segment(root: Path, info: dict[str, Any], row: dict[str, Any], cam: str, frames: int,
             videos: _VideoCache) -> np.ndarray:
    vkey = IMAGE_PREFIX + cam
    path = _video_path(root, info, row, vkey)
    start = float(row[f"videos/{vkey}/from_timestamp"])
    times, decoded = videos.frames(path)
    first = int(np.searchsorted(times, start - 0.5 / float(info["fps"])))
    segment = decoded[first:first + frames]
    if len(segment) != frames:
        raise DatasetError(f"{path}: episode {row['episode_index']} has {frames} frames but the video segment "
                           f"from {start:.3f} s holds {len(segment)}; run `tether dataset validate {root}`")
    return segment
