"""Offscreen camera rendering for the twin, tuned for CPU GL (EGL or OSMesa).

Shadows, reflections and multisampling are off: on CPU that is the difference between ~30 fps
and ~1500 fps at 96x96 (see DESIGN.md).
"""

from __future__ import annotations

import os
import weakref

# Headless default for offscreen GL; it must be set before mujoco is first imported.
if "DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

from tether.errors import RenderingUnavailableError, UnknownCameraError

_SLOW_FLAGS = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION)


class CameraRenderer:
    """Renders named model cameras to HxWx3 uint8 RGB, one cached mujoco.Renderer per size."""

    def __init__(self, model: mujoco.MjModel) -> None:
        self._model = model
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self.camera_names = [model.camera(i).name for i in range(model.ncam)]
        # Free GL contexts at interpreter exit too, while the GL bindings still exist
        # (OSMesa otherwise prints errors from mujoco.Renderer.__del__ during shutdown).
        weakref.finalize(self, _close_all, self._renderers)

    def render(self, data: mujoco.MjData, camera: str, width: int, height: int) -> np.ndarray:
        if camera not in self.camera_names:
            raise UnknownCameraError(camera, self.camera_names)
        renderer = self._renderer(width, height)
        renderer.update_scene(data, camera=camera)
        return renderer.render()

    def prepare(self, width: int, height: int) -> None:
        """Create the GL context for this size now rather than at the first frame."""
        self._renderer(width, height)

    def close(self) -> None:
        _close_all(self._renderers)

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (width, height)
        if key not in self._renderers:
            self._renderers[key] = self._create(width, height)
        return self._renderers[key]

    def _create(self, width: int, height: int) -> mujoco.Renderer:
        # The offscreen buffer must hold the largest image asked for.
        vis = self._model.vis.global_
        vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
        self._model.vis.quality.offsamples = 0
        try:
            renderer = mujoco.Renderer(self._model, height=height, width=width)
        except Exception as exc:  # mujoco raises FatalError/RuntimeError/ImportError by backend
            raise rendering_unavailable(exc) from exc
        for flag in _SLOW_FLAGS:
            renderer.scene.flags[flag] = False
        return renderer


def _close_all(renderers: dict[tuple[int, int], mujoco.Renderer]) -> None:
    for renderer in renderers.values():
        renderer.close()
    renderers.clear()


def rendering_unavailable(exc: BaseException) -> RenderingUnavailableError:
    backend = os.environ.get("MUJOCO_GL", "(unset)")
    return RenderingUnavailableError(
        f"cannot create an offscreen OpenGL context with MUJOCO_GL={backend}: {exc}. "
        "Install the Debian packages libegl1 and libgl1 (for MUJOCO_GL=egl) or libosmesa6 "
        "(for MUJOCO_GL=osmesa), or try MUJOCO_GL=osmesa; valid MUJOCO_GL values: egl, osmesa, glfw."
    )
