"""The twin's cameras on their own thread: the physics loop hands in snapshots and never waits."""

from __future__ import annotations

import threading
import time

import numpy as np

from tether.sim.camera_worker import CameraWorker
from tether.sim.twin import Twin

SIZES = {"front": (64, 48), "wrist": (64, 48)}


def test_frames_are_drawn_from_the_snapshot_with_its_stamp(so101) -> None:
    frames: list[tuple[str, np.ndarray, float]] = []
    with Twin(so101, "pick_place") as twin:
        worker = CameraWorker(twin.model, SIZES, deliver=lambda c, rgb, t: frames.append((c, rgb, t))).start()
        reference = twin.render("front", 64, 48)  # drawn on this thread, from the same state
        worker.submit(twin.scene_state(), stamp=12.5)
        twin.step(200.0)  # the world moves on; the frame must still show the snapshot
        deadline = time.monotonic() + 10
        while len(frames) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.close()
    assert sorted(c for c, _, _ in frames) == ["front", "wrist"] and {t for _, _, t in frames} == {12.5}
    front = next(rgb for c, rgb, _ in frames if c == "front")
    assert front.shape == (48, 64, 3) and np.array_equal(front, reference)
    assert worker.rendered == 1 and worker.skipped == 0 and worker.error is None


def test_a_busy_camera_skips_and_counts_instead_of_queueing(so101) -> None:
    release = threading.Event()
    drawn: list[float] = []

    def slow_deliver(_camera: str, _rgb: np.ndarray, stamp: float) -> None:
        release.wait(5.0)  # a camera that cannot keep up
        drawn.append(stamp)

    with Twin(so101, "pick_place") as twin:
        worker = CameraWorker(twin.model, {"front": (64, 48)}, deliver=slow_deliver).start()
        start = time.perf_counter()
        for k in range(10):
            worker.submit(twin.scene_state(), stamp=float(k))
            time.sleep(0.01)
        submit_s = time.perf_counter() - start
        assert worker.pending  # the latest snapshot waits; the ones before it were dropped
        release.set()
        deadline = time.monotonic() + 10
        while worker.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.close()
    assert submit_s < 1.0  # the physics loop never waited for the camera (10 submits, 0.1 s of sleeps)
    assert drawn == [0.0, 9.0] and worker.skipped == 8  # the first and the newest; nothing queued in between


def test_the_gl_context_is_released_on_the_worker_thread(so101) -> None:
    """Closing from another thread (a node's close, at shutdown) must not touch the context there."""
    frames: list[str] = []
    with Twin(so101, "pick_place") as twin:
        worker = CameraWorker(twin.model, SIZES, deliver=lambda c, *_: frames.append(c)).start()
        worker.submit(twin.scene_state(), 0.0)
        deadline = time.monotonic() + 10
        while len(frames) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        closer = threading.Thread(target=worker.close)
        closer.start()
        closer.join(10)
    assert worker.error is None and not worker._thread.is_alive()


def test_cameras_nobody_wants_are_not_drawn(so101) -> None:
    frames: list[str] = []
    with Twin(so101, "pick_place") as twin:
        worker = CameraWorker(twin.model, SIZES, deliver=lambda c, *_: frames.append(c),
                              wanted=lambda c: c == "wrist").start()
        worker.submit(twin.scene_state(), 0.0)
        deadline = time.monotonic() + 10
        while not frames and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.close()
    assert frames == ["wrist"] and worker.wants_any()
