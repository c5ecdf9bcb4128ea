"""Frames are made from camera captures, carry real capture times, and stale inputs are refused."""

import numpy as np
import pytest

from tether.errors import UnknownCameraError
from tether.teleop.recorder import FrameSampler

MS = 1_000_000
RGB = np.zeros((4, 6, 3), np.uint8)


def feed(s: FrameSampler, t_ms: float, *, state=True, action=True, wrist=True):
    t = int(t_ms * MS)
    if state:
        s.on_state(np.full(6, t_ms), t)
    if action:
        s.on_action(np.full(6, -t_ms), t)
    if wrist:
        s.on_image("wrist", RGB, t)
    return s.on_image("front", RGB, t)


def test_each_anchor_capture_makes_one_frame_with_its_capture_time() -> None:
    s = FrameSampler(["front", "wrist"], fps=30)
    frames = [feed(s, 1000 + k * 33.3) for k in range(3)]
    assert all(f is not None for f in frames)
    assert [f.capture_time_ns for f in frames] == [int((1000 + k * 33.3) * MS) for k in range(3)]
    assert frames[1].state[0] == pytest.approx(1033.3) and frames[1].action[0] == pytest.approx(-1033.3)
    assert (frames[0].control_source, frames[0].phase, frames[0].intervention) == ("expert", "autonomous", False)


def test_stale_inputs_drop_the_frame_and_say_why() -> None:
    s = FrameSampler(["front", "wrist"], fps=30)
    s.on_state(np.zeros(6), 0)
    s.on_action(np.zeros(6), 0)
    s.on_image("wrist", RGB, 0)
    assert s.on_image("front", RGB, 200 * MS) is None  # the state is 200 ms old
    assert s.dropped["stale_state"] == 1
    assert feed(s, 300, wrist=False) is None
    assert s.dropped["stale_image_wrist"] == 1


def test_camera_gaps_count_as_dropped_frames() -> None:
    s = FrameSampler(["front"], fps=30)
    feed(s, 0, wrist=False)
    feed(s, 100, wrist=False)  # two frames (33 and 67 ms) never arrived
    assert s.dropped["camera_gap"] == 2


def test_intervention_and_recovery_labels() -> None:
    s = FrameSampler(["front"], fps=30, autonomous_source="policy")
    s.intervention = True
    f = feed(s, 0, wrist=False)
    assert (f.control_source, f.phase, f.intervention) == ("human", "correction", True)
    s.recovery = True
    assert feed(s, 33, wrist=False).phase == "recovery"


def test_unknown_camera_is_refused() -> None:
    with pytest.raises(UnknownCameraError, match="cameras: front"):
        FrameSampler(["front"], fps=30).on_image("back", RGB, 0)
