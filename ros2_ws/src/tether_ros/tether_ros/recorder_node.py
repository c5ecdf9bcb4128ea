"""Recorder node: joint states, gated commands, cameras and the intervention label into a LeRobotDataset v3.

A thin adapter over ``tether.teleop.recording.recorder.FrameSampler`` (frames driven by
camera captures, stamped with real capture times) and
``tether.teleop.recording.writer_process.WriterProcess``: the dataset writer (crash-safe
staging, atomic commits) and the raw MCAP log run in a worker process, so this
node, which shares its process with the twin or the cameras, only copies images
into shared memory and never encodes under their GIL. The worker dying ends this
node with an error (exit 1), which fails the graph; a full disk does too, in one error line naming
the disk, the dataset and the command that finishes what was flushed (``tether dataset recover``).
Services: ``~/begin``, ``~/commit_success``, ``~/commit_failure``, ``~/discard``
(Trigger) and ``~/mark_recovery`` (SetBool, a RaC-style recovery segment).

The MCAP log holds the bytes that went over the wire: every recorded topic is a raw
subscription, deserialized here only where the frame sampler needs the message (rclpy's
``serialize_message`` returns a buffer longer than the CDR payload, with uninitialised bytes that
other readers reject). Measured on 2 cores with JointState at up to 250 Hz and a 200 Hz timer in
the same process: ``deserialize_message`` costs ~12 us a message against ~5 us for
``serialize_message`` (on top of rclpy's own deserialization of a typed subscription); the
process used 16-19 % of a core either way, and the timer's period p99 stayed at 5.6 ms. Each
topic's QoS goes into the bag's ``offered_qos_profiles``: the profile subscribed with, whose
reliable and transient-local requests only a publisher offering them can meet.

If the node closes while an episode is recording (the session failed or was stopped), the
episode is committed as truncated with an unknown outcome, or discarded: parameter
``on_abort`` (``truncate`` or ``discard``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError, WriterProcessError
from tether.joint_state import joint_vector
from tether.robot_profile import load_profile
from tether.dataset import DatasetSpec
from tether.dataset.layout import Layout
from tether.dataset.writer import check_on_abort
from tether.teleop.recording.mcap_log import TopicQos
from tether.teleop.recording.recorder import FrameSampler
from tether.teleop.recording.writer_process import WriterProcess
from tether_ros.bad_input import BadInputReport
from tether_ros.conversions import (
    COMMAND_QOS,
    DIAGNOSTICS,
    INTERVENTION,
    LATCHED_QOS,
    STATE_QOS,
    camera_topic,
    status_name,
)
from tether_ros.spin import run


def RECORD_QOS(depth: int) -> QoSProfile:  # noqa: N802 - reads like the other QoS constants
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def _ns(stamp: object) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)  # type: ignore[attr-defined]


def topic_qos(profile: QoSProfile) -> TopicQos:
    """A subscription's QoS as the bag's metadata records it."""
    return TopicQos(profile.reliability.name.lower(), profile.durability.name.lower(), profile.history.name.lower(),
                    profile.depth, profile.deadline.nanoseconds, profile.lifespan.nanoseconds,
                    profile.liveliness.name.lower(), profile.liveliness_lease_duration.nanoseconds,
                    profile.avoid_ros_namespace_conventions)


class RecorderNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("recorder", **kwargs)  # type: ignore[arg-type]
        p = self.declare_parameter
        self.profile = load_profile(str(p("robot", "so101").value))
        self.task = str(p("task_description", "pick up the cube and place it on the green target").value)
        root = Path(str(p("dataset", "runs/dataset").value))
        size = (int(p("camera_height", 0).value), int(p("camera_width", 0).value))
        fps = int(round(self.profile.cameras[0].fps))
        spec = DatasetSpec.from_profile(self.profile, fps, image_size=size if all(size) else None)
        log_images = bool(p("log_images", False).value)  # raw images are ~3 GB/min at 2x640x480x30 fps
        self.on_abort = check_on_abort(str(p("on_abort", "truncate").value))
        self.writer = WriterProcess.start(root, spec, log_images=log_images)  # opens the dataset in the background
        self.sampler = FrameSampler(list(spec.cameras), fps, autonomous_source=str(p("autonomous_source", "expert").value))
        self.bad_input = BadInputReport(self)
        self.recording = False
        self.finished = False  # set when the writer process is lost: the process then exits 1
        self.exit_code = 0
        self._lost: WriterProcessError | None = None  # why the writer process was lost, once said
        self.raw_root = Layout(root).raw_logs  # beside the dataset: LeRobot's loader never sees it
        self._topics: dict[str, str] = {}  # logged topic (fully qualified) -> message type
        self._logged_as: dict[str, str] = {}  # the graph's relative topic name -> its name in the log
        self._qos: dict[str, TopicQos] = {}
        self._intervention: bytes | None = None  # the latched label's last message, written at each bag's start
        self._subscribe(spec, log_images)
        self.create_service(Trigger, "~/begin", self._begin)
        self.create_service(Trigger, "~/commit_success", lambda q, r: self._commit(True, r))
        self.create_service(Trigger, "~/commit_failure", lambda q, r: self._commit(False, r))
        self.create_service(Trigger, "~/discard", self._discard)
        self.create_service(SetBool, "~/mark_recovery", self._mark_recovery)
        self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_timer(0.2, self._watch_writer)  # a dead writer is noticed even with no frame flowing

    def _subscribe(self, spec: DatasetSpec, log_images: bool) -> None:
        """Raw subscriptions (the wire's bytes go to the log as they are). Deep queues (~2 s), so a stall
        here (a segment flush, an MCAP chunk write) delays samples instead of losing them."""
        self._raw(JointState, self.profile.joint_states_topic, self._on_state, RECORD_QOS(600))
        self._raw(JointTrajectory, self.profile.command_topic, self._on_command, RECORD_QOS(500))
        self._raw(Bool, INTERVENTION, self._on_intervention, LATCHED_QOS)
        for cam in spec.cameras:
            self._raw(Image, camera_topic(cam), partial(self._on_image, cam), RECORD_QOS(60), logged=log_images)

    def _raw(self, msg_type: type, topic: str, callback: Callable[[bytes], None], qos: QoSProfile,
             logged: bool = True) -> None:
        self.create_subscription(msg_type, topic, callback, qos, raw=True)
        if logged:
            # The log names topics as they went over the wire, under this graph's namespace.
            name = self._logged_as[topic] = self.resolve_topic_name(topic)
            self._topics[name] = msg_type.__module__.split(".")[0] + "/msg/" + msg_type.__name__
            self._qos[name] = topic_qos(qos)

    def _watch_writer(self) -> None:
        try:
            self.writer.check()
        except WriterProcessError as exc:
            self._lost_writer(exc)
            return
        if self.writer.recovery:  # once the worker has opened the dataset; said once
            self.get_logger().warning(f"{self.writer.root}: recovered after a crash: {self.writer.recovery}")
            self.writer.recovery = ""

    def _lost_writer(self, exc: WriterProcessError) -> None:
        """Recording cannot go on: say so and end this process, so the graph fails instead of recording nothing."""
        self.recording = False
        if not self.finished:
            # One line, the graph's failure: for a full disk it names the disk, the dataset and what to run.
            self.get_logger().error(str(exc))
            self.exit_code, self.finished, self._lost = 1, True, exc

    def _log(self, topic: str, cdr: bytes, stamp_ns: int) -> None:
        if not self.recording:
            return
        try:
            self.writer.log(self._logged_as[topic], cdr, stamp_ns)
        except WriterProcessError as exc:
            self._lost_writer(exc)

    def _on_state(self, cdr: bytes) -> None:
        msg = deserialize_message(cdr, JointState)
        self._log(self.profile.joint_states_topic, cdr, _ns(msg.header.stamp))
        try:  # logged as it came; a state the dataset cannot use is refused out loud
            q = joint_vector(self.profile.joint_names, msg.name, msg.position, self.profile.joint_states_topic)
        except TetherError as exc:
            self.bad_input.refuse(self.profile.joint_states_topic, exc)
            return
        self.sampler.on_state(q, _ns(msg.header.stamp))

    def _on_command(self, cdr: bytes) -> None:
        msg = deserialize_message(cdr, JointTrajectory)
        self._log(self.profile.command_topic, cdr, _ns(msg.header.stamp))
        if msg.points and list(msg.joint_names) == self.profile.joint_names:
            self.sampler.on_action(np.array(msg.points[0].positions), _ns(msg.header.stamp))

    def _on_intervention(self, cdr: bytes) -> None:
        self._intervention = cdr
        self._log(INTERVENTION, cdr, self.get_clock().now().nanoseconds)
        self.sampler.intervention = bool(deserialize_message(cdr, Bool).data)

    def _on_image(self, camera: str, cdr: bytes) -> None:
        if not self.recording:
            return
        msg = deserialize_message(cdr, Image)
        if camera_topic(camera) in self._logged_as:
            self._log(camera_topic(camera), cdr, _ns(msg.header.stamp))
        rgb = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        for frame in self.sampler.on_image(camera, rgb, _ns(msg.header.stamp)):
            try:
                self.writer.add_frame(frame.state, frame.action, frame.images, frame.capture_time_ns,
                                      frame.intervention, frame.control_source, frame.phase)
            except WriterProcessError as exc:
                self._lost_writer(exc)
                return
            except TetherError as exc:
                self.sampler.dropped["refused"] += 1
                self.get_logger().error(f"frame refused: {exc}", throttle_duration_sec=1.0)

    def _answer(self, res: Trigger.Response, action: Callable[[], str]) -> Trigger.Response:
        """Run a service's writer calls: a refusal is answered; a lost writer also ends this node."""
        try:
            res.success, res.message = True, action()
        except WriterProcessError as exc:
            self._lost_writer(exc)
            res.success, res.message = False, str(exc)
        except TetherError as exc:
            res.success, res.message = False, str(exc)
        return res

    def _begin(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._answer(res, self._begin_episode)

    def _begin_episode(self) -> str:
        if self.writer.episode_running:
            self.writer.close_log()
            self.writer.discard_episode()
        self.sampler.reset()
        index = self.writer.begin_episode(self.task)
        self._open_log(index)
        self.recording = True
        if self._intervention is not None:  # latched: a replay of this bag starts with who is in control
            self._log(INTERVENTION, self._intervention, self.get_clock().now().nanoseconds)
        return f"episode={index}"

    def _open_log(self, index: int) -> None:
        path = self.raw_root / f"episode_{index:06d}"
        if path.exists():  # a discarded or crashed take of this index: keep it aside, never overwrite
            path.rename(path.with_name(f"{path.name}.old{len(list(self.raw_root.glob(path.name + '.old*')))}"))
        self.raw_root.mkdir(parents=True, exist_ok=True)
        self.writer.open_log(path, self._topics, self._qos)

    def _commit(self, success: bool, res: Trigger.Response) -> Trigger.Response:
        self.recording = False
        return self._answer(res, lambda: self._end_episode(success))

    def _end_episode(self, success: bool) -> str:
        self.writer.close_log()
        index = self.writer.end_episode(success=success)
        commit = self.writer.last_commit
        dropped = ",".join(f"{k}:{v}" for k, v in sorted(self.sampler.dropped.items())) or "none"
        message = f"episode={index} frames={self.writer.num_frames} dropped={dropped}"
        return message + (f" commit_s={commit.seconds:.3f}" if commit is not None else "")

    def _discard(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.recording = False
        return self._answer(res, self._discard_episode)

    def _discard_episode(self) -> str:
        self.writer.close_log()
        if self.writer.episode_running:
            self.writer.discard_episode()
        return "discarded"

    def _mark_recovery(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        self.sampler.recovery = bool(req.data)
        res.success, res.message = True, f"phase={self.sampler.phase}"
        return res

    def _publish_diagnostics(self) -> None:
        values = {"recording": self.recording, "episodes": self.writer.num_episodes,
                  "episode_frames": self.writer.episode_frames, "phase": self.sampler.phase,
                  **{f"dropped_{k}": v for k, v in self.sampler.dropped.items()}}
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name=status_name(self, "recorder"), message="recording" if self.recording else "idle")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def close(self) -> None:
        # Closing mid-episode means its session failed or was stopped: the worker commits what was
        # recorded as truncated (outcome unknown), or drops it, as on_abort says.
        try:
            self.writer.close(self.on_abort)
        except TetherError as exc:
            if exc is not self._lost:  # a lost writer was reported when it happened: say it once
                self.get_logger().error(f"closing the dataset {self.writer.root}: {exc}")


NODE = RecorderNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
