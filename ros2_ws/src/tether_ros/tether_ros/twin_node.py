"""Twin node: the MuJoCo twin behind the same topics a real robot offers.

Publishes ``/joint_states`` (stamped with the simulated capture time), camera
images and CameraInfo for every profile camera, the cube and target poses on
``/tether/sim/*`` (privileged, for scripted experts only) and, optionally,
``/clock``. Executes JointTrajectory on the profile's command topic with
JointTrajectoryController semantics. Services: ``~/reset`` (next seed),
``~/success`` (its message: JSON with the conditions missed and the object's distance to the target)
and ``~/start``.

With ``hold_after_reset`` the world stands still after a reset (time passes, the scene does not
move, no frame is drawn) until ``~/start``: a session resets the twin, the sources, the gate and
the recorder one after another, and on a busy machine that chain took ~1 s of sim time, which the
episode's first frames then lacked. Held, episode time 0 is when everything is ready.

Physics is stepped to keep pace with the clock (real time); with
``publish_clock`` it runs free and drives ``/clock`` for ``use_sim_time`` graphs.

The control path never waits for rendering: cameras are drawn on a worker thread from state
snapshots (``tether.sim.camera_worker``) while joint states, poses and services go on. When the
worker falls behind, ``late_frames`` decides: ``slow_down`` (the default) holds sim time at the
frame instant until the camera has taken the previous frame, so every frame is drawn and the
simulated world runs slower than real time; ``skip`` keeps real time and drops the frame, counted.
A tick steps at most ``max_catchup_s`` of sim time; when the machine cannot keep real time, the
twin's time slips instead of piling up work, and ``/diagnostics`` says by how much
(``realtime_factor``, ``slipped_s``, ``frames_skipped``).
"""

from __future__ import annotations

import json
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock as RosClock
from rclpy.clock import ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import ConfigError
from tether.robot_profile import load_profile
from tether.safety import ChunkRejected, validate_chunk
from tether.sim.camera_worker import CameraWorker
from tether.sim.twin import Twin
from tether.trajectory import TrajectoryFollower
from tether_ros.conversions import (
    CLOCK,
    COMMAND_QOS,
    DIAGNOSTICS,
    IMAGE_WRITER_QOS,
    OBJECT_POSE,
    STATE_WRITER_QOS,
    TARGET_POSE,
    camera_topic,
    image_msg,
    joint_state_msg,
    status_name,
    to_stamp,
    trajectory_fields,
)
from tether_ros.publishing import DropTolerantPublisher, tolerant_publisher
from tether_ros.realtime import RealtimeThread, raise_process_nice
from tether_ros.spin import run


LATE_FRAMES = ("slow_down", "skip")


class TwinNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("twin", **kwargs)  # type: ignore[arg-type]
        p = self.declare_parameter
        self.profile = load_profile(str(p("robot", "so101").value))
        task = str(p("task", "pick_place").value) or None
        self.seed = int(p("seed", 0).value)
        self.state_period = 1.0 / float(p("state_rate_hz", 250.0).value)
        self.camera_period = 1.0 / float(p("camera_fps", 30.0).value)
        size = (int(p("camera_width", 0).value), int(p("camera_height", 0).value))
        self.publish_cameras = bool(p("publish_cameras", True).value)
        self.publish_clock = bool(p("publish_clock", False).value)
        self.speed = float(p("speed", 1.0).value)  # sim seconds per wall second when publishing /clock
        # Sim time one tick may step to catch up with the clock; beyond it, sim time slips.
        self.max_catchup = float(p("max_catchup_s", 0.05).value)
        self.late_frames = str(p("late_frames", "slow_down").value)
        self.hold_after_reset = bool(p("hold_after_reset", False).value)
        self.held = False  # the world stands still until ~/start (see hold_after_reset)
        if self.late_frames not in LATE_FRAMES:
            raise ConfigError(f"twin: late_frames '{self.late_frames}' is not one of {', '.join(LATE_FRAMES)}")
        # The state loop is the robot: it runs ahead of rendering and everything else on the machine.
        self._realtime = RealtimeThread(self, int(p("realtime_priority", 30).value))
        self._tolerant_pubs: list[DropTolerantPublisher] = []
        self.twin = Twin(self.profile, task, render_size=size if all(size) else None)
        self.twin.reset(self.seed)
        self.resets = 0
        self.joint_pub = self._publisher(JointState, self.profile.joint_states_topic, STATE_WRITER_QOS)
        self.object_pub = self._publisher(PoseStamped, OBJECT_POSE, 10)
        self.target_pub = self._publisher(PoseStamped, TARGET_POSE, 10)
        self.diag_pub = self._publisher(DiagnosticArray, DIAGNOSTICS, 10, max_outage_s=10.0)
        self.clock_pub = self._publisher(Clock, CLOCK, 10) if self.publish_clock else None
        self.image_pubs = {
            c: (
                self._publisher(Image, camera_topic(c), IMAGE_WRITER_QOS),
                self._publisher(CameraInfo, camera_topic(c, "camera_info"), 5),
            )
            for c in self.twin.camera_names
        }
        self.create_subscription(JointTrajectory, self.profile.command_topic, self._on_command, COMMAND_QOS)
        self.create_service(Trigger, "~/reset", self._reset)
        self.create_service(Trigger, "~/success", self._success)
        self.create_service(Trigger, "~/start", self._start)
        self._wall_clock = RosClock(clock_type=ClockType.SYSTEM_TIME)
        self._t0 = self._wall()  # clock time at which sim time 0 happened
        self.follower = TrajectoryFollower(self.twin.joint_positions(), self._t0)
        self._next_camera = 0.0
        self._frame_due = False  # sim time reached a frame instant the camera has not taken yet
        self.cameras = CameraWorker(self.twin.model, {c: self.twin.render_size(c) for c in self.twin.camera_names},
                                    deliver=self._publish_image, wanted=self._camera_wanted).start()
        self._busy = 0.0  # seconds spent stepping physics, for the compute real-time factor
        self._slipped = 0.0  # sim seconds given up because the machine could not keep real time
        self._stepped = 0.0  # sim seconds of physics stepped since start (resets and slips excluded)
        self._stats = (self._wall(), self._stepped)  # for the real-time factors
        self.finished = False  # set when the cameras fail: the process then exits 1
        self.exit_code = 0
        # The twin paces itself by the wall clock, whatever use_sim_time says: with publish_clock it
        # is what drives /clock, so timers on sim time would wait for it forever.
        self.create_timer(self.state_period, self._tick, clock=self._wall_clock)
        self.create_timer(1.0, self._publish_diagnostics, clock=self._wall_clock)

    def _publisher(self, msg_type: type, topic: str, qos: QoSProfile | int, max_outage_s: float = 1.0) -> DropTolerantPublisher:
        pub = tolerant_publisher(self, msg_type, topic, qos, max_outage_s)
        self._tolerant_pubs.append(pub)
        return pub

    def _wall(self) -> float:
        return self._wall_clock.now().nanoseconds * 1e-9

    def _sim_stamp(self) -> float:
        return self._t0 + self.twin.time

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            chunk, _ = validate_chunk(self.profile, *trajectory_fields(msg))
        except ChunkRejected as exc:
            self.get_logger().error(f"refused command: {exc}", throttle_duration_sec=1.0)
            return
        self.follower.command(chunk, self._sim_stamp())

    def _tick(self) -> None:
        self._realtime()
        if self.held:
            self._hold()
            return
        target_time = self._target_time()
        start = time.perf_counter()
        dt = float(self.twin.model.opt.timestep)
        while self._frame_taken() and self._sim_stamp() + dt / 2 < target_time:
            self.twin.set_targets(self.follower.sample(self._sim_stamp() + dt))
            self.twin.step(dt * 1e3)
            self._stepped += dt
            self._frame_due = self.publish_cameras and self.twin.time >= self._next_camera - dt / 2
        self._busy += time.perf_counter() - start
        stamp = self._sim_stamp()
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=to_stamp(stamp)))
        self._publish_state(stamp)
        self._publish_poses(stamp)

    def _hold(self) -> None:
        """A held world: joint states and poses go on (on the wall clock with fresh stamps, as a robot
        standing still); nothing is stepped, so sim time and /clock stay where the reset left them."""
        if not self.publish_clock:
            self._t0 = self._wall() - self.twin.time
        stamp = self._sim_stamp()
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=to_stamp(stamp)))
        self._publish_state(stamp)
        self._publish_poses(stamp)

    def _target_time(self) -> float:
        """The sim stamp this tick steps to: one period on with /clock, else now, at most ``max_catchup`` ahead."""
        if self.publish_clock:
            return self._sim_stamp() + self.state_period * self.speed
        now = self._wall()
        behind = now - self._sim_stamp()
        if behind > self.max_catchup:  # a stall (busy machine, paused process): let sim time slip
            self._t0 += behind - self.max_catchup
            self._slipped += behind - self.max_catchup
        return now

    def _frame_taken(self) -> bool:
        """Hand a due frame to the cameras; False while sim time must wait for them (``slow_down``)."""
        if not self._frame_due:
            return True
        if self.late_frames == "slow_down" and self.cameras.pending:
            return False
        self._frame_due = False
        self._next_camera += self.camera_period
        self._capture(self._sim_stamp())
        return True

    def _capture(self, stamp: float) -> None:
        """A camera instant: a joint state with the frame's own stamp, and the scene to the camera worker."""
        self._publish_state(stamp)
        if self.cameras.wants_any():
            self.cameras.submit(self.twin.scene_state(), stamp)

    def _publish_state(self, stamp: float) -> None:
        names = self.twin.joint_names
        self.joint_pub.publish(joint_state_msg(names, self.twin.joint_positions(), self.twin.joint_velocities(), stamp))

    def _publish_poses(self, stamp: float) -> None:
        if self.twin.task_name is None:
            return
        pos, quat = self.twin.object_pose()
        self.object_pub.publish(_pose(pos, quat, stamp))
        self.target_pub.publish(_pose(self.twin.target_position(), np.array([1.0, 0, 0, 0]), stamp))

    def _camera_wanted(self, name: str) -> bool:
        image_pub, info_pub = self.image_pubs[name]
        return image_pub.get_subscription_count() > 0 or info_pub.get_subscription_count() > 0

    def _publish_image(self, name: str, rgb: np.ndarray, stamp: float) -> None:
        """On the camera worker's thread: one rendered frame and its CameraInfo."""
        image_pub, info_pub = self.image_pubs[name]
        msg = image_msg(rgb, stamp, f"{name}_optical_frame")
        image_pub.publish(msg)
        info_pub.publish(self._camera_info(name, rgb.shape[1], rgb.shape[0], msg.header))

    def _camera_info(self, name: str, width: int, height: int, header: object) -> CameraInfo:
        fovy = np.deg2rad(self.profile.camera(name).fovy)
        f = 0.5 * height / np.tan(fovy / 2)
        info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        info.header = header
        info.k = [f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0]
        info.p = [f, 0.0, width / 2, 0.0, 0.0, f, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.d = [0.0] * 5
        return info

    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        seed = self.seed + self.resets  # episode i runs seed + i
        self.resets += 1
        before = self._sim_stamp()
        self.twin.reset(seed)
        # /clock must stay monotonic across resets; in real time, sim time 0 is now.
        self._t0 = before if self.publish_clock else self._wall()
        self.follower.reset(self.twin.joint_positions(), self._sim_stamp())
        self._next_camera = 0.0
        self._frame_due = False
        self.cameras.clear()
        self.held = self.hold_after_reset
        res.success, res.message = True, f"seed={seed}"
        return res

    def _start(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        if not self.publish_clock:
            self._t0 = self._wall() - self.twin.time  # the world moves on from where it stood, no catch-up
        self.held = False
        res.success, res.message = True, f"running from t={self.twin.time:.3f}"
        return res

    def _success(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        """success, and as JSON the conditions missed, the object's distance to the target and its position."""
        state: dict[str, object] = {"t": round(self.twin.time, 3)}
        if self.twin.task_name:
            state.update(self.twin.outcome().as_dict(), object=np.round(self.twin.object_pose()[0], 4).tolist())
        res.success = bool(state.get("success", False))
        res.message = json.dumps(state)
        return res

    def _publish_diagnostics(self) -> None:
        if self.cameras.error is not None and not self.finished:
            self.get_logger().error(f"camera rendering failed: {self.cameras.error}")
            self.exit_code, self.finished = 1, True
        wall, stepped = self._wall(), self._stepped
        values = {**self._rates(wall, stepped), "sim_time": f"{self.twin.time:.3f}", "slipped_s": f"{self._slipped:.3f}",
                  "frames_rendered": str(self.cameras.rendered), "frames_skipped": str(self.cameras.skipped),
                  "publish_failures": str(sum(pub.failures for pub in self._tolerant_pubs)),
                  **{f"render_{k}_ms": f"{v:.2f}" for k, v in self.cameras.render_ms().items()}}
        self._stats, self._busy = (wall, stepped), 0.0
        behind = self._slipped > 0 or self.cameras.skipped > 0
        status = DiagnosticStatus(level=DiagnosticStatus.WARN if behind else DiagnosticStatus.OK, name=status_name(self, "twin"),
                                  message="behind real time" if behind else "running")
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def _rates(self, wall: float, stepped: float) -> dict[str, str]:
        """compute_rtf: sim time per second of physics work; realtime_factor: sim time stepped per wall second."""
        wall0, stepped0 = self._stats
        rates = {"realtime_factor": f"{(stepped - stepped0) / (wall - wall0):.3f}"} if wall > wall0 else {}
        if self._busy > 0:
            rates["compute_rtf"] = f"{(stepped - stepped0) / self._busy:.2f}"
        return rates

    def close(self) -> None:
        self.cameras.close()  # joins the worker, which releases its GL context on its own thread
        self.twin.close()


def _pose(pos: np.ndarray, quat: np.ndarray, stamp: float) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = to_stamp(stamp), "world"
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
    o = msg.pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in quat)
    return msg


NODE = TwinNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    raise_process_nice()  # DDS's threads, created with the node, deliver its messages: ahead of other work
    return run(TwinNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
