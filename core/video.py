"""MP4 writing with PyAV (H.264, yuv420p), so any player and LeRobot's decoders read it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np


class VideoWriter:
    """Write RGB frames to an .mp4; use as a context manager so the file is always finalized."""

    def __init__(self, path: Path, fps: float, codec: str = "libx264", crf: int = 23) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = Fraction(fps).limit_denominator(1000)
        self.codec, self.crf = codec, crf
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 RGB, got shape {rgb.shape} dtype {rgb.dtype}")
        if self._container is None:
            self._open(rgb.shape[1], rgb.shape[0])
        assert self._container is not None and self._stream is not None
        h, w = self._stream.height, self._stream.width
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, video is {w}x{h}")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        self._container = av.open(str(self.path), mode="w")
        stream = self._container.add_stream(self.codec, rate=self.fps)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = stream

    def close(self) -> None:
        if self._container is None or self._stream is None:
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
