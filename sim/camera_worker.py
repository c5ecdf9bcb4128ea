"""The twin's cameras, drawn on a thread of their own so that physics never waits for rendering.

    worker = CameraWorker(twin.model, {"front": (640, 480)}, deliver=publish, wanted=lambda c: True)
    worker.start()
    worker.submit(twin.scene_state(), stamp)   # from the physics loop: never blocks
    ...
    worker.close()                             # joins; the GL context is released on its own thread

A real camera is a separate device: the robot keeps moving while it exposes and transfers a frame.
The worker holds at most one pending snapshot; a newer one replaces it and the replaced frame is
counted as skipped. Late work is never queued. Whether frames may be skipped at all is the
physics loop's choice: it can instead hold sim time at a frame instant until the worker has taken
the pending snapshot (``pending``), so a slow machine slows the simulated world and loses nothing.

EGL (and OSMesa) contexts belong to the thread that made them current, so the renderer is created,
used and closed on the worker thread only. Closing it from another thread fails with
``EGL_BAD_ACCESS``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import mujoco
import numpy as np

from tether.errors import RenderingUnavailableError
from tether.sim.rendering import CameraRenderer
from tether.sim.twin import SceneState

Deliver = Callable[[str, np.ndarray, float], None]  # (camera, HxWx3 uint8 RGB, capture stamp)


class CameraWorker:
    """Renders the cameras of one model from snapshots handed in by the physics loop."""

    def __init__(self, model: mujoco.MjModel, sizes: dict[str, tuple[int, int]], deliver: Deliver,
                 wanted: Callable[[str], bool] = lambda _camera: True) -> None:
        self._model = model
        self._sizes = dict(sizes)  # camera -> (width, height)
        self._deliver = deliver
        self._wanted = wanted  # lazy like a camera driver: a camera nobody listens to is not drawn
        self._cond = threading.Condition()
        self._pending: tuple[SceneState, float] | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="twin-cameras", daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None  # why the worker stopped, when it failed
        self.rendered = 0  # snapshots drawn
        self.skipped = 0  # snapshots replaced before the worker could draw them
        self._render_ms: collections.deque[float] = collections.deque(maxlen=300)

    def start(self, timeout: float = 60.0) -> CameraWorker:
        """Start the thread and wait until its GL contexts exist.

        Creating a context takes a few hundred ms of Python work under the GIL: done here, at start-up,
        it never stalls a running physics loop, and a machine without offscreen GL fails at once, clearly.
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RenderingUnavailableError(f"the camera thread did not create its GL contexts within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self

    def submit(self, state: SceneState, stamp: float) -> None:
        """Hand in the scene at capture time ``stamp``; returns at once, whatever the worker is doing."""
        with self._cond:
            if self._pending is not None:
                self.skipped += 1
            self._pending = (state, stamp)
            self._cond.notify()

    def clear(self) -> None:
        """Forget a snapshot not yet drawn (after a reset, the old scene must not appear)."""
        with self._cond:
            self._pending = None

    @property
    def pending(self) -> bool:
        """A snapshot is waiting: the worker has not started on the last one handed in."""
        return self._pending is not None

    def wants_any(self) -> bool:
        return any(self._wanted(c) for c in self._sizes)

    def render_ms(self) -> dict[str, float]:
        """Median and p99 of recent render times of one snapshot (all cameras), in ms."""
        times = np.asarray(self._render_ms)
        if times.size == 0:
            return {}
        return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next(self) -> tuple[SceneState, float] | None:
        with self._cond:
            while self._pending is None and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            job, self._pending = self._pending, None
            return job

    def _run(self) -> None:
        data = mujoco.MjData(self._model)
        renderer = CameraRenderer(self._model)
        try:
            for width, height in set(self._sizes.values()):
                renderer.prepare(width, height)
            self._ready.set()
            while (job := self._next()) is not None:
                self._draw(data, renderer, *job)
        except (RenderingUnavailableError, mujoco.FatalError, RuntimeError) as exc:
            self.error = exc
        finally:
            self._ready.set()
            renderer.close()  # on this thread, where its GL context is current

    def _draw(self, data: mujoco.MjData, renderer: CameraRenderer, state: SceneState, stamp: float) -> None:
        cameras = [c for c in self._sizes if self._wanted(c)]
        if not cameras:
            return
        start = time.perf_counter()
        data.qpos[:], data.mocap_pos[:], data.mocap_quat[:] = state.qpos, state.mocap_pos, state.mocap_quat
        data.time = state.time
        mujoco.mj_forward(self._model, data)
        for camera in cameras:
            width, height = self._sizes[camera]
            self._deliver(camera, renderer.render(data, camera, width, height), stamp)
        self._render_ms.append((time.perf_counter() - start) * 1e3)
        self.rendered += 1
