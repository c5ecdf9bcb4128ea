"""Sampling asynchronous robot streams into dataset frames, driven by camera captures.

A frame is made when the anchor camera delivers a new image: the other cameras'
latest images, the latest joint state and the latest gated command are attached
if they are fresh enough relative to that capture time. Frames therefore carry
real capture times (``capture_time_ns``) rather than nominal ones, and a gap in
the anchor camera's stamps is counted as dropped frames, never papered over.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from tether.errors import UnknownCameraError


@dataclass(frozen=True)
class SampledFrame:
    state: np.ndarray
    action: np.ndarray
    images: dict[str, np.ndarray]
    capture_time_ns: int
    intervention: bool
    control_source: str
    phase: str


@dataclass
class Freshness:
    """How far (ns) an input's capture may lie before the anchor image's capture."""

    state_ns: int = 50_000_000
    image_ns: int = 40_000_000
    action_ns: int = 250_000_000


@dataclass
class FrameSampler:
    cameras: list[str]
    fps: float
    autonomous_source: str = "expert"  # control_source label while no human drives
    freshness: Freshness = field(default_factory=Freshness)

    def __post_init__(self) -> None:
        self.anchor = self.cameras[0]
        self._images: dict[str, tuple[np.ndarray, int]] = {}
        self._state: tuple[np.ndarray, int] | None = None
        self._action: tuple[np.ndarray, int] | None = None
        self._last_anchor_ns: int | None = None
        self.intervention = False
        self.recovery = False
        self.dropped: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        """Start of an episode: nothing from the previous one may leak in."""
        self._images.clear()
        self._state = self._action = None
        self._last_anchor_ns = None
        self.dropped.clear()

    @property
    def phase(self) -> str:
        if self.recovery:
            return "recovery"
        return "correction" if self.intervention else "autonomous"

    @property
    def control_source(self) -> str:
        return "human" if self.intervention else self.autonomous_source

    def on_state(self, q: np.ndarray, stamp_ns: int) -> None:
        self._state = (np.asarray(q, float), stamp_ns)

    def on_action(self, q: np.ndarray, stamp_ns: int) -> None:
        self._action = (np.asarray(q, float), stamp_ns)

    def on_image(self, camera: str, rgb: np.ndarray, stamp_ns: int) -> SampledFrame | None:
        """Store an image; returns a frame when it is a new anchor capture and all inputs are fresh."""
        if camera not in self.cameras:
            raise UnknownCameraError(camera, self.cameras)
        self._images[camera] = (rgb, stamp_ns)
        if camera != self.anchor:
            return None
        self._count_gap(stamp_ns)
        return self._assemble(stamp_ns)

    def _count_gap(self, stamp_ns: int) -> None:
        if self._last_anchor_ns is not None:
            period_ns = 1e9 / self.fps
            missed = int(round((stamp_ns - self._last_anchor_ns) / period_ns)) - 1
            if missed > 0:
                self.dropped["camera_gap"] += missed
        self._last_anchor_ns = stamp_ns

    def _assemble(self, t: int) -> SampledFrame | None:
        f = self.freshness
        if self._state is None or abs(t - self._state[1]) > f.state_ns:
            self.dropped["stale_state"] += 1
            return None
        if self._action is None or t - self._action[1] > f.action_ns:
            self.dropped["no_action"] += 1
            return None
        images = {}
        for cam in self.cameras:
            img = self._images.get(cam)
            if img is None or abs(t - img[1]) > f.image_ns:
                self.dropped[f"stale_image_{cam}"] += 1
                return None
            images[cam] = img[0]
        return SampledFrame(self._state[0], self._action[0], images, t, self.intervention, self.control_source, self.phase)
