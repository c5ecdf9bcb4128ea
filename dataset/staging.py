"""The running episode on disk: ``.staging/episode_XXXXXX/`` as closed ~1 s segments, and what can be committed of it.

A segment is one H.264 mp4 per camera and one parquet file, each closed, fsynced and renamed into place;
the parquet goes last, so a segment exists exactly when its parquet does and a SIGKILL loses only the
open segment (< ``segment_seconds``). Reading a staging folder back keeps its longest run of whole segments.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tether.dataset import stats as st
from tether.dataset.frames import Frame
from tether.dataset.layout import DatasetSpec, camera_key, data_schema, tmp_sibling
from tether.dataset.videos import SegmentVideo, count_packets
from tether.errors import DatasetLayoutError
from tether.teleop.recording.durable import fsync_dir, fsync_file

_SEGMENT_RE = re.compile(r"^segment-(\d{6})\.parquet$")
# Columns a commit fills in: the episode's place in the dataset is unknown while it records.
ASSIGNED_AT_COMMIT = ("episode_index", "index", "task_index")


def staging_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """The data columns known while recording; indices are assigned at commit."""
    schema = data_schema(features)
    return pa.schema([f for f in schema if f.name not in ASSIGNED_AT_COMMIT])


def segment_name(number: int) -> str:
    return f"segment-{number:06d}.parquet"


def segment_video(staging: Path, number: int, camera: str) -> Path:
    return staging / f"segment-{number:06d}.{camera}.mp4"


class SegmentRecorder:
    """Writes one running episode into closed ~1 s segments in its staging folder."""

    def __init__(self, staging: Path, spec: DatasetSpec, features: dict[str, dict[str, Any]], segment_frames: int) -> None:
        self.staging, self.spec, self.segment_frames = staging, spec, segment_frames
        self.schema = staging_schema(features)
        self.frames = 0  # frames added to this episode
        self.flushed_frames = 0
        self._segment = 0
        self._rows: dict[str, list[Any]] = {}
        self._videos: dict[str, SegmentVideo] = {}
        self._hists: dict[str, st.ImageHistogram] = {}
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._rows = {name: [] for name in self.schema.names}
        self._videos = {}
        self._hists = {cam: st.ImageHistogram() for cam in self.spec.cameras}

    def add(self, frame: Frame) -> None:
        for cam, img in frame.images.items():
            if cam not in self._videos:
                partial = segment_video(self.staging, self._segment, cam).with_suffix(".partial.mp4")
                self._videos[cam] = SegmentVideo(partial, self.spec.fps, self.spec.crf)
            self._videos[cam].write(img)
            self._hists[cam].add(img)
        fi = self.frames
        values = {
            "observation.state": frame.state.tolist(),
            "action": frame.action.tolist(),
            "timestamp": fi / self.spec.fps,
            "frame_index": fi,
            "capture_time_ns": frame.capture_time_ns,
            "intervention": frame.intervention,
            "control_source": frame.control_source,
            "phase": frame.phase,
        }
        for name, value in values.items():
            self._rows[name].append(value)
        self.frames += 1
        if len(self._rows["frame_index"]) >= self.segment_frames:
            self.flush()

    def flush(self) -> None:
        """Close the open segment: videos first, then the parquet that makes the segment exist."""
        if not self._rows["frame_index"]:
            return
        for cam, writer in self._videos.items():
            writer.close()
            final = segment_video(self.staging, self._segment, cam)
            fsync_file(writer.path)
            os.replace(writer.path, final)
        table = pa.Table.from_pydict(self._rows, schema=self.schema)
        hists = {camera_key(c): h.to_json() for c, h in self._hists.items()}
        table = table.replace_schema_metadata({b"tether.image_histograms": json.dumps(hists).encode()})
        final = self.staging / segment_name(self._segment)
        tmp = tmp_sibling(final)
        pq.write_table(table, tmp)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(self.staging)
        self.flushed_frames += table.num_rows
        self._segment += 1
        self._reset_buffer()

    def abort(self) -> None:
        for writer in self._videos.values():
            writer.close()


@dataclass
class StagedEpisode:
    """What a staging folder holds that can be committed: a contiguous prefix of whole segments."""

    path: Path
    task: str
    table: pa.Table
    videos: dict[str, list[Path]]  # feature key -> segment mp4s in order
    histograms: dict[str, st.ImageHistogram]
    success: bool | None
    ended: bool  # end_episode or close was called: every frame was flushed
    dropped: list[str] = field(default_factory=list)  # why later segments were not usable
    aborted: bool = False  # ended by close() while still running: a truncated episode

    @property
    def truncated(self) -> bool:
        """Frames are missing at its end (a crash, a damaged segment) or its session was aborted."""
        return not self.ended or bool(self.dropped) or self.aborted

    @property
    def frames(self) -> int:
        return self.table.num_rows

    @classmethod
    def load(cls, path: Path, spec: DatasetSpec, features: dict[str, dict[str, Any]]) -> StagedEpisode:
        meta_path = path / "episode.json"
        if not meta_path.is_file():
            raise DatasetLayoutError(f"{path}: no episode.json; the episode never began writing")
        meta = json.loads(meta_path.read_text())
        end_path = path / "end.json"
        end = json.loads(end_path.read_text()) if end_path.is_file() else None
        schema = staging_schema(features)
        tables: list[pa.Table] = []
        videos: dict[str, list[Path]] = {camera_key(c): [] for c in spec.cameras}
        hists = {camera_key(c): st.ImageHistogram() for c in spec.cameras}
        dropped: list[str] = []
        numbers = sorted(int(m.group(1)) for p in path.iterdir() if (m := _SEGMENT_RE.match(p.name)))
        for expected, number in enumerate(numbers):
            problem = None if number == expected else f"segment {expected} is missing"
            if problem is None:
                problem = _load_segment(path, number, spec, schema, sum(t.num_rows for t in tables), tables, videos, hists)
            if problem:
                dropped.append(problem)
                dropped += [f"segment {n} follows an unusable one" for n in numbers if n > number]
                break
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        # An end.json from before "aborted" existed was written by end_episode: not aborted.
        aborted = bool(end.get("aborted", False)) if end else False
        return cls(path, meta["task"], table, videos, hists, end["success"] if end else None, end is not None,
                   dropped, aborted)


def _load_segment(
    path: Path,
    number: int,
    spec: DatasetSpec,
    schema: pa.Schema,
    first_frame: int,
    tables: list[pa.Table],
    videos: dict[str, list[Path]],
    hists: dict[str, st.ImageHistogram],
) -> str | None:
    """Append segment ``number`` to the accumulators, or say why it cannot be used."""
    try:
        table = pq.read_table(path / segment_name(number))
    except (OSError, pa.ArrowException) as exc:
        return f"segment {number}: parquet unreadable ({exc})"
    if table.schema.remove_metadata() != schema:
        return f"segment {number}: columns {table.schema.names} differ from {schema.names}"
    frame_index = table.column("frame_index").to_numpy()
    if not np.array_equal(frame_index, np.arange(first_frame, first_frame + table.num_rows)):
        return f"segment {number}: frame_index does not continue from {first_frame}"
    meta = json.loads((table.schema.metadata or {}).get(b"tether.image_histograms", b"{}"))
    for cam in spec.cameras:
        key, mp4 = camera_key(cam), segment_video(path, number, cam)
        packets = count_packets(mp4)
        if packets != table.num_rows:
            return f"segment {number}: {mp4.name} has {packets} frames for {table.num_rows} rows"
        if key not in meta:
            return f"segment {number}: no image histogram for {key}"
    tables.append(table)
    for cam in spec.cameras:
        key = camera_key(cam)
        videos[key].append(segment_video(path, number, cam))
        hists[key].merge(st.ImageHistogram.from_json(meta[key]))
    return None
