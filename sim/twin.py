"""The MuJoCo digital twin: the one API the rest of tether codes against.

    with Twin(load_profile("so101"), "pick_place") as twin:
        twin.reset(seed=0)
        twin.set_targets(q)
        twin.step(ms=5.0)
        image = twin.render("front")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType

# Headless default for offscreen GL; it must be set before mujoco is first imported.
if "DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

from tether.errors import NoTaskError, UnknownCameraError
from tether.robot_profile import RobotProfile
from tether.sim.model import build_model
from tether.sim.rendering import CameraRenderer
from tether.sim.tasks import Outcome, Task, get_task, task_names


@dataclass(frozen=True)
class SceneState:
    """What a camera needs to draw the scene at one instant: copies, safe to hand to another thread."""

    time: float
    qpos: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray


class Twin:
    def __init__(
        self,
        profile: RobotProfile,
        task: str | None = "pick_place",
        *,
        timestep: float = 0.002,
        render_size: tuple[int, int] | None = None,
    ) -> None:
        self.profile = profile
        self.task_name = task
        self._task: Task | None = get_task(task) if task is not None else None
        self.model = build_model(profile, task)
        self.model.opt.timestep = timestep
        self.data = mujoco.MjData(self.model)
        self.joint_names = profile.joint_names
        self.camera_names = [c.name for c in profile.cameras]
        self._render_size = render_size  # (width, height) for every camera, else each camera's own
        self._lower, self._upper = profile.lower, profile.upper
        self._qpos_adr = np.array([self.model.jnt_qposadr[self.model.joint(n).id] for n in self.joint_names])
        self._dof_adr = np.array([self.model.jnt_dofadr[self.model.joint(n).id] for n in self.joint_names])
        self._act_ids = np.array([self.model.actuator(n).id for n in self.joint_names])
        self._ee_site = self.model.site(profile.ee_frame).id
        self._renderer = CameraRenderer(self.model)
        self.reset(0)

    # -- episode ------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Robot at home, at rest, targets at home; the task randomized from ``seed`` alone."""
        mujoco.mj_resetData(self.model, self.data)
        self._requested_time = 0.0
        home = self.profile.home
        self.data.qpos[self._qpos_adr] = home
        self.data.ctrl[self._act_ids] = home
        if self._task is not None:
            self._task.reset(self.model, self.data, np.random.default_rng(seed))
        mujoco.mj_forward(self.model, self.data)

    def set_targets(self, q: np.ndarray) -> None:
        """Joint position targets in profile order, clipped to the joint limits."""
        q = np.asarray(q, dtype=float)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"expected {len(self.joint_names)} targets for joints {self.joint_names}, got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            bad = [n for n, v in zip(self.joint_names, q) if not np.isfinite(v)]
            raise ValueError(f"non-finite joint targets for {bad}; refused")
        self.data.ctrl[self._act_ids] = np.clip(q, self._lower, self._upper)

    def targets(self) -> np.ndarray:
        return self.data.ctrl[self._act_ids].copy()

    def step(self, ms: float) -> None:
        """Advance the simulation by ``ms`` milliseconds.

        Physics moves in whole timesteps; a request that is not a multiple (5 ms at a 2 ms
        timestep, for a 200 Hz loop) is carried over, so sim time stays within half a timestep
        of the total requested since reset.
        """
        if not np.isfinite(ms) or ms < 0:
            raise ValueError(f"step must be a finite, non-negative number of ms, got {ms}")
        self._requested_time += ms / 1000.0
        n = int(round((self._requested_time - self.data.time) / self.model.opt.timestep))
        if n > 0:
            mujoco.mj_step(self.model, self.data, nstep=n)

    @property
    def time(self) -> float:
        return float(self.data.time)

    # -- state --------------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._dof_adr].copy()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector site position (3,) and rotation matrix (3, 3) in the world."""
        return self.data.site_xpos[self._ee_site].copy(), self.data.site_xmat[self._ee_site].reshape(3, 3).copy()

    def success(self) -> bool:
        return self._task.success(self.model, self.data) if self._task is not None else False

    def outcome(self) -> Outcome:
        """Success, or which success conditions the task misses right now (see ``Outcome``)."""
        return self._require_task().outcome(self.model, self.data)

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Cube position (3,) and quaternion wxyz (4,): privileged, for experts and metrics."""
        return self._require_task().object_pose(self.model, self.data)

    def target_position(self) -> np.ndarray:
        return self._require_task().target_position(self.model, self.data)

    def scene_state(self) -> SceneState:
        """A snapshot of the pose of everything a camera sees (for rendering off the physics thread)."""
        d = self.data
        return SceneState(float(d.time), d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy())

    # -- cameras ------------------------------------------------------------------------------
    def render_size(self, camera: str) -> tuple[int, int]:
        """(width, height) this twin renders ``camera`` at."""
        if camera not in self.camera_names:
            raise UnknownCameraError(camera, self.camera_names)
        spec = self.profile.camera(camera)
        return self._render_size or (spec.width, spec.height)

    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """HxWx3 uint8 RGB from a profile camera."""
        default_w, default_h = self.render_size(camera)
        return self._renderer.render(self.data, camera, width or default_w, height or default_h)

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        self._renderer.close()

    def __enter__(self) -> Twin:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _require_task(self) -> Task:
        if self._task is None:
            raise NoTaskError(task_names())
        return self._task
