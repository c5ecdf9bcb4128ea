"""Frames are made from camera captures, carry real capture times, and stale inputs are refused."""

import numpy as np
import pytest

from tether.errors import UnknownCameraError
from tether.teleop.recording.recorder import FrameSampler

MS = 1_000_000
RGB = np.zeros((4, 6, 3), np.uint8)


def feed(s: FrameSampler, t_ms: float, *, state=True, action=True, wrist=True):
    """One capture: joint state and command at the same moment, front image, then wrist image."""
    t = int(t_ms * MS)
    if state:
        s.on_state(np.full(6, t_ms), t)
    if action:
        s.on_action(np.full(6, -t_ms), t)
    frames = s.on_image("front", RGB, t)
    if wrist:
        frames += s.on_image("wrist", RGB + 1, t + 2 * MS)  # the wrist camera's clock is 2 ms off
    return frames


def test_each_capture_makes_one_frame_once_every_camera_arrived() -> None:
    s = FrameSampler(["front", "wrist"], fps=30)
    frames = [f for k in range(3) for f in feed(s, 1000 + k * 33.3)]
    assert [f.capture_time_ns for f in frames] == [int((1000 + k * 33.3) * MS) for k in range(3)]
    assert frames[1].state[0] == pytest.approx(1033.3) and frames[1].action[0] == pytest.approx(-1033.3)
    assert frames[0].images["wrist"][0, 0, 0] == 1
    assert (frames[0].control_source, frames[0].phase, frames[0].intervention) == ("expert", "autonomous", False)


def test_a_late_image_is_waited_for_not_replaced_by_an_older_one() -> None:
    s = FrameSampler(["front", "wrist"], fps=30)
    feed(s, 0)
    s.on_state(np.zeros(6), 33 * MS)
    s.on_action(np.zeros(6), 33 * MS)
    assert s.on_image("front", RGB, 33 * MS) == []  # the wrist image of t=33 is still in flight
    (frame,) = s.on_image("wrist", RGB + 7, 34 * MS)
    assert frame.capture_time_ns == 33 * MS and frame.images["wrist"][0, 0, 0] == 7
    assert not s.dropped


def test_stale_state_drops_the_frame_and_says_why() -> None:
    s = FrameSampler(["front", "wrist"], fps=30)
    s.on_state(np.zeros(6), 0)
    s.on_action(np.zeros(6), 0)
    s.on_image("front", RGB, 200 * MS)
    assert s.on_image("wrist", RGB, 200 * MS) == []  # waits: a state of t=200 may still come
    s.on_state(np.zeros(6), 400 * MS)  # it did not: the states jumped from t=0 to t=400
    s.on_image("front", RGB, 233 * MS)
    assert s.dropped["stale_state"] == 1


def test_a_camera_that_skipped_a_capture_drops_that_frame() -> None:
    s = FrameSampler(["front", "wrist"], fps=30)
    feed(s, 0)
    assert feed(s, 33, wrist=False) == []
    assert len(feed(s, 67)) == 1  # the wrist moved on past t=33: that frame can never complete
    assert s.dropped["missing_image_wrist"] == 1


def test_camera_gaps_count_as_dropped_frames() -> None:
    s = FrameSampler(["front"], fps=30)
    feed(s, 0, wrist=False)
    feed(s, 100, wrist=False)  # two captures (33 and 67 ms) never arrived
    assert s.dropped["camera_gap"] == 2


def test_intervention_and_recovery_labels() -> None:
    s = FrameSampler(["front"], fps=30, autonomous_source="policy")
    s.intervention = True
    (f,) = feed(s, 0, wrist=False)
    assert (f.control_source, f.phase, f.intervention) == ("human", "correction", True)
    s.recovery = True
    assert feed(s, 33, wrist=False)[0].phase == "recovery"


def test_unknown_camera_is_refused() -> None:
    with pytest.raises(UnknownCameraError, match="cameras: front"):
        FrameSampler(["front"], fps=30).on_image("back", RGB, 0)


def test_a_joint_state_still_in_flight_is_waited_for() -> None:
    s = FrameSampler(["front"], fps=30)
    s.on_state(np.zeros(6), 0)
    s.on_action(np.zeros(6), 0)
    assert s.on_image("front", RGB, 100 * MS) == []  # its state (t=100) has not arrived yet
    s.on_state(np.ones(6), 100 * MS)
    (frame,) = s.on_image("front", RGB, 133 * MS)[:1]
    assert frame.capture_time_ns == 100 * MS and frame.state[0] == 1.0
    assert not s.dropped
