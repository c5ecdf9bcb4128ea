"""Sampling asynchronous robot streams into dataset frames, driven by camera captures.

A frame is made for each capture of the anchor camera once the other cameras'
images of the same moment have arrived (nearest capture stamp within half a
frame period, like message_filters' ApproximateTime), together with the joint
state and gated command nearest to that capture time. Frames therefore carry
real capture times (``capture_time_ns``), images that cross processes late are
waited for rather than replaced by older ones, and a gap in the anchor
camera's stamps is counted as dropped frames, never papered over.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from tether.errors import UnknownCameraError

Stamped = tuple[int, np.ndarray]


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
    """How far (ns) a joint state or command may lie from the frame's capture time."""

    state_ns: int = 20_000_000
    action_ns: int = 250_000_000


def _nearest(items: collections.deque[Stamped], t: int) -> Stamped | None:
    return min(items, key=lambda item: abs(item[0] - t)) if items else None


@dataclass
class FrameSampler:
    cameras: list[str]
    fps: float
    autonomous_source: str = "expert"  # control_source label while no human drives
    freshness: Freshness = field(default_factory=Freshness)

    def __post_init__(self) -> None:
        self.anchor = self.cameras[0]
        self.tolerance_ns = int(0.5e9 / self.fps)
        # Captures held back while a slower stream catches up (~2 s); past that the stream is gone.
        self.max_backlog = max(4, int(2 * self.fps))
        self._images: dict[str, collections.deque[Stamped]] = {
            c: collections.deque(maxlen=self.max_backlog + 8) for c in self.cameras}
        self._states: collections.deque[Stamped] = collections.deque(maxlen=512)
        self._actions: collections.deque[Stamped] = collections.deque(maxlen=512)
        self._last_anchor_ns: int | None = None
        self.intervention = False
        self.recovery = False
        self.dropped: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        """Start of an episode. Images restart; states and commands are matched by time, so the
        latest ones stay (the first capture of an episode needs the state just before it)."""
        for queue in self._images.values():
            queue.clear()
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
        self._states.append((stamp_ns, np.asarray(q, float)))

    def on_action(self, q: np.ndarray, stamp_ns: int) -> None:
        self._actions.append((stamp_ns, np.asarray(q, float)))

    def on_image(self, camera: str, rgb: np.ndarray, stamp_ns: int) -> list[SampledFrame]:
        """Store an image; returns the frames that became complete (usually zero or one)."""
        if camera not in self.cameras:
            raise UnknownCameraError(camera, self.cameras)
        self._images[camera].append((stamp_ns, rgb))
        frames = []
        while self._images[self.anchor]:
            outcome = self._try_oldest()
            if outcome == "wait":
                break
            if isinstance(outcome, SampledFrame):
                frames.append(outcome)
        return frames

    def _try_oldest(self) -> SampledFrame | str:
        t, rgb = self._images[self.anchor][0]
        images = {self.anchor: rgb}
        for cam in self.cameras[1:]:
            match = _nearest(self._images[cam], t)
            if match is not None and abs(match[0] - t) <= self.tolerance_ns:
                images[cam] = match[1]
            elif self._still_expected(self._images[cam], t):
                return "wait"
            else:
                return self._drop(f"missing_image_{cam}")
        state = _nearest(self._states, t)
        if state is None or abs(state[0] - t) > self.freshness.state_ns:
            return "wait" if self._still_expected(self._states, t) else self._drop("stale_state")
        action = _nearest(self._actions, t)
        if action is None or abs(action[0] - t) > self.freshness.action_ns:
            return "wait" if self._still_expected(self._actions, t) else self._drop("no_action")
        self._pop_anchor()
        return SampledFrame(state[1], action[1], images, t, self.intervention, self.control_source, self.phase)

    def _still_expected(self, stream: collections.deque[Stamped], t: int) -> bool:
        """A sample of time ``t`` may still arrive: the stream has nothing newer yet and we are not far behind."""
        newest = stream[-1][0] if stream else None
        return (newest is None or newest < t) and len(self._images[self.anchor]) < self.max_backlog

    def _drop(self, reason: str) -> str:
        self.dropped[reason] += 1
        self._pop_anchor()
        return "dropped"

    def _pop_anchor(self) -> None:
        t, _ = self._images[self.anchor].popleft()
        if self._last_anchor_ns is not None:
            missed = int(round((t - self._last_anchor_ns) * self.fps / 1e9)) - 1
            if missed > 0:
                self.dropped["camera_gap"] += missed
        self._last_anchor_ns = t
