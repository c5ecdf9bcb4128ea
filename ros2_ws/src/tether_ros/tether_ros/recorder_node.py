"""Recorder node: joint states, gated commands, cameras and the intervention label into a LeRobotDataset v3.

A thin adapter over ``tether.teleop.recorder.FrameSampler`` (frames driven by
camera captures, stamped with real capture times) and
``tether.teleop.writer_process.WriterProcess``: the dataset writer (crash-safe
staging, atomic commits) and the raw MCAP log run in a worker process, so this
node, which shares its process with the twin or the cameras, only copies images
into shared memory and never encodes under their GIL. The worker dying ends this
node with an error (exit 1), which fails the graph.
Services: ``~/begin``, ``~/commit_success``, ``~/commit_failure``, ``~/discard``
(Trigger) and ``~/mark_recovery`` (SetBool, a RaC-style recovery segment).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError, WriterProcessError
from tether.robot_profile import load_profile
from tether.teleop.dataset import DatasetSpec
from tether.teleop.recorder import FrameSampler
from tether.teleop.writer_process import WriterProcess
from tether_ros.conversions import COMMAND_QOS, DIAGNOSTICS, INTERVENTION, LATCHED_QOS, STATE_QOS, camera_topic
from tether_ros.spin import run


def RECORD_QOS(depth: int) -> QoSProfile:  # noqa: N802 - reads like the other QoS constants
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def _ns(stamp: object) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)  # type: ignore[attr-defined]


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
        self.writer = WriterProcess.start(root, spec, log_images=log_images)  # opens the dataset in the background
        self.sampler = FrameSampler(list(spec.cameras), fps, autonomous_source=str(p("autonomous_source", "expert").value))
        self.recording = False
        self.finished = False  # set when the writer process is lost: the process then exits 1
        self.exit_code = 0
        self.raw_root = root.parent / f"{root.name}_mcap"  # beside the dataset: LeRobot's loader never sees it
        self._topics = {
            self.profile.joint_states_topic: "sensor_msgs/msg/JointState",
            self.profile.command_topic: "trajectory_msgs/msg/JointTrajectory",
            INTERVENTION: "std_msgs/msg/Bool",
        }
        if log_images:
            self._topics.update({camera_topic(c): "sensor_msgs/msg/Image" for c in spec.cameras})
        # Deep queues (~2 s) so a stall here (a segment flush, an MCAP chunk write) delays samples
        # instead of losing them.
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, RECORD_QOS(600))
        self.create_subscription(JointTrajectory, self.profile.command_topic, self._on_command, RECORD_QOS(500))
        self.create_subscription(Bool, INTERVENTION, self._on_intervention, LATCHED_QOS)
        for cam in spec.cameras:
            self.create_subscription(Image, camera_topic(cam), lambda m, c=cam: self._on_image(c, m), RECORD_QOS(60))
        self.create_service(Trigger, "~/begin", self._begin)
        self.create_service(Trigger, "~/commit_success", lambda q, r: self._commit(True, r))
        self.create_service(Trigger, "~/commit_failure", lambda q, r: self._commit(False, r))
        self.create_service(Trigger, "~/discard", self._discard)
        self.create_service(SetBool, "~/mark_recovery", self._mark_recovery)
        self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_timer(0.2, self._watch_writer)  # a dead writer is noticed even with no frame flowing

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
            self.get_logger().error(str(exc))
            self.exit_code, self.finished = 1, True

    def _log(self, topic: str, msg: object, stamp_ns: int) -> None:
        if not self.recording:
            return
        try:
            self.writer.log(topic, serialize_message(msg), stamp_ns)
        except WriterProcessError as exc:
            self._lost_writer(exc)

    def _on_state(self, msg: JointState) -> None:
        self._log(self.profile.joint_states_topic, msg, _ns(msg.header.stamp))
        index = {n: i for i, n in enumerate(msg.name)}
        if all(j in index for j in self.profile.joint_names):
            self.sampler.on_state(np.array([msg.position[index[j]] for j in self.profile.joint_names]), _ns(msg.header.stamp))

    def _on_command(self, msg: JointTrajectory) -> None:
        self._log(self.profile.command_topic, msg, _ns(msg.header.stamp))
        if msg.points and list(msg.joint_names) == self.profile.joint_names:
            self.sampler.on_action(np.array(msg.points[0].positions), _ns(msg.header.stamp))

    def _on_intervention(self, msg: Bool) -> None:
        self._log(INTERVENTION, msg, self.get_clock().now().nanoseconds)
        self.sampler.intervention = bool(msg.data)

    def _on_image(self, camera: str, msg: Image) -> None:
        if not self.recording:
            return
        if camera_topic(camera) in self._topics:
            self._log(camera_topic(camera), msg, _ns(msg.header.stamp))
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
        return f"episode={index}"

    def _open_log(self, index: int) -> None:
        path = self.raw_root / f"episode_{index:06d}"
        if path.exists():  # a discarded or crashed take of this index: keep it aside, never overwrite
            path.rename(path.with_name(f"{path.name}.old{len(list(self.raw_root.glob(path.name + '.old*')))}"))
        self.raw_root.mkdir(parents=True, exist_ok=True)
        self.writer.open_log(path, self._topics)

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
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name="tether/recorder", message="recording" if self.recording else "idle")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def close(self) -> None:
        # Ctrl-C mid-episode keeps what was recorded, with an unknown outcome: the worker commits it.
        try:
            self.writer.close(success=None)
        except TetherError as exc:
            self.get_logger().error(f"closing the dataset {self.writer.root}: {exc}")


NODE = RecorderNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
