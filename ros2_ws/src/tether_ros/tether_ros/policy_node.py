"""Policy node: an ONNX policy (ACT or diffusion) as an action source.

Keeps the newest joint state and camera image of each model camera. When a
replan is due (``replan_hz``, checked on each fresh joint state so the
observation is microseconds old) it sends the newest observation to the
inference thread; each resulting chunk goes through the chunk scheduler
(``tether.policy_runtime.runtime.scheduler``) and out as a JointTrajectory on
``/tether/source/policy/joint_trajectory``.

Stamping, as every tether source: ``header.stamp`` is the capture time of the
joint state the chunk was computed from (the gate measures its latency from
it); each point's ``time_from_start`` is its offset from that stamp, and points
whose time has already passed are not sent, so the first point is the first
instant still to come.

Refusals never reach the gate: a joint state older than ``state_timeout``, an
image more than ``image_timeout`` away from the joint state, an image of the
wrong size, or NaN/inf from the model skips that observation with a
``/diagnostics`` message; with no chunk the gate holds once its source timeout
passes. ``~/reset`` (Trigger) starts a new episode.
"""

from __future__ import annotations

import collections

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import UnknownJointError
from tether.joint_state import JointStateError, joint_vector
from tether.policy_runtime.runtime.inference import (
    DEFAULT_THREADS,
    InferenceResult,
    InferenceWorker,
    Observation,
    ObservationError,
    PolicyRuntime,
    resolve_model_dir,
)
from tether.policy_runtime.runtime.scheduler import ChunkScheduler, SchedulerConfig
from tether.robot_profile import load_profile
from tether_ros.conversions import (
    COMMAND_QOS,
    DIAGNOSTICS,
    STATE_QOS,
    camera_topic,
    source_topic,
    status_name,
    to_sec,
    trajectory_msg,
)
from tether_ros.publishing import tolerant_publisher
from tether_ros.spin import run

# ACT was trained for temporal ensembling; Diffusion Policy executes one chunk at a time.
DEFAULT_MODE = {"act": "ensemble", "diffusion": "switch"}
# Only the newest image matters; reliable, because best-effort loses large frames across processes.
IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)


def image_array(msg: Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB view of an rgb8/bgr8 Image."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ObservationError(f"image encoding '{msg.encoding}' is not supported; encodings: bgr8, rgb8")
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    rgb = rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return rgb[..., ::-1] if msg.encoding == "bgr8" else rgb


class PolicyNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("policy", **kwargs)  # type: ignore[arg-type]
        p = self.declare_parameter
        self.profile = load_profile(str(p("robot", "so101").value))
        model_dir = resolve_model_dir(str(p("model_dir", "").value))
        self.runtime = PolicyRuntime.load(model_dir, self.profile, threads=int(p("threads", DEFAULT_THREADS).value),
                                          seed=int(p("seed", 0).value))
        warm_ms = self.runtime.warm_up()  # the first run allocates; keep that out of the control loop
        m = self.runtime.manifest
        self.scheduler = ChunkScheduler(self._scheduler_config())
        self.image_timeout = float(p("image_timeout", 0.5).value)  # s between an image and the joint state
        self.state_timeout = float(p("state_timeout", 0.1).value)  # s; the gate's default: older states are stale
        self.cameras = [c.name for c in m.cameras]
        self.pub = tolerant_publisher(self, JointTrajectory, source_topic("policy"), COMMAND_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        self._images: dict[str, Image] = {}
        for cam in self.cameras:
            self.create_subscription(Image, camera_topic(cam), lambda msg, c=cam: self._images.__setitem__(c, msg),
                                     IMAGE_QOS)
        self.create_service(Trigger, "~/reset", self._reset)
        # Results arrive on the inference thread; a guard condition hands them to this node's executor.
        self._results: collections.deque[InferenceResult] = collections.deque()
        self._wake = self.create_guard_condition(self._drain)
        self.worker = InferenceWorker(self.runtime, self._on_result)
        self.counters: collections.Counter[str] = collections.Counter()
        self._infer_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self._problem = ""
        self._last_warn = -float("inf")
        self.create_timer(1.0, self._periodic_diagnostics)
        self.get_logger().info(f"{m.policy} model {model_dir} ({m.quantization}, {warm_ms:.1f} ms warm), scheduler "
                               f"{self.scheduler.config.mode}, replan every {self.scheduler.config.replan_period:.3f} s")

    def _scheduler_config(self) -> SchedulerConfig:
        p, m = self.declare_parameter, self.runtime.manifest
        control_hz = float(p("control_hz", 0.0).value)  # output points; 0: the model's own period
        config = SchedulerConfig(
            action_period=m.control_period_s,
            replan_period=1.0 / float(p("replan_hz", 10.0).value),
            control_period=1.0 / control_hz if control_hz > 0 else 0.0,
            mode=str(p("mode", "").value) or DEFAULT_MODE[m.policy],
            ensemble_m=float(p("ensemble_m", 0.01).value),
            blend_s=float(p("blend_s", 0.1).value),
        )
        if m.n_obs_steps > 1 and abs(config.replan_period - m.control_period_s) > 1e-6:
            # The runtime's history holds successive inferences: its spacing is the replan period.
            self.get_logger().warning(f"the model takes {m.n_obs_steps} observations {m.control_period_s:.3f} s apart; "
                                      f"they are {config.replan_period:.3f} s apart at this replan_hz")
        return config

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- observations -------------------------------------------------------
    def _on_state(self, msg: JointState) -> None:
        stamp = to_sec(msg.header.stamp)
        age = self._now() - stamp
        if age > self.state_timeout:  # checked first, so a stale state does not use up a replan
            self._skip("stale_state", f"joint state is {age:.3f} s old (limit {self.state_timeout} s); not acted on")
            return
        if not self.scheduler.replan_due(stamp):
            return
        try:
            obs = self._observation(msg, stamp)
        except (ObservationError, UnknownJointError, JointStateError) as exc:
            self._skip("observation_refused", str(exc))
            return
        if obs is not None:
            self.counters["observations"] += 1
            self.worker.submit(obs)

    def _observation(self, msg: JointState, stamp: float) -> Observation | None:
        q = joint_vector(self.profile.joint_names, msg.name, msg.position, self.profile.joint_states_topic)
        images = {}
        for cam in self.cameras:
            img = self._images.get(cam)
            if img is None:
                self.counters["waiting_for_images"] += 1  # normal until the first frame after start/reset
                return None
            age = stamp - to_sec(img.header.stamp)
            if abs(age) > self.image_timeout:
                self._skip("stale_image", f"camera '{cam}' image is {age:+.3f} s off the joint state "
                                          f"(limit {self.image_timeout} s); observation skipped")
                return None
            images[cam] = image_array(img)
        return Observation(stamp, q, images)

    # --- results --------------------------------------------------------------
    def _on_result(self, result: InferenceResult) -> None:
        self._results.append(result)  # inference thread: hand over, do nothing else here
        self._wake.trigger()

    def _drain(self) -> None:
        while self._results:
            result = self._results.popleft()
            if result.generation != self.worker.generation:
                continue  # computed before a reset
            if result.error is not None or result.chunk is None:
                self._skip(type(result.error).__name__, f"{result.error}; nothing published")
                continue
            self._infer_ms.append(result.infer_ms)
            self._publish(result.obs_time, result.chunk)

    def _publish(self, obs_time: float, chunk: np.ndarray) -> None:
        now = self._now()
        self.counters["stale_actions_dropped"] += self.scheduler.add(obs_time, chunk, now)
        t_first, times, q = self.scheduler.trajectory(now)
        start = min(obs_time, t_first)  # a clock running ahead of the stamps must not give negative offsets
        self.pub.publish(trajectory_msg(self.profile.joint_names, start, list(t_first - start + times), q))
        self.counters["chunks"] += 1

    # --- services and diagnostics --------------------------------------------
    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.worker.reset()  # drops the pending observation and the model's history
        self.scheduler.reset()
        self._results.clear()
        self._images.clear()  # wait for post-reset observations
        res.success, res.message = True, "policy reset"
        return res

    def _skip(self, reason: str, message: str) -> None:
        self.counters[f"skipped_{reason}"] += 1
        self.get_logger().warning(message, throttle_duration_sec=1.0)
        now = self._now()
        if not self._problem.startswith(f"{reason}:") or now - self._last_warn > 0.5:  # a new problem, or 2 Hz
            self._problem, self._last_warn = f"{reason}: {message}", now
            self._publish_diagnostics(DiagnosticStatus.WARN, self._problem)

    def _periodic_diagnostics(self) -> None:
        recent = self._now() - self._last_warn < 2.0  # a problem in the last two seconds keeps the status WARN
        self._publish_diagnostics(DiagnosticStatus.WARN if recent else DiagnosticStatus.OK,
                                  self._problem if recent else "")

    def _publish_diagnostics(self, level: int, message: str) -> None:
        values: dict[str, object] = dict(self.counters)
        values.update(mode=self.scheduler.config.mode, replaced_observations=self.worker.replaced,
                      last_problem=self._problem)
        if self._infer_ms:
            ms = np.asarray(self._infer_ms)
            values.update(infer_p50_ms=round(float(np.percentile(ms, 50)), 3),
                          infer_p99_ms=round(float(np.percentile(ms, 99)), 3))
        status = DiagnosticStatus(level=level, name=status_name(self, "policy"), message=message or "running",
                                  hardware_id=self.profile.name)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def close(self) -> None:
        self.worker.close()


NODE = PolicyNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    # The SingleThreadedExecutor: results come back from the inference thread through a guard
    # condition, which rclpy's EventsExecutor does not support.
    return run(PolicyNode, args, executor=SingleThreadedExecutor)


if __name__ == "__main__":
    raise SystemExit(main())
