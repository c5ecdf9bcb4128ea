"""The episode's mp4s: one segment per camera encoded as frames arrive, its frames counted, and segments remuxed
back to back into the dataset's video files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tether.teleop.recording.durable import fsync_file


class SegmentVideo:
    """H.264 (yuv420p) mp4 of one segment of one camera, encoded as frames arrive.

    Unlike ``tether.video.VideoWriter`` it disables B-frames: then every packet has dts == pts,
    so segments of any length remux back to back with monotonic timestamps. (With B-frames a
    1-frame segment has no reorder delay while a full one has two frames, and the muxer
    rejects the join.) Each segment starts with a keyframe, so LeRobot can seek to any second.
    """

    def __init__(self, path: Path, fps: int, crf: int) -> None:
        self.path = path
        self._container: av.container.OutputContainer | None = av.open(str(path), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._crf, self.frames = crf, 0

    def write(self, rgb: np.ndarray) -> None:
        assert self._container is not None, "segment video already closed"
        if self.frames == 0:
            self._stream.height, self._stream.width = rgb.shape[:2]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self._crf), "preset": "veryfast", "bf": "0"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self.frames:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        self._container.close()
        self._container = None


def count_packets(path: Path) -> int:
    """Video packets (one per frame) in an mp4; -1 when it is missing or unreadable."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for p in container.demux(container.streams.video[0]) if p.dts is not None)
    except (OSError, av.FFmpegError, IndexError):
        return -1


def concat_videos(inputs: list[Path], output: Path, fps: int) -> list[int]:
    """Remux ``inputs`` back to back into ``output`` (no re-encode); returns each input's frame count.

    Each input's timestamps are shifted by the frames before it / fps, so frame k of the output
    sits at exactly k / fps: LeRobot seeks ``from_timestamp + timestamp`` with a 1e-4 s tolerance.
    """
    counts: list[int] = []
    offset = Fraction(0)
    with av.open(str(output), "w", format="mp4", options={"movflags": "faststart"}) as out:
        ostream = None
        for path in inputs:
            with av.open(str(path)) as inp:
                istream = inp.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(template=istream, opaque=True)
                    ostream.time_base = istream.time_base
                assert istream.time_base is not None
                shift = int(offset / istream.time_base)
                n = 0
                for packet in inp.demux(istream):
                    if packet.dts is None:  # demuxer flush packet
                        continue
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts += shift
                    packet.stream = ostream
                    out.mux(packet)
                    n += 1
            counts.append(n)
            offset += Fraction(n, fps)
    fsync_file(output)
    return counts
