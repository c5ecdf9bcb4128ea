"""Where things live in a LeRobotDataset v3.0 folder, what ``meta/info.json`` says, atomic file IO.

The layout follows LeRobot's v3.0 loader: ``meta/info.json`` (features, fps, path templates,
chunk settings), ``meta/stats.json``, ``meta/tasks.parquet`` (pandas index ``task``, column
``task_index``), ``meta/episodes/chunk-XXX/file-XXX.parquet`` (one row per episode),
``data/chunk-XXX/file-XXX.parquet`` (one row per frame) and
``videos/<key>/chunk-XXX/file-XXX.mp4`` (many episodes per file, located by from/to timestamps).
Our own bookkeeping lives in dot-folders the loader never globs: ``.staging/`` (the running
episode) and ``meta/commit.json`` (the journal of a commit in flight).

Tools that know only LeRobot's per-episode columns drop ours (:data:`TETHER_COLUMNS`). LeRobot's
own ``delete_episodes`` (``lerobot.datasets.dataset_tools._copy_and_reindex_episodes_metadata``,
lerobot 0.6.1) rebuilds each row from ``episode_index``, ``tasks``, ``length``, the data and video
locations (``data/*``, ``dataset_from/to_index``, ``videos/*``) and ``stats/*`` only. The
per-frame columns survive (they are declared features, which LeRobot copies), so intervention
counts are taken from the data's ``intervention`` column. What cannot be rebuilt (success,
truncated) is an error where it is needed, or shown as unknown: never a default.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tether.errors import DatasetError, DatasetLayoutError
from tether.robot_profile import RobotProfile
from tether.teleop.recording.durable import fsync_dir, fsync_file

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
IMAGE_PREFIX = "observation.images."

CONTROL_SOURCES = ("policy", "human", "expert")
PHASES = ("autonomous", "correction", "recovery")
# Suffix of every file a commit prepares; it never matches the loader's "*/*.parquet" glob.
TMP_SUFFIX = ".commit-tmp"
# Ours, beside LeRobot's columns in every meta/episodes row (see the writer's Commit).
TETHER_COLUMNS = ("success", "truncated", "intervention_frames", "capture_start_ns", "capture_end_ns")


def camera_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


def next_chunk_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The file after (chunk, file): chunks hold ``chunks_size`` files, as LeRobot rolls them."""
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


@dataclass(frozen=True)
class DatasetSpec:
    """What one frame holds: joint vectors of ``joint_names`` and one RGB image per camera."""

    fps: int
    joint_names: list[str]
    cameras: dict[str, tuple[int, int]]  # name -> (height, width)
    robot_type: str | None = None
    crf: int = 23

    def __post_init__(self) -> None:
        if not isinstance(self.fps, int) or self.fps <= 0:
            raise DatasetError(f"fps must be a positive int (LeRobot stores an int), got {self.fps!r}")
        if not self.joint_names:
            raise DatasetError("joint_names is empty; a dataset needs at least one joint")
        for name, (h, w) in self.cameras.items():
            if h <= 0 or w <= 0 or h % 2 or w % 2:
                raise DatasetError(f"camera '{name}': size {w}x{h} must be positive and even (H.264 yuv420p)")

    @classmethod
    def from_profile(
        cls,
        profile: RobotProfile,
        fps: int,
        image_size: tuple[int, int] | None = None,
        cameras: list[str] | None = None,
    ) -> DatasetSpec:
        """Joints and cameras of a robot profile; ``image_size`` (h, w) overrides every camera's size."""
        chosen = [profile.camera(c) for c in cameras] if cameras is not None else profile.cameras
        sizes = {c.name: image_size or (c.height, c.width) for c in chosen}
        return cls(fps=fps, joint_names=profile.joint_names, cameras=sizes, robot_type=profile.name)

    @property
    def video_keys(self) -> list[str]:
        return [camera_key(c) for c in self.cameras]


def build_features(spec: DatasetSpec) -> dict[str, dict[str, Any]]:
    """LeRobot feature dicts: dtype, shape, names (plus ``info`` for videos). Order = column order."""
    n = len(spec.joint_names)
    features: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": [n], "names": list(spec.joint_names)},
        "action": {"dtype": "float32", "shape": [n], "names": list(spec.joint_names)},
    }
    for name, (h, w) in spec.cameras.items():
        features[camera_key(name)] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h,
                "video.width": w,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": spec.fps,
                "video.channels": 3,
                "video.crf": spec.crf,
                "has_audio": False,
                "is_depth_map": False,
            },
        }
    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    features.update(
        timestamp=scalar("float32"),
        frame_index=scalar("int64"),
        episode_index=scalar("int64"),
        index=scalar("int64"),
        task_index=scalar("int64"),
        # Ours. LeRobot casts parquet to the declared features, so extra columns must be declared.
        capture_time_ns=scalar("int64"),
        intervention=scalar("bool"),
        control_source={**scalar("string"), "info": {"values": list(CONTROL_SOURCES)}},
        phase={**scalar("string"), "info": {"values": list(PHASES)}},
    )
    return features


def new_info(spec: DatasetSpec, chunks_size: int, data_mb: int, video_mb: int) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": spec.robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_mb,
        "video_files_size_in_mb": video_mb,
        "fps": spec.fps,
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if spec.cameras else None,
        "features": build_features(spec),
    }


def spec_from_info(info: dict[str, Any]) -> DatasetSpec:
    feats = info["features"]
    cameras = {
        key[len(IMAGE_PREFIX):]: (ft["shape"][0], ft["shape"][1])
        for key, ft in feats.items()
        if ft["dtype"] == "video"
    }
    crf = next((ft["info"].get("video.crf", 23) for ft in feats.values() if ft["dtype"] == "video"), 23)
    return DatasetSpec(info["fps"], list(feats["observation.state"]["names"]), cameras, info.get("robot_type"), crf)


def data_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """Arrow schema of the data files, as HF ``datasets`` types LeRobot's features (videos excluded)."""
    fields = []
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        scalar = pa.string() if ft["dtype"] == "string" else pa.from_numpy_dtype(ft["dtype"])
        shape = list(ft["shape"])
        fields.append(pa.field(key, scalar if shape == [1] else pa.list_(scalar, shape[0])))
    return pa.schema(fields)


@dataclass(frozen=True)
class Layout:
    """Absolute paths inside one dataset root."""

    root: Path

    @property
    def info_path(self) -> Path:
        return self.root / "meta" / "info.json"

    @property
    def stats_path(self) -> Path:
        return self.root / "meta" / "stats.json"

    @property
    def tasks_path(self) -> Path:
        return self.root / "meta" / "tasks.parquet"

    @property
    def journal_path(self) -> Path:
        return self.root / "meta" / "commit.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def staging_root(self) -> Path:
        return self.root / ".staging"

    @property
    def trash_root(self) -> Path:
        return self.root / ".trash"

    def staging_dir(self, episode_index: int) -> Path:
        return self.staging_root / f"episode_{episode_index:06d}"

    @property
    def raw_logs(self) -> Path:
        """The raw MCAP logs beside the dataset (``<root>_mcap/episode_XXXXXX/``): LeRobot's loader never sees them."""
        return self.root.parent / f"{self.root.name}_mcap"

    def raw_log(self, episode_index: int) -> Path:
        return self.raw_logs / f"episode_{episode_index:06d}"

    def episodes_path(self, chunk: int, file: int) -> Path:
        return self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)

    def data_path(self, chunk: int, file: int) -> Path:
        return self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)

    def video_path(self, key: str, chunk: int, file: int) -> Path:
        return self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)


def read_info(root: Path) -> dict[str, Any]:
    path = Layout(root).info_path
    if not path.is_file():
        raise DatasetLayoutError(f"{root}: no meta/info.json; not a dataset (create one with DatasetWriter.create)")
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{path}: not valid JSON ({exc}); not a dataset this writer can read") from exc
    if not isinstance(info, dict):
        raise DatasetLayoutError(f"{path}: not a JSON object; not a dataset this writer can read")
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetLayoutError(
            f"{path}: codebase_version {info.get('codebase_version')!r}; this writer handles {CODEBASE_VERSION!r} only"
        )
    return info


class MissingEpisodeColumnError(DatasetError):
    """tether's per-episode columns are absent (a tool that keeps only LeRobot's columns dropped them)."""

    def __init__(self, root: Path, columns: list[str], episodes: list[int], fix: str) -> None:
        super().__init__(
            f"{root}: meta/episodes has no {', '.join(repr(c) for c in columns)} column for episode(s) "
            f"{episode_ranges(episodes)}, as after a tool that keeps only LeRobot's columns "
            f"(e.g. lerobot's delete_episodes); {fix}")
        self.columns, self.episodes = columns, episodes


def read_episodes(layout: Layout) -> list[dict[str, Any]]:
    """Every row of meta/episodes; a row lacks the keys of columns its file does not have."""
    rows: list[dict[str, Any]] = []
    for path in sorted((layout.root / "meta" / "episodes").glob("*/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def lacking(rows: list[dict[str, Any]], column: str) -> list[int]:
    """The episode indices whose rows have no ``column``."""
    return [int(r["episode_index"]) for r in rows if column not in r]


def require(root: Path, rows: list[dict[str, Any]], column: str, fix: str) -> None:
    """Raise MissingEpisodeColumnError when any of ``rows`` has no ``column``; ``fix`` says the way out."""
    missing = lacking(rows, column)
    if missing:
        raise MissingEpisodeColumnError(root, [column], missing, fix)


def episode_ranges(episodes: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for e in sorted(episodes):
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class DatasetLock:
    """An exclusive flock on ``<root>/.lock`` for the life of a writer or a recover().

    The kernel drops it when the holder dies, SIGKILL included, so a crash never leaves it stale;
    while a writer lives, recover() cannot commit that writer's running episode under it.
    """

    def __init__(self, root: Path) -> None:
        path = Layout(root).lock_path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise DatasetLayoutError(f"{root} is in use by another writer (tether collect) or by "
                                     f"tether dataset recover (lock {path}); wait until it ends") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


# --- atomic file IO: write a sibling, fsync it, rename over; a reader sees old or new, never half.


@dataclass(frozen=True)
class DiskFull:
    reason: str  # the system's words: "No space left on device", "Disk quota exceeded"
    filename: str | None  # the file being written, when the error names it


def disk_full(exc: BaseException) -> DiskFull | None:
    """What ``exc`` says when the disk (or the user's quota) is full, else None.

    PyAV and pyarrow raise OSError subclasses with the errno; others wrap it as the cause."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            filename = None if seen.filename is None else str(seen.filename)
            return DiskFull(os.strerror(seen.errno), filename)
        seen = seen.__cause__ or seen.__context__
    return None


def tmp_sibling(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def write_bytes_tmp(path: Path, data: bytes) -> Path:
    """Write ``data`` next to ``path`` (not over it), fsynced; returns the temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def replace_durably(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    replace_durably(write_bytes_tmp(path, json_bytes(obj)), path)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
