"""Crash-safe LeRobotDataset v3.0 writer: the facade that records episodes frame by frame and commits each.

While an episode runs, frames go to ``.staging/episode_XXXXXX/`` as ~1 s segments (:mod:`tether.dataset.staging`),
so a SIGKILL loses only the open segment (< ``segment_seconds``) of the running episode.
``close()`` with an episode still running (the session that recorded it failed or was stopped)
commits it as truncated with an unknown outcome, or discards it (``on_abort="discard"``): never
as a normal episode. ``end_episode`` commits atomically (:mod:`tether.dataset.commit`).

Measured (2 cameras 640x480 at 30 fps, 30 s episodes, 2-core machine): ``add_frame`` 6.6 ms
mean, 40 ms at p99 (the once-a-second segment flush); ``end_episode`` 250-270 ms, of which the
commit proper is 125-140 ms. A commit remuxes (no re-encode) the whole current video file and
rewrites the current data file, so it grows with those files up to their size limits.
Killed mid-episode at 20 fps: 0-18 frames lost over 7 trials, never more than one segment.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from tether.dataset.commit import Commit, CommitHook, CommitResult, DatasetState
from tether.dataset.frames import FrameCheck
from tether.dataset.layout import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    TETHER_COLUMNS,
    DatasetLock,
    DatasetSpec,
    Layout,
    MissingEpisodeColumnError,
    lacking,
    new_info,
    read_episodes,
    spec_from_info,
    write_json_atomic,
)
from tether.dataset.recover import RecoveryReport, recover
from tether.dataset.staging import SegmentRecorder, StagedEpisode
from tether.errors import DatasetError, DatasetLayoutError, EpisodeStateError

# What close() does with an episode still running: commit it as truncated (outcome unknown), or drop it.
ON_ABORT = ("truncate", "discard")


def check_on_abort(value: str) -> str:
    if value not in ON_ABORT:
        raise DatasetError(f"on_abort '{value}' is not one of {', '.join(ON_ABORT)}")
    return value


class DatasetWriter:
    """Records episodes into a LeRobotDataset v3.0 folder; see the module doc for crash safety.

    >>> spec = DatasetSpec.from_profile(load_profile("so101"), fps=30)
    >>> with DatasetWriter.create(root, spec) as w:
    ...     w.begin_episode("pick the cube")
    ...     w.add_frame(state, action, {"front": rgb, "wrist": rgb2}, time.time_ns(), False, "policy", "autonomous")
    ...     w.end_episode(success=True)
    """

    def __init__(self, root: Path, segment_seconds: float = 1.0, commit_hook: CommitHook | None = None) -> None:
        """Use ``create`` or ``open_existing``; this opens a dataset that needs no recovery."""
        self.layout = Layout(Path(root))
        self.state = DatasetState.load(self.layout)
        self._lock = DatasetLock(self.layout.root)
        if self.layout.journal_path.exists():
            self._lock.release()
            raise DatasetLayoutError(f"{self.layout.journal_path}: an interrupted commit; run "
                                     f"`tether dataset recover {self.layout.root}` (DatasetWriter.open_existing does too)")
        self._refuse_lost_columns()
        self.spec = spec_from_info(self.state.info)
        self.features: dict[str, dict[str, Any]] = self.state.info["features"]
        self._check = FrameCheck(self.spec)
        self._segment_frames = max(1, round(segment_seconds * self.spec.fps))
        self._hook = commit_hook
        self._recorder: SegmentRecorder | None = None
        self._last_capture_ns: int | None = None
        self.last_commit: CommitResult | None = None
        self.recovery: RecoveryReport | None = None  # set by open_existing

    def _refuse_lost_columns(self) -> None:
        """Appending rewrites the last episodes file: rows without our columns would get null ones, which
        reads as 'outcome unknown' instead of 'column missing'."""
        last = self.state.last_episode
        if last is None or all(c in last for c in TETHER_COLUMNS):
            return
        rows = read_episodes(self.layout)
        missing = [c for c in TETHER_COLUMNS if lacking(rows, c)]
        self._lock.release()
        raise MissingEpisodeColumnError(self.layout.root, missing, sorted({e for c in missing for e in lacking(rows, c)}),
                                        "appending would record them as unknown; record into a new dataset")

    @classmethod
    def create(
        cls,
        root: Path | str,
        spec: DatasetSpec,
        *,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        segment_seconds: float = 1.0,
        commit_hook: CommitHook | None = None,
    ) -> DatasetWriter:
        """A new, empty dataset at ``root`` (which must not exist or be empty)."""
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise DatasetLayoutError(f"{root} exists and is not empty; use DatasetWriter.open_existing to append")
        if chunks_size <= 0 or data_files_size_in_mb <= 0 or video_files_size_in_mb <= 0:
            raise DatasetError("chunks_size, data_files_size_in_mb and video_files_size_in_mb must be positive")
        write_json_atomic(Layout(root).info_path, new_info(spec, chunks_size, data_files_size_in_mb, video_files_size_in_mb))
        return cls(root, segment_seconds, commit_hook)

    @classmethod
    def open_existing(cls, root: Path | str, *, segment_seconds: float = 1.0, commit_hook: CommitHook | None = None) -> DatasetWriter:
        """Append to a dataset; first recovers whatever a crash left (report in ``.recovery``)."""
        report = recover(Path(root))
        writer = cls(Path(root), segment_seconds, commit_hook)
        writer.recovery = report
        return writer

    # -- properties

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def num_episodes(self) -> int:
        return int(self.state.info["total_episodes"])

    @property
    def num_frames(self) -> int:
        return int(self.state.info["total_frames"])

    @property
    def episode_running(self) -> bool:
        return self._recorder is not None

    @property
    def episode_frames(self) -> int:
        """Frames added to the running episode (0 when none runs)."""
        return self._recorder.frames if self._recorder else 0

    # -- episode lifecycle

    def begin_episode(self, task: str) -> int:
        """Start staging an episode; returns the index it will get if committed now."""
        if self._recorder is not None:
            raise EpisodeStateError("begin_episode", "recording an episode", "call end_episode or discard_episode first")
        if not isinstance(task, str) or not task.strip():
            raise DatasetError(f"task must be a non-empty string, got {task!r}")
        staging = self.layout.staging_dir(self.num_episodes)
        if staging.exists():
            raise DatasetLayoutError(f"{staging} exists: an interrupted episode; run "
                                     f"`tether dataset recover {self.layout.root}` (DatasetWriter.open_existing does too)")
        staging.mkdir(parents=True)
        write_json_atomic(staging / "episode.json", {"task": task, "fps": self.spec.fps, "begun_ns": time.time_ns()})
        self._recorder = SegmentRecorder(staging, self.spec, self.features, self._segment_frames)
        self._last_capture_ns = None
        return self.num_episodes

    def add_frame(
        self,
        state: np.ndarray,
        action: np.ndarray,
        images: Mapping[str, np.ndarray],
        capture_time_ns: int,
        intervention: bool = False,
        control_source: str = "policy",
        phase: str = "autonomous",
    ) -> None:
        """Append the next frame of the grid (timestamp = frame_index / fps); validated first."""
        if self._recorder is None:
            raise EpisodeStateError("add_frame", "not recording", "call begin_episode(task) first")
        frame = self._check.frame(state, action, images, capture_time_ns, intervention, control_source, phase, self._last_capture_ns)
        self._recorder.add(frame)
        self._last_capture_ns = frame.capture_time_ns

    def end_episode(self, success: bool | None = None) -> int:
        """Commit the running episode atomically; returns its episode index."""
        if success is not None and not isinstance(success, (bool, np.bool_)):
            raise DatasetError(f"success must be True, False or None, got {success!r}")
        return self._commit("end_episode", None if success is None else bool(success), aborted=False)

    def _commit(self, call: str, success: bool | None, aborted: bool) -> int:
        recorder = self._require_episode(call)
        if recorder.frames == 0:
            raise EpisodeStateError(call, "recording an empty episode", "add frames or call discard_episode")
        recorder.flush()
        # The outcome is on disk before the commit starts: a crash inside it loses no label.
        write_json_atomic(recorder.staging / "end.json", {"success": success, "aborted": aborted})
        staged = StagedEpisode.load(recorder.staging, self.spec, self.features)
        if staged.dropped or staged.frames != recorder.frames:
            raise DatasetError(f"{recorder.staging}: staged {staged.frames}/{recorder.frames} frames: {staged.dropped}")
        try:
            self.last_commit = Commit(self.layout, self.state, staged, truncated=aborted, hook=self._hook).run()
        finally:
            # Committed, or left staged (with its outcome) for recover(root) to finish: either way
            # this writer is done with the episode.
            self._recorder = None
        return self.last_commit.episode_index

    def flush(self) -> None:
        """Close the open segment now: what a crash after this cannot lose (no-op between episodes)."""
        if self._recorder is not None:
            self._recorder.flush()

    def discard_episode(self) -> None:
        """Drop the running episode and its staged frames."""
        recorder = self._require_episode("discard_episode")
        recorder.abort()
        shutil.rmtree(recorder.staging)
        self._recorder = None

    def close(self, on_abort: str = "truncate") -> None:
        """Release the dataset. An episode still running was cut short (its session failed or was
        stopped): ``on_abort="truncate"`` commits it with ``truncated=True`` and an unknown outcome,
        ``"discard"`` drops it; an empty one is dropped either way."""
        check_on_abort(on_abort)
        try:
            if self._recorder is not None and self._recorder.frames > 0 and on_abort == "truncate":
                self._commit("close", None, aborted=True)
            elif self._recorder is not None:
                self.discard_episode()
        finally:  # a commit that fails leaves the episode staged (marked aborted) for recover()
            self._lock.release()

    def _require_episode(self, call: str) -> SegmentRecorder:
        if self._recorder is None:
            raise EpisodeStateError(call, "not recording", "call begin_episode(task) first")
        return self._recorder

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            # On an error the staged segments stay for recover(): abort only closes encoders.
            if self._recorder is not None:
                self._recorder.abort()
                self._recorder = None
            self._lock.release()
