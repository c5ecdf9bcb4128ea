"""Forward kinematics, Jacobians and damped-least-squares IK for one frame of a robot.

All vectors are in the *profile's* joint order (the full profile vector, gripper
included), whatever order the URDF uses. URDF joints the profile does not
control (the Panda's fingers) are locked at 0 in a reduced pinocchio model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pinocchio as pin

from tether.errors import ConfigError, IKError, JointVectorError, UnknownFrameError, UnknownJointError
from tether.robot_profile import RobotProfile

_LWA = pin.ReferenceFrame.LOCAL_WORLD_ALIGNED


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray  # full profile vector; joints IK may not move keep their seed values
    pos_err: float  # metres
    rot_err: float  # radians: full-rotation angle, or the z-axis angle in axis mode (0 if position-only)
    converged: bool
    iters: int


class Kinematics:
    """Kinematics of one frame (default: the profile's end effector)."""

    def __init__(self, profile: RobotProfile, frame: str | None = None) -> None:
        self.profile = profile
        self.joint_names: list[str] = profile.joint_names
        self.lower = profile.lower
        self.upper = profile.upper
        self.model = _reduced_model(profile)
        self.data = self.model.createData()
        self.frame = frame or profile.ee_frame
        self._fid = self._frame_id(self.frame)
        # Column/slot of each profile joint in the model's q and v vectors.
        self._idx_q = np.array([self._joint(n).idx_q for n in self.joint_names])
        self._idx_v = np.array([self._joint(n).idx_v for n in self.joint_names])
        self._q_model = pin.neutral(self.model)

    @property
    def frames(self) -> list[str]:
        return [f.name for f in self.model.frames if f.name != "universe"]

    # ------------------------------------------------------------------ FK / Jacobian

    def fk(self, q: np.ndarray) -> pin.SE3:
        """Pose of the frame in the world (a copy: safe to keep)."""
        pin.framesForwardKinematics(self.model, self.data, self._to_model(q))
        return pin.SE3(self.data.oMf[self._fid])

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """6 x n frame Jacobian, LOCAL_WORLD_ALIGNED (linear; angular), profile column order."""
        qm = self._to_model(q)
        pin.computeJointJacobians(self.model, self.data, qm)
        pin.updateFramePlacements(self.model, self.data)
        return pin.getFrameJacobian(self.model, self.data, self._fid, _LWA)[:, self._idx_v]

    # ------------------------------------------------------------------ IK

    def ik(
        self,
        target_pos: np.ndarray,
        target_rot: np.ndarray | None,
        q0: np.ndarray,
        *,
        axis: np.ndarray | None = None,
        active: list[str] | None = None,
        pos_tol: float = 1e-3,
        rot_tol: float = np.deg2rad(1.0),
        rot_weight: float = 0.2,
        max_iters: int = 100,
        damping: float = 1e-3,
        max_step: float = 0.3,
        restarts: int = 0,
        seed: int = 0,
    ) -> IKResult:
        """Solve for a pose of the frame near ``q0``, staying within joint limits.

        Modes: ``target_rot`` (3x3) constrains the full orientation; ``axis``
        (world vector) only aligns the frame's z-axis with it — a top-down grasp
        is ``axis=(0, 0, -1)``, leaving yaw free for a 5-DOF arm; neither gives
        position-only IK. ``rot_weight`` is metres per radian: how much a radian
        of orientation error counts against a metre of position error.
        ``restarts`` retries from random in-limit seeds if the first solve fails
        (off by default so a closed loop gets a solution continuous with ``q0``).
        """
        if target_rot is not None and axis is not None:
            raise ValueError("give target_rot or axis, not both")
        goal = _Goal(np.asarray(target_pos, float), _maybe(target_rot, (3, 3)), _unit(axis))
        cols = self._active_columns(active)
        q0 = self._checked(q0).copy()
        best = self._solve(goal, q0, cols, pos_tol, rot_tol, rot_weight, max_iters, damping, max_step)
        rng = np.random.default_rng(seed)
        for _ in range(restarts):
            if best.converged:
                break
            start = q0.copy()
            start[cols] = rng.uniform(self.lower[cols], self.upper[cols])
            result = self._solve(goal, start, cols, pos_tol, rot_tol, rot_weight, max_iters, damping, max_step)
            if _score(result, rot_weight) < _score(best, rot_weight):
                best = result
        return best

    def solve_or_raise(
        self, target_pos: np.ndarray, target_rot: np.ndarray | None, q0: np.ndarray, **kw: Any
    ) -> np.ndarray:
        """Like :meth:`ik`, but return ``q`` or raise :class:`IKError` with the residuals."""
        result = self.ik(target_pos, target_rot, q0, **kw)
        if not result.converged:
            raise IKError(
                f"IK for frame '{self.frame}' did not converge after {result.iters} iterations: "
                f"position error {result.pos_err * 1000:.2f} mm, rotation error {np.rad2deg(result.rot_err):.2f} deg"
            )
        return result.q

    def _solve(self, goal: _Goal, q: np.ndarray, cols: np.ndarray, pos_tol: float, rot_tol: float,
               rot_weight: float, max_iters: int, damping: float, max_step: float) -> IKResult:
        for it in range(max_iters + 1):
            jac, err, pos_err, rot_err = self._residual(goal, q, cols, rot_weight)
            if pos_err < pos_tol and rot_err < rot_tol:
                return IKResult(q, pos_err, rot_err, True, it)
            if it == max_iters:
                break
            dq = self._limited_step(jac, err, q[cols], cols, damping)
            # Cap the step: far from the target the linearisation is poor and big steps oscillate.
            biggest = np.max(np.abs(dq))
            if biggest > max_step:
                dq *= max_step / biggest
            q[cols] = np.clip(q[cols] + dq, self.lower[cols], self.upper[cols])
        return IKResult(q, pos_err, rot_err, False, max_iters)

    def _residual(self, goal: _Goal, q: np.ndarray, cols: np.ndarray,
                  rot_weight: float) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Stacked task Jacobian (active columns) and error, plus the unweighted residuals."""
        full = self.jacobian(q)[:, cols]
        pose = self.data.oMf[self._fid]
        e_pos = goal.pos - pose.translation
        if goal.rot is not None:
            # World-frame rotation vector from the current to the target orientation.
            e_rot = pin.log3(goal.rot @ pose.rotation.T)
            rows = full[3:]
        elif goal.axis is not None:
            z = pose.rotation[:, 2]
            e_rot = _axis_error(z, goal.axis)
            # Spinning about z itself does not move z: drop that direction from the task.
            rows = full[3:] - np.outer(z, z @ full[3:])
        else:
            return full[:3], e_pos, float(np.linalg.norm(e_pos)), 0.0
        jac = np.vstack([full[:3], rot_weight * rows])
        err = np.concatenate([e_pos, rot_weight * e_rot])
        return jac, err, float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot))

    def _limited_step(self, jac: np.ndarray, err: np.ndarray, q: np.ndarray, cols: np.ndarray,
                      damping: float) -> np.ndarray:
        """DLS step; joints at a limit that the step pushes outward are frozen and the rest re-solved.

        Plain clipping would waste those joints' share of the step, and the
        solve would stall against the limit instead of using the other joints.
        """
        lam2 = damping**2 + 1e-3 * float(err @ err)  # more damping far from the goal (Levenberg-Marquardt style)
        free = np.ones(len(cols), bool)
        for _ in range(2):
            j = jac * free
            dq = j.T @ np.linalg.solve(j @ j.T + lam2 * np.eye(len(err)), err)
            pushing_out = ((q <= self.lower[cols] + 1e-9) & (dq < 0)) | ((q >= self.upper[cols] - 1e-9) & (dq > 0))
            if not np.any(pushing_out & free):
                break
            free &= ~pushing_out
        return dq * free

    # ------------------------------------------------------------------ helpers

    def _checked(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if q.shape != (len(self.joint_names),):
            raise JointVectorError(self.profile.name, q.shape, self.joint_names)
        return q

    def _to_model(self, q: np.ndarray) -> np.ndarray:
        self._q_model[self._idx_q] = self._checked(q)
        return self._q_model

    def _active_columns(self, active: list[str] | None) -> np.ndarray:
        names = self.profile.arm_joint_names if active is None else active
        for name in names:
            if name not in self.joint_names:
                raise UnknownJointError(f"IK active joints for '{self.profile.name}'", name, self.joint_names)
        return np.array([self.joint_names.index(n) for n in names], dtype=int)

    def _frame_id(self, name: str) -> int:
        if name == "universe" or not self.model.existFrame(name):
            raise UnknownFrameError(self.profile.name, name, self.frames)
        return self.model.getFrameId(name)

    def _joint(self, name: str) -> pin.JointModel:
        jid = self.model.getJointId(name)
        joint = self.model.joints[jid]
        if joint.nq != 1 or joint.nv != 1:
            raise ConfigError(f"joint '{name}' has nq={joint.nq}; only 1-DoF (revolute/prismatic) joints are supported")
        return joint


@dataclass(frozen=True)
class _Goal:
    pos: np.ndarray
    rot: np.ndarray | None
    axis: np.ndarray | None


def _reduced_model(profile: RobotProfile) -> pin.Model:
    """Pinocchio model of the URDF with every joint the profile does not control locked at 0."""
    full = pin.buildModelFromXML(profile.urdf_text())
    controlled = set(profile.joint_names)
    lock = [jid for jid in range(1, full.njoints) if full.names[jid] not in controlled]
    if not lock:
        return full
    return pin.buildReducedModel(full, lock, pin.neutral(full))


def _axis_error(z: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation vector turning ``z`` onto ``target`` (both unit), with its true angle as length.

    The plain cross product has length sin(angle), which shrinks again past
    90 degrees and vanishes when the axes are opposite.
    """
    cross = np.cross(z, target)
    s = np.linalg.norm(cross)
    angle = np.arctan2(s, z @ target)
    if s < 1e-9:
        if angle < 1.0:
            return np.zeros(3)
        # Opposite: any axis perpendicular to z will do.
        cross = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
        s = np.linalg.norm(cross)
    return cross / s * angle


def _score(result: IKResult, rot_weight: float) -> float:
    return result.pos_err + rot_weight * result.rot_err


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    v = _array(v, (3,))
    norm = np.linalg.norm(v)
    if norm < 1e-9:
        raise ValueError("axis must be a non-zero 3-vector")
    return v / norm


def _maybe(value: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    return None if value is None else _array(value, shape)


def _array(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"expected shape {shape}, got {arr.shape}")
    return arr
