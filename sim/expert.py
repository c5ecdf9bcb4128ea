"""Scripted pick-and-place expert: privileged cube and target poses in, joint targets out.

    expert = PickPlaceExpert(load_profile("so101"))
    expert.reset()
    while ...:  # every 1 / expert.control_hz seconds
        q_target = expert.act(q, cube_pos, cube_quat, target_pos, t)

The expert plans in Cartesian space. A *grasp pose* is the point midway between the jaws at
fingertip height (the grasp centre), the approach axis tilted outward from straight down inside
the arm's vertical plane, and the yaw of the jaws' closing axis. Each phase names a goal grasp
pose; bounded-acceleration trackers move the commanded pose toward it, and IK seeded with the
last solution turns that into joint targets, so the joints move smoothly and continuously.

It is closed loop: every call re-reads the cube, so the descent follows a cube that moves, a cube
that is not between the jaws after the grasp (or slips out later) sends the expert back to the
approach, and a cube that does not end up on the target is picked up again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from tether.kinematics import Kinematics
from tether.robot_profile import RobotProfile

DOWN = np.array([0.0, 0.0, -1.0])


@dataclass(frozen=True)
class ExpertConfig:
    """Heights are of the grasp centre (fingertip level) above the table, in metres."""

    control_hz: float = 30.0
    cube_half: float = 0.014           # the task's cube: 2.8 cm
    hover_height: float = 0.055        # approach and carry: a held cube's bottom clears 4.5 cm
    grasp_height: float = 0.008        # the pads reach 3 mm below the tips: 5 mm above the table
    place_clearance: float = 0.004     # cube bottom above the table when the jaws open
    jaw_clearance: float = 0.004       # the fixed jaw passes this far from the cube face
    transit_speed: float = 0.25        # m/s
    fine_speed: float = 0.08           # m/s near the table (descend, lift, lower, retreat)
    accel: float = 0.6                 # m/s^2
    turn_speed: float = 1.5            # rad/s, tilt and yaw
    turn_accel: float = 4.0            # rad/s^2
    joint_speed: float = 1.5           # rad/s: arm joints as planned (half the SO-101 limit)
    open_fraction: float = 0.75        # of the gripper range: the SO-101 jaw clears the cube by ~8 mm
    gripper_speed: float = 2.5         # rad/s
    gripper_accel: float = 10.0        # rad/s^2
    max_lead: float = 0.3              # rad ahead of the measured joints (the ROS gate allows 0.35)
    speed_cap_fraction: float = 0.9    # of each joint's max_velocity: a hard cap on the output
    arrive_tol: float = 0.006          # m, measured grasp centre to the goal
    in_hand_tol: float = 0.02          # m, cube centre to where a held cube sits
    place_tol: float = 0.03            # m: a cube left further than this from the target is re-picked


@dataclass(frozen=True)
class Goal:
    """What a phase asks for this tick. ``yaw`` None keeps the current yaw."""

    center: np.ndarray
    speed: float
    gripper: float
    yaw: float | None = None


class Tracker:
    """Moves a point toward a (possibly moving) goal with bounded speed and acceleration.

    The speed is also capped so that braking at ``accel`` stops on the goal.
    """

    def __init__(self, x: np.ndarray, speed: float, accel: float) -> None:
        self.x = np.array(x, dtype=float)
        self.v = np.zeros_like(self.x)
        self.speed, self.accel = speed, accel

    def step(self, goal: np.ndarray, dt: float) -> np.ndarray:
        error = np.asarray(goal, float) - self.x
        dist = float(np.linalg.norm(error))
        cap = min(self.speed, np.sqrt(2.0 * self.accel * dist))
        wanted = error / dist * cap if dist > 1e-12 else np.zeros_like(error)
        self.v = self.v + _clip_norm(wanted - self.v, self.accel * dt)
        slow = np.linalg.norm(self.v) <= self.accel * dt  # may stop dead without a jolt
        if slow and np.linalg.norm(self.v) * dt >= dist:
            self.x, self.v = np.array(goal, dtype=float), np.zeros_like(self.x)
        else:
            self.x = self.x + self.v * dt
        return self.x

    def at(self, goal: np.ndarray) -> bool:
        return bool(np.linalg.norm(np.asarray(goal) - self.x) < 1e-4 and np.linalg.norm(self.v) < 1e-3)


class GraspKinematics:
    """Grasp poses <-> joints for a 5-DoF arm (pan, three pitch joints, wrist roll) and gripper.

    The SO-101 ee frame sits on the fixed jaw's inner face, x pointing away from the moving jaw,
    z along the approach axis (parallel to the wrist-roll axis). The arm's vertical plane turns
    with shoulder_pan, so any tilt inside that plane combined with any yaw (wrist_roll) is
    reachable, and nothing else is: the target rotation is built in that plane.
    """

    def __init__(self, kinematics: Kinematics, center_offset: float) -> None:
        self.kin = kinematics
        self.offset = center_offset  # ee frame to grasp centre, along -x
        names = kinematics.joint_names
        self.pan, self.roll = names.index("shoulder_pan"), names.index("wrist_roll")
        self.pan_sign = self._pan_direction()
        self.passes = (3, 3, 3, 10)  # IK iterations per pass; worst case about 2 ms in all

    def bearing(self, q: np.ndarray) -> float:
        """Direction of the arm's vertical plane seen from above (rad, world frame)."""
        return float(self.pan_sign * q[self.pan])

    def rotation(self, tilt: float, yaw: float, bearing: float) -> np.ndarray:
        outward = np.array([np.cos(bearing), np.sin(bearing), 0.0])
        z = np.cos(tilt) * DOWN + np.sin(tilt) * outward
        x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        x = x - z * (x @ z)
        x /= np.linalg.norm(x)
        return np.column_stack([x, np.cross(z, x), z])

    def solve(self, center: np.ndarray, tilt: float, yaw: float, seed: np.ndarray) -> np.ndarray:
        """Joints for the grasp pose, continuous with ``seed``.

        The target rotation depends on the arm plane, i.e. on the pan the solve ends at: short
        passes alternate rebuilding it from the latest pan and solving, until the pan settles.
        Tolerances are tight (0.1 mm, 0.06 deg): with loose ones the joints stay still until the
        error passes the tolerance, then jump (stair-step targets, acceleration spikes).
        """
        q = seed
        for iters in self.passes:
            pan = q[self.pan]
            rot = self.rotation(tilt, yaw, self.bearing(q))
            result = self.kin.ik(center + self.offset * rot[:, 0], rot, q, max_iters=iters,
                                 pos_tol=1e-4, rot_tol=1e-3)
            q = result.q
            if result.converged and abs(q[self.pan] - pan) < 1e-4:
                break
        return q

    def pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp centre and ee rotation for joints ``q``."""
        ee = self.kin.fk(q)
        return ee.translation - self.offset * ee.rotation[:, 0], ee.rotation.copy()

    def tilt_and_yaw(self, q: np.ndarray) -> tuple[float, float]:
        """Inverse of :meth:`rotation`: the yaw is that of the horizontal vector in span(x, z)."""
        rot = self.kin.fk(q).rotation
        z, x = rot[:, 2], rot[:, 0]
        outward = np.array([np.cos(self.bearing(q)), np.sin(self.bearing(q)), 0.0])
        horizontal = x - x[2] / z[2] * z  # z is never horizontal: tilts stay far below 90 degrees
        return float(np.arctan2(z @ outward, -z[2])), float(np.arctan2(horizontal[1], horizontal[0]))

    def _pan_direction(self) -> float:
        """+1 if a positive shoulder_pan turns the arm counter-clockwise seen from above."""
        q = self.kin.profile.home.copy()
        q[self.pan] = 0.0
        a = self.kin.fk(q).translation
        q[self.pan] = 0.3
        b = self.kin.fk(q).translation
        return 1.0 if a[0] * b[1] - a[1] * b[0] > 0 else -1.0


class SagCompensation:
    """Feed-forward for position servos: command q + g(q) / kp, so the arm settles *at* q.

    A P-servo holding an arm against gravity settles short of its target by torque / kp: about
    6 mm at the fingertips of an SO-101 reaching out, more than the 4 mm jaw clearance.
    """

    def __init__(self, kinematics: Kinematics, profile: RobotProfile) -> None:
        model = kinematics.model
        self._model, self._data = model, model.createData()
        ids = [model.getJointId(n) for n in profile.joint_names]
        self._idx_q = np.array([model.joints[i].idx_q for i in ids])
        self._idx_v = np.array([model.joints[i].idx_v for i in ids])
        self._q = pin.neutral(model)
        self._gain = np.full(len(ids), 1.0 / profile.servo.kp)
        if profile.gripper is not None:
            self._gain[profile.joint_index(profile.gripper.joint)] = 0.0  # its target is a squeeze

    def __call__(self, q: np.ndarray) -> np.ndarray:
        self._q[self._idx_q] = q
        gravity = pin.computeGeneralizedGravity(self._model, self._data, self._q)
        return q + gravity[self._idx_v] * self._gain


def approach_tilt(center: np.ndarray) -> float:
    """Outward tilt of the approach axis for a grasp centre (base frame): 0 where possible.

    Straight down is out of reach high up and far out (wrist_flex hits its limit). This is a fit
    of the smallest reachable tilt over the SO-101 workspace (r 0.16-0.33 m, z 0-0.14 m, any
    yaw; within 6 degrees) plus a 12 degree margin.
    """
    r = float(np.hypot(center[0], center[1])) - 0.24
    z = float(center[2]) - 0.06
    smallest = -4.0 + 182.0 * r + 311.0 * z - 2357.0 * r * z
    # A smooth max(0, .) (softplus, 2 degree knee): a kink jolts the joints where the tilt hits 0.
    wanted = 2.0 * np.logaddexp(0.0, (smallest + 12.0) / 2.0)
    return float(np.deg2rad(min(wanted, 35.0)))


def cube_yaw(quat: np.ndarray) -> float:
    """Yaw (meaningful mod 90 degrees) of the cube's side faces, whichever face it rests on."""
    w, x, y, z = quat
    rot = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    side = rot[:, int(np.argmin(np.abs(rot[2])))]  # the most horizontal face normal
    return float(np.arctan2(side[1], side[0]))


class GraspYaw:
    """Picks the closing-axis yaw for a cube: a face normal (four choices), reachable in roll.

    Straight down, yaw = wrist_roll + bearing + c. Yaws here are unwrapped so that this holds
    without 2 pi jumps: the tracked yaw then tells the roll which way to turn.
    """

    def __init__(self, grasp: GraspKinematics, profile: RobotProfile, margin: float = 0.15) -> None:
        self.grasp = grasp
        self.lower = profile.lower[grasp.roll] + margin
        self.upper = profile.upper[grasp.roll] - margin
        self.offset = self._calibrate(profile)

    def of_joints(self, q: np.ndarray) -> float:
        return float(q[self.grasp.roll] + self.grasp.bearing(q) + self.offset)

    def choose(self, faces: float, cube: np.ndarray, roll_now: float) -> float:
        """Of the face normals, the one needing the least wrist roll travel within the limits."""
        options = []
        for k in range(4):
            yaw = faces + k * np.pi / 2
            roll = self._roll_for(yaw, cube)
            turns = np.round((roll_now - roll) / (2 * np.pi))
            for n in (turns - 1, turns, turns + 1):
                if self.lower <= roll + 2 * np.pi * n <= self.upper:
                    options.append((abs(roll + 2 * np.pi * n - roll_now), yaw + 2 * np.pi * n))
        if not options:
            raise ValueError("the wrist_roll range spans less than 90 degrees: no grasp yaw fits")
        return min(options)[1]

    def follow(self, yaw: float, faces: float, cube: np.ndarray, roll_now: float) -> float:
        """Track a turning cube on the chosen branch; choose again if that leaves the roll range."""
        yaw += _wrap_quarter(faces - yaw)
        if self.lower <= self._roll_for(yaw, cube) <= self.upper:
            return yaw
        return self.choose(faces, cube, roll_now)

    def _roll_for(self, yaw: float, cube: np.ndarray) -> float:
        """wrist_roll for ``yaw`` straight down over the cube (the arm then points at it)."""
        return yaw - float(np.arctan2(cube[1], cube[0])) - self.offset

    def _calibrate(self, profile: RobotProfile) -> float:
        """The constant c, from one straight-down solve."""
        q = self.grasp.kin.ik(np.array([0.2, 0.0, 0.03]), None, profile.home, axis=DOWN, restarts=5).q
        _, yaw = self.grasp.tilt_and_yaw(q)
        c = yaw - q[self.grasp.roll] - self.grasp.bearing(q)
        return float((c + np.pi) % (2 * np.pi) - np.pi)


class Motion:
    """Commanded grasp pose and gripper -> smooth, limited joint targets. One per episode."""

    def __init__(self, q: np.ndarray, grasp: GraspKinematics, yaw: GraspYaw, sag: SagCompensation,
                 profile: RobotProfile, config: ExpertConfig) -> None:
        self.grasp, self.sag, self.cfg = grasp, sag, config
        self.profile = profile
        self.grip = profile.joint_index(profile.gripper.joint) if profile.gripper else -1
        self.arm = np.array([profile.joint_index(n) for n in profile.arm_joint_names])
        self.speed_cap = profile.max_velocity * config.speed_cap_fraction
        center, _ = grasp.pose(q)
        tilt, yaw_now = grasp.tilt_and_yaw(q)
        yaw_now += 2 * np.pi * np.round((yaw.of_joints(q) - yaw_now) / (2 * np.pi))
        self.center = Tracker(center, config.transit_speed, config.accel)
        self.angles = Tracker(np.array([tilt, yaw_now]), config.turn_speed, config.turn_accel)
        self.gripper = Tracker(q[self.grip:self.grip + 1], config.gripper_speed, config.gripper_accel)
        self.q_ik = q.copy()
        self.q_out = q.copy()
        self.sag_blend = 0.0  # feed-forward fades in: a step would jolt the joints at the start

    @property
    def yaw(self) -> float:
        return float(self.angles.x[1])

    def step(self, goal: Goal, q: np.ndarray, dt: float) -> np.ndarray:
        cfg = self.cfg
        self.center.speed = goal.speed
        self.q_ik = self._move_pose(goal.center, self.yaw if goal.yaw is None else goal.yaw, dt)
        self.sag_blend = min(1.0, self.sag_blend + dt / 0.3)
        wanted = self.q_ik + self.sag_blend * (self.sag(self.q_ik) - self.q_ik)
        # Chase the gripper goal no further than max_lead from where the jaw is: a squeeze on the
        # cube is then exactly max_lead, and the slow jaw servo never falls far behind the ramp.
        grip_goal = np.clip(goal.gripper, q[self.grip] - cfg.max_lead, q[self.grip] + cfg.max_lead)
        wanted[self.grip] = self.gripper.step(np.array([grip_goal]), dt)[0]
        # Safety net for the ROS gate: bounded joint speed, bounded lead over the measured state.
        out = self.q_out + np.clip(wanted - self.q_out, -self.speed_cap * dt, self.speed_cap * dt)
        out = np.clip(out, q - cfg.max_lead, q + cfg.max_lead)
        self.q_out = np.clip(out, self.profile.lower, self.profile.upper)
        return self.q_out.copy()

    def _move_pose(self, goal: np.ndarray, yaw_goal: float, dt: float) -> np.ndarray:
        """Advance the commanded grasp pose one tick and solve IK for it.

        Where the arm must reconfigure a lot for a little Cartesian motion (leaving the tilted
        home pose, say), the step is shortened so that no arm joint exceeds ``joint_speed``.
        """
        before = [(t, t.x.copy()) for t in (self.center, self.angles)]
        center = self.center.step(goal, dt)
        tilt, yaw = self.angles.step(np.array([approach_tilt(center), yaw_goal]), dt)
        q = self.grasp.solve(center, tilt, yaw, self.q_ik)
        travel = float(np.max(np.abs(q[self.arm] - self.q_ik[self.arm])))
        ratio = travel / (self.cfg.joint_speed * max(dt, 1e-6))
        if ratio <= 1.0:
            return q
        for tracker, x0 in before:
            tracker.x = x0 + (tracker.x - x0) / ratio
            tracker.v = tracker.v / ratio
        return self.grasp.solve(self.center.x, float(self.angles.x[0]), float(self.angles.x[1]), self.q_ik)


class PickPlaceExpert:
    """approach -> descend -> close -> lift -> carry -> lower -> release -> retreat -> done.

    An episode that starts with the cube between the jaws (a takeover) starts at "lift".
    Any phase after the grasp falls back to "approach" when the cube is not between the jaws;
    "done" does too when the cube is not on the target.
    """

    def __init__(self, profile: RobotProfile, kinematics: Kinematics | None = None,
                 config: ExpertConfig | None = None) -> None:
        if profile.gripper is None:
            raise ValueError(f"profile '{profile.name}' has no gripper to pick with")
        self.profile = profile
        self.config = cfg = config or ExpertConfig()
        self.control_hz: float = cfg.control_hz
        kinematics = kinematics or Kinematics(profile)
        self.grasp = GraspKinematics(kinematics, cfg.cube_half + cfg.jaw_clearance)
        self._yaws = GraspYaw(self.grasp, profile)
        self._sag = SagCompensation(kinematics, profile)
        grip = profile.gripper
        self._grip = profile.joint_index(grip.joint)
        # Open only as far as the cube needs: the jaw servo is slow, closing costs less from here.
        self._open = grip.closed + cfg.open_fraction * (grip.open - grip.closed)
        self._closed = grip.closed
        self._base = np.asarray(profile.base_pos, dtype=float)
        self._motion: Motion | None = None
        self._t = 0.0  # time of the last act()
        self.reset()

    # -- public ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the episode; the next act() starts from the measured joints."""
        self.phase = "approach"
        self._motion = None

    def act(self, q: np.ndarray, object_pos: np.ndarray, object_quat: np.ndarray,
            target_pos: np.ndarray, t: float) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        starting = self._motion is None or t < self._t
        if starting:
            self._start(q, t)
        dt = float(np.clip(t - self._t, 0.0, 0.1))
        self._t = t
        self._observe(q, np.asarray(object_pos, float), np.asarray(object_quat, float),
                      np.asarray(target_pos, float), dt)
        if starting and self._cube_in_hand():  # taking over a held cube (a correction): do not drop it
            over = np.linalg.norm(self._cube[:2] - self._target[:2]) <= self.config.place_tol
            self._enter("lower" if over else "lift")  # over the target already: put it down there
        goal = getattr(self, f"_phase_{self.phase}")()
        return self._moving.step(goal, q, dt)

    # -- episode state -----------------------------------------------------------------------------
    def _start(self, q: np.ndarray, t: float) -> None:
        self._motion = Motion(q, self.grasp, self._yaws, self._sag, self.profile, self.config)
        self._t = self._phase_start = t
        self._q = q.copy()
        self._grip_speed = 0.0
        self._grasp_yaw: float | None = None
        self._latched: np.ndarray | None = None
        self.phase = "approach"

    def _observe(self, q: np.ndarray, cube: np.ndarray, quat: np.ndarray, target: np.ndarray,
                 dt: float) -> None:
        if dt > 0:
            self._grip_speed = (q[self._grip] - self._q[self._grip]) / dt
        self._q = q
        # World poses into the robot base frame (profiles place the base without rotation).
        self._cube, self._cube_quat, self._target = cube - self._base, quat, target - self._base
        self._measured_center, self._measured_rot = self.grasp.pose(q)

    @property
    def _moving(self) -> Motion:
        assert self._motion is not None, "act() starts the episode"
        return self._motion

    @property
    def _commanded(self) -> Tracker:
        return self._moving.center

    def _cube_in_hand(self) -> bool:
        """Cube between the jaws: at the grasp centre, a little above the tips, jaws not shut."""
        cfg = self.config
        local = self._measured_rot.T @ (self._cube - self._measured_center)
        expected = np.array([0.0, 0.0, -(cfg.cube_half - cfg.grasp_height)])
        near = np.linalg.norm(local - expected) < cfg.in_hand_tol
        return bool(near and self._q[self._grip] > self._closed + 0.08)

    def _enter(self, phase: str) -> None:
        self.phase, self._phase_start = phase, self._t
        self._latched = None

    def _elapsed(self) -> float:
        return self._t - self._phase_start

    def _arrived(self, goal: np.ndarray) -> bool:
        """Commanded pose on the goal and the arm there too."""
        close = np.linalg.norm(self._measured_center - goal) < self.config.arrive_tol
        return self._commanded.at(goal) and bool(close)

    # -- phases: each returns this tick's goal and may move on -------------------------------------
    def _phase_approach(self) -> Goal:
        goal = self._hover_over(self._cube[:2])
        yaw = self._track_cube_yaw()
        opened = self._q[self._grip] > self._open - 0.15
        if self._arrived(goal) and opened and abs(self._moving.yaw - yaw) < 0.03:
            self._enter("descend")
        return Goal(self._rise_first(goal), self.config.transit_speed, self._open, yaw)

    def _phase_descend(self) -> Goal:
        cfg = self.config
        goal = np.array([*self._cube[:2], cfg.grasp_height])  # follows the cube down
        yaw = self._track_cube_yaw()
        if np.linalg.norm(self._cube[:2] - self._commanded.x[:2]) > 0.02 or self._elapsed() > 3.0:
            self._enter("approach")  # the cube got pushed away (or a jaw sits on it): again
        elif self._arrived(goal):
            self._enter("close")
        return Goal(goal, cfg.fine_speed, self._open, yaw)

    def _phase_close(self) -> Goal:
        stalled = self._elapsed() > 0.3 and abs(self._grip_speed) < 0.1  # on the cube, or shut
        if stalled or self._elapsed() > 1.5:
            self._enter("lift" if self._q[self._grip] > self._closed + 0.08 else "approach")
        return Goal(self._hold(), self.config.fine_speed, self._closed)

    def _phase_lift(self) -> Goal:
        goal = self._hover_over(self._hold()[:2])
        if self._elapsed() > 0.3 and not self._cube_in_hand():
            self._enter("approach")
        elif self._arrived(goal):
            self._enter("carry")
        return Goal(goal, self.config.fine_speed, self._closed)

    def _phase_carry(self) -> Goal:
        # Aim the cube, not the grasp centre, at the target: the grasp may hold it off-centre.
        held_offset = self._cube[:2] - self._measured_center[:2]
        goal = self._hover_over(self._target[:2] - held_offset)
        if not self._cube_in_hand():
            self._enter("approach")
        elif self._arrived(goal):
            self._enter("lower")
        return Goal(goal, self.config.transit_speed, self._closed)

    def _phase_lower(self) -> Goal:
        cfg = self.config
        if self._latched is None:
            # Latched: while held, the cube's height below the grasp centre does not change.
            drop = self._cube[2] - (cfg.cube_half + cfg.place_clearance)
            self._latched = np.array([*self._commanded.x[:2], self._measured_center[2] - drop])
        if not self._cube_in_hand():
            self._enter("approach")
        elif self._arrived(self._latched) or self._elapsed() > 2.0:
            self._enter("release")
        return Goal(self._latched, cfg.fine_speed, self._closed)

    def _phase_release(self) -> Goal:
        if self._elapsed() > 0.4:
            self._enter("retreat")
        return Goal(self._hold(), self.config.fine_speed, self._open)

    def _phase_retreat(self) -> Goal:
        goal = self._hover_over(self._hold()[:2])
        if self._arrived(goal):
            self._enter("done")
        return Goal(goal, self.config.fine_speed, self._open)

    def _phase_done(self) -> Goal:
        off_target = np.linalg.norm(self._cube[:2] - self._target[:2]) > self.config.place_tol
        if self._elapsed() > 0.3 and off_target:
            self._grasp_yaw = None  # a fresh pick: choose the yaw again
            self._enter("approach")
        return Goal(self._hold(), self.config.transit_speed, self._open)

    # -- goal helpers ------------------------------------------------------------------------------
    def _hover_over(self, xy: np.ndarray) -> np.ndarray:
        return np.array([xy[0], xy[1], self.config.hover_height])

    def _hold(self) -> np.ndarray:
        """Where the commanded pose was when the phase began."""
        if self._latched is None:
            self._latched = self._commanded.x.copy()
        return self._latched

    def _rise_first(self, goal: np.ndarray) -> np.ndarray:
        """From low down, go straight up before moving sideways, so the jaws clear the cube."""
        here = self._commanded.x
        low = here[2] < goal[2] - 0.01
        away = np.linalg.norm(here[:2] - goal[:2]) > 0.01
        return np.array([here[0], here[1], goal[2]]) if low and away else goal

    def _track_cube_yaw(self) -> float:
        faces = cube_yaw(self._cube_quat)
        roll_now = float(self._moving.q_ik[self.grasp.roll])
        if self._grasp_yaw is None:
            self._grasp_yaw = self._yaws.choose(faces, self._cube, roll_now)
        else:
            self._grasp_yaw = self._yaws.follow(self._grasp_yaw, faces, self._cube, roll_now)
        return self._grasp_yaw


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


def _wrap_quarter(a: float) -> float:
    """Angle difference modulo 90 degrees, in [-45, 45)."""
    return float((a + np.pi / 4) % (np.pi / 2) - np.pi / 4)
