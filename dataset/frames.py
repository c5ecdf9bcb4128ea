"""The checks a frame passes before anything of it is written: each names the bad value and the valid ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.dataset.layout import CONTROL_SOURCES, PHASES, DatasetSpec
from tether.errors import DatasetFrameError, UnknownCameraError


@dataclass(frozen=True)
class Frame:
    """One validated sample on the fps grid."""

    state: np.ndarray
    action: np.ndarray
    images: Mapping[str, np.ndarray]
    capture_time_ns: int
    intervention: bool
    control_source: str
    phase: str


class FrameCheck:
    """Rejects a malformed frame before anything is written, naming the bad value."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    def frame(
        self,
        state: Any,
        action: Any,
        images: Mapping[str, np.ndarray],
        capture_time_ns: int,
        intervention: bool,
        control_source: str,
        phase: str,
        previous_capture_ns: int | None,
    ) -> Frame:
        return Frame(
            self._vector("state", state),
            self._vector("action", action),
            self._images(images),
            self._capture_time(capture_time_ns, previous_capture_ns),
            self._flag(intervention),
            self._choice("control_source", control_source, CONTROL_SOURCES),
            self._choice("phase", phase, PHASES),
        )

    def _vector(self, name: str, value: Any) -> np.ndarray:
        n = len(self.spec.joint_names)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetFrameError(name, repr(value), f"{n} numbers") from None
        if arr.shape != (n,):
            raise DatasetFrameError(name, f"shape {arr.shape}", f"shape ({n},) for {', '.join(self.spec.joint_names)}")
        as32 = arr.astype(np.float32)
        if not np.isfinite(as32).all():
            bad = [self.spec.joint_names[i] for i in np.flatnonzero(~np.isfinite(as32))]
            raise DatasetFrameError(name, f"non-finite value(s) at {', '.join(bad)}", "finite float32 values")
        return as32

    def _images(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cams = self.spec.cameras
        for name in images:
            if name not in cams:
                raise UnknownCameraError(name, cams)
        missing = sorted(set(cams) - set(images))
        if missing:
            raise DatasetFrameError("images", f"no image for camera(s) {', '.join(missing)}", f"one image per camera: {', '.join(cams)}")
        for name, img in images.items():
            h, w = cams[name]
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (h, w, 3):
                got = f"{type(img).__name__} {getattr(img, 'shape', '')} {getattr(img, 'dtype', '')}".strip()
                raise DatasetFrameError(f"images['{name}']", got, f"uint8 array of shape ({h}, {w}, 3)")
        return dict(images)

    @staticmethod
    def _capture_time(value: int, previous: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DatasetFrameError("capture_time_ns", repr(value), "an int (nanoseconds)")
        if previous is not None and value <= previous:
            raise DatasetFrameError("capture_time_ns", value, f"a time after the previous frame's {previous}")
        return int(value)

    @staticmethod
    def _flag(value: bool) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise DatasetFrameError("intervention", repr(value), "True or False")
        return bool(value)

    @staticmethod
    def _choice(name: str, value: str, valid: tuple[str, ...]) -> str:
        if value not in valid:
            raise DatasetFrameError(name, repr(value), "one of " + ", ".join(valid))
        return value
