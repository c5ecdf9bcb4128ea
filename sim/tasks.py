"""Tasks for the twin: what a task adds to the scene, how it randomizes a reset, when it succeeds.

Tasks are looked up by name in :data:`TASKS`; an unknown name raises UnknownTaskError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

# Headless default for offscreen GL; it must be set before mujoco is first imported.
if "DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

from tether.errors import UnknownTaskError
from tether.robot_profile import RobotProfile


@dataclass(frozen=True)
class Outcome:
    """Where an episode stands: the success conditions it misses (none: success) and how far
    the object is from the target, so a failed evaluation says why it failed."""

    missed: tuple[str, ...]
    distance_m: float  # object centre to target centre, in the table plane

    @property
    def success(self) -> bool:
        return not self.missed

    def as_dict(self) -> dict[str, object]:
        return {"success": self.success, "missed": list(self.missed), "distance_m": round(self.distance_m, 4)}


class Task(Protocol):
    @property
    def name(self) -> str: ...

    def add_to_spec(self, spec: mujoco.MjSpec, profile: RobotProfile) -> None: ...

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None: ...

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool: ...

    def outcome(self, model: mujoco.MjModel, data: mujoco.MjData, complete: bool = True) -> Outcome: ...

    def object_pose(self, model: mujoco.MjModel, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]: ...

    def target_position(self, model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray: ...


@dataclass(frozen=True)
class Region:
    """Axis-aligned xy rectangle on the table, in the robot base frame."""

    x: tuple[float, float]
    y: tuple[float, float]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(*self.x), rng.uniform(*self.y)])

    def contains(self, xy: np.ndarray) -> bool:
        return bool(self.x[0] <= xy[0] <= self.x[1] and self.y[0] <= xy[1] <= self.y[1])


@dataclass(frozen=True)
class PickPlace:
    """Pick a small cube and put it down inside a flat target disc.

    Regions lie 0.16-0.28 m in front of the base, where the SO-101 reaches with a top-down grasp.
    """

    name: str = "pick_place"
    cube_half: float = 0.014          # 2.8 cm cube: the SO-101 jaw opens to ~8 cm at the tips
    cube_mass: float = 0.03           # kg (light PLA cube)
    cube_region: Region = Region(x=(0.17, 0.26), y=(-0.08, 0.08))
    target_region: Region = Region(x=(0.17, 0.27), y=(-0.13, 0.13))
    target_radius: float = 0.04
    min_separation: float = 0.09      # cube centre to target centre at spawn
    rest_speed: float = 0.05          # m/s: the cube must be (nearly) at rest
    rest_height_tol: float = 0.01     # m above resting on the table

    # -- scene --------------------------------------------------------------------------------
    def add_to_spec(self, spec: mujoco.MjSpec, profile: RobotProfile) -> None:
        base = np.asarray(profile.base_pos, float)
        cube = spec.worldbody.add_body(name="cube", pos=[*(base[:2] + 0.2), self.cube_half])
        cube.add_freejoint(name="cube_free")
        cube.add_geom(name="cube", type=mujoco.mjtGeom.mjGEOM_BOX, size=[self.cube_half] * 3,
                      mass=self.cube_mass, rgba=[0.85, 0.15, 0.1, 1.0], contype=1, conaffinity=3,
                      condim=4, friction=[1.0, 0.01, 0.0005], solref=[0.01, 1.0],
                      solimp=[0.95, 0.99, 0.001, 0.5, 2.0])
        # A mocap body, so reset can move it (static bodies get fused into the world).
        target = spec.worldbody.add_body(name="target", pos=[*(base[:2] + [0.2, 0.1]), 0.0], mocap=True)
        target.add_geom(name="target_zone", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                        size=[self.target_radius, 0.0008, 0], pos=[0, 0, 0.0008], contype=0, conaffinity=0,
                        rgba=[0.1, 0.75, 0.25, 0.9])
        target.add_site(name="target", size=[0.005, 0, 0], group=4)

    # -- episode ------------------------------------------------------------------------------
    def reset(self, model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None:
        base = self._base_xy(model)
        cube_xy = self.cube_region.sample(rng)
        target_xy = self.target_region.sample(rng)
        while np.linalg.norm(target_xy - cube_xy) < self.min_separation:
            target_xy = self.target_region.sample(rng)
        yaw = rng.uniform(-np.pi / 4, np.pi / 4)  # a cube looks the same every quarter turn
        adr = model.jnt_qposadr[model.joint("cube_free").id]
        data.qpos[adr:adr + 3] = [*(base + cube_xy), self.cube_half]
        data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        data.qvel[model.jnt_dofadr[model.joint("cube_free").id]:][:6] = 0.0
        data.mocap_pos[model.body("target").mocapid[0]] = [*(base + target_xy), 0.0]

    # Success conditions, in the order a failure lists them; "held" (a contact walk) is last.
    CONDITIONS = ("outside_target", "not_resting", "moving", "held")

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        # Called every control tick in evaluation: skip the contact walk once a cheap condition fails.
        return self.outcome(model, data, complete=False).success

    def outcome(self, model: mujoco.MjModel, data: mujoco.MjData, complete: bool = True) -> Outcome:
        """Released, resting and still inside the target disc; otherwise which of those fail
        (with ``complete`` False, ``held`` is only checked when the others pass)."""
        pos, _ = self.object_pose(model, data)
        distance = float(np.linalg.norm(pos[:2] - self.target_position(model, data)[:2]))
        cheap = (distance > self.target_radius, pos[2] > self.cube_half + self.rest_height_tol,
                 np.linalg.norm(self._cube_velocity(model, data)[:3]) > self.rest_speed)
        missed = [name for name, failed in zip(self.CONDITIONS, cheap) if failed]
        if (complete or not missed) and self.held(model, data):
            missed.append("held")
        return Outcome(tuple(missed), distance)

    def held(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        """True while the cube touches any moving body (the robot, e.g. a jaw pad)."""
        cube = model.geom("cube").id
        for c in data.contact[: data.ncon]:
            g1, g2 = int(c.geom1), int(c.geom2)
            if cube in (g1, g2) and model.geom_bodyid[g2 if g1 == cube else g1] != 0:
                return True
        return False

    def object_pose(self, model: mujoco.MjModel, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        adr = model.jnt_qposadr[model.joint("cube_free").id]
        return data.qpos[adr:adr + 3].copy(), data.qpos[adr + 3:adr + 7].copy()

    def target_position(self, model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
        return data.mocap_pos[model.body("target").mocapid[0]].copy()

    def _cube_velocity(self, model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
        adr = model.jnt_dofadr[model.joint("cube_free").id]
        return data.qvel[adr:adr + 6].copy()

    @staticmethod
    def _base_xy(model: mujoco.MjModel) -> np.ndarray:
        # Regions are relative to the robot base; the model builder stores base_pos as a numeric.
        return model.numeric("tether_base_pos").data[:2].copy()


TASKS: dict[str, Task] = {"pick_place": PickPlace()}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(name, task_names()) from None
