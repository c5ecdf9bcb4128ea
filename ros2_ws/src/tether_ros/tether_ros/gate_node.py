"""Gate node: the only path from action sources to the robot's command topic.

Subscribes to ``/joint_states`` and to ``/tether/source/<name>/joint_trajectory``
for each source; streams safety-filtered single-point JointTrajectory commands
at ``rate_hz`` on the robot profile's command topic; holds position on stale
state or a silent source; latches an e-stop (``~/estop``, ``~/clear_estop``);
reports state, rates and every refusal on ``/diagnostics``.

Arbitration: ``~/takeover`` hands control to the human source, ``~/handback``
returns it to the autonomous one, ``~/pause`` (SetBool) holds. Whether a human
drives is published on ``/tether/intervention`` (Bool, transient-local).

The command stream runs on a thread of its own (``tether.periodic``), at real-time priority
where allowed; subscriptions and services stay on the executor. So a chunk flood or a slow
consumer never delays a service, and the e-stop never waits behind a publish. The two threads
share the gate core under one lock, held only for the core's short calls, never while publishing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from functools import partial

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rosgraph_msgs.msg import Clock
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError
from tether.gate import Gate, GateConfig, Mode
from tether.periodic import PeriodicLoop, SimTimeLoop
from tether.robot_profile import load_profile
from tether.safety import ChunkRejected
from tether_ros.conversions import (
    CLOCK,
    COMMAND_QOS,
    DIAGNOSTICS,
    INTERVENTION,
    LATCHED_QOS,
    STATE_QOS,
    source_topic,
    status_name,
    to_sec,
    trajectory_fields,
    trajectory_msg,
)
from tether_ros.publishing import tolerant_publisher
from tether_ros.realtime import RealtimeThread, raise_process_nice
from tether_ros.spin import run


# A short queue per source: a source sends a chunk every 30-100 ms and each replaces the last, so
# three are plenty, and a flood is dropped by DDS before this process spends anything on it.
SOURCE_QOS = QoSProfile(depth=3, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


class GateNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("gate", **kwargs)  # type: ignore[arg-type]
        self.profile = load_profile(str(self.declare_parameter("robot", "so101").value))
        defaults = GateConfig()
        config = GateConfig(
            rate_hz=float(self.declare_parameter("rate_hz", defaults.rate_hz).value),
            state_timeout=float(self.declare_parameter("state_timeout", defaults.state_timeout).value),
            source_timeout=float(self.declare_parameter("source_timeout", defaults.source_timeout).value),
            max_step=float(self.declare_parameter("max_step", defaults.max_step).value),
            sources=list(self.declare_parameter("sources", defaults.sources).value),
            active_source=str(self.declare_parameter("active_source", defaults.active_source).value),
            human_source=str(self.declare_parameter("human_source", defaults.human_source).value),
        )
        self.gate = Gate(self.profile, config)
        self._lock = threading.Lock()  # the gate core, shared by the stream thread and the executor
        priority = int(self.declare_parameter("realtime_priority", 40).value)
        realtime = RealtimeThread(self, priority)
        # The executor's thread too, just below the stream: chunks, joint states and the e-stop are on the
        # control path, and this thread holds the interpreter lock the stream needs, so nothing the stream
        # outranks may preempt it. Its work is bounded even under a flood (short source queues, a rate
        # limit checked before decoding): ~30 % of a core at 1.7 kHz of chunks, measured.
        self._realtime_executor = RealtimeThread(self, max(0, priority - 5))
        # A refused write loses one command (the next follows within a period); 0.5 s of them fails the gate.
        self.command_pub = tolerant_publisher(self, JointTrajectory, self.profile.command_topic, COMMAND_QOS, 0.5)
        self.diag_pub = tolerant_publisher(self, DiagnosticArray, DIAGNOSTICS, 10, max_outage_s=10.0)
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        for source in config.sources:  # raw: a flood is dropped before it is decoded
            self.create_subscription(JointTrajectory, source_topic(source), partial(self._on_chunk, source),
                                     SOURCE_QOS, raw=True)
        self.create_service(Trigger, "~/estop", self._estop)
        self.create_service(Trigger, "~/clear_estop", self._clear_estop)
        self.create_service(Trigger, "~/reset", self._reset)
        self.create_service(Trigger, "~/takeover", lambda q, r: self._switch(Mode.HUMAN, r))
        self.create_service(Trigger, "~/handback", lambda q, r: self._switch(Mode.AUTONOMOUS, r))
        self.create_service(SetBool, "~/pause", self._pause)
        self.intervention_pub = self.create_publisher(Bool, INTERVENTION, LATCHED_QOS)
        self.intervention_pub.publish(Bool(data=False))
        self._last_state = ""
        self._state_changed = False
        self._ticks_since_diag = 0
        self._last_diag = self._now()
        self._rate = 0.0
        self.finished = False  # set when the stream fails: the process then exits 1
        self.exit_code = 0
        self.create_timer(1.0, self._measure_rate)
        self.create_timer(0.1, self._watch_commanders)
        self.create_timer(0.02, self._report_state_change)
        self.stream = self._command_stream(realtime)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: JointState) -> None:
        self._realtime_executor()
        try:
            with self._lock:
                self.gate.on_joint_state(list(msg.name), list(msg.position), to_sec(msg.header.stamp))
        except TetherError as exc:
            self._refused("joint_states", str(exc))

    def _on_chunk(self, source: str, cdr: bytes) -> None:
        try:
            with self._lock:
                if self.gate.flooded(source, self._now()):
                    return  # counted as rejected_rate_limited; the diagnostics show it once a second
                self.gate.check_bytes(source, len(cdr))
        except ChunkRejected as exc:
            self._refused(f"{source}:{exc.reason}", str(exc))
            return
        # Outside the lock: decoding and converting a chunk takes a while.
        fields = trajectory_fields(deserialize_message(cdr, JointTrajectory))
        try:
            with self._lock:
                self.gate.on_chunk(source, *fields, now=self._now())
        except ChunkRejected as exc:
            self._refused(f"{source}:{exc.reason}", str(exc))

    def _report_state_change(self) -> None:
        """A hold, a stop or tracking again, on /diagnostics within 20 ms (built here, off the stream thread)."""
        if self._state_changed:
            self._state_changed = False
            self._publish_diagnostics()

    def _watch_commanders(self) -> None:
        """Nothing but the gate may command the robot: a second publisher is a latched fault.

        The gate stops within the limits, names the intruder, and once at rest ends the process with
        exit code 3, which fails the graph (``ros2 launch`` and the embedded runner alike).
        """
        if not self.gate.fault:
            me = (self.get_name(), self.get_namespace())
            others = [f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in
                      self.get_publishers_info_by_topic(self.resolve_topic_name(self.profile.command_topic))
                      if (i.node_name, i.node_namespace) != me]
            if others:
                with self._lock:
                    self.gate.latch_fault(f"second commander on {self.profile.command_topic}: {', '.join(others)}")
                self.get_logger().fatal(f"{self.gate.fault}; holding, then exiting")
                self._publish_diagnostics()
        elif self.gate.at_rest and not self.finished:
            self.exit_code, self.finished = 3, True

    def _refused(self, what: str, message: str) -> None:
        self.get_logger().warning(f"refused {what}: {message}", throttle_duration_sec=1.0)
        self._publish_status(DiagnosticStatus.WARN, f"refused {what}: {message}", {})

    def _command_stream(self, realtime: RealtimeThread) -> PeriodicLoop | SimTimeLoop:
        """Wall time: a thread of its own at real-time priority. Sim time (use_sim_time): /clock drives the
        ticks, each at its exact deadline, so the stream stays at rate_hz of sim time however fast the twin runs."""
        if not self.get_parameter("use_sim_time").value:
            return PeriodicLoop(self.gate.period, lambda: self._tick(self._now()), name="gate-stream",
                                on_start=realtime).start()
        loop = SimTimeLoop(self.gate.period, self._tick)
        self.create_subscription(Clock, CLOCK, lambda m: loop.advance(to_sec(m.clock)), 10)
        return loop

    def _tick(self, now: float) -> None:
        """One command through the safety filter, published outside the lock (on the stream thread, or the
        executor's with the sim clock)."""
        with self._lock:
            cmd = self.gate.tick(now)
        self._ticks_since_diag += 1
        if cmd is None:
            return
        self.command_pub.publish(trajectory_msg(self.profile.joint_names, now, [self.gate.period], cmd.positions))
        if cmd.reason != self._last_state:
            self._last_state = cmd.reason
            self._state_changed = True  # reported from the executor: never on the stream's time

    def _switch(self, mode: Mode, res: Trigger.Response) -> Trigger.Response:
        with self._lock:
            changed = self.gate.set_mode(mode)
        if changed:
            self.get_logger().info(f"mode -> {mode.value} (source '{self.gate.active_source}')")
            self.intervention_pub.publish(Bool(data=self.gate.intervention))
            self._publish_diagnostics()
        res.success, res.message = True, f"mode={self.gate.mode.value} source={self.gate.active_source}"
        return res

    def _pause(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        out = self._switch(Mode.PAUSED if req.data else Mode.AUTONOMOUS, Trigger.Response())
        res.success, res.message = out.success, out.message
        return res

    def _estop(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self.gate.estop()
        self.get_logger().error("E-STOP latched")
        res.success, res.message = True, "e-stop latched"
        return res

    def _clear_estop(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self.gate.clear_estop()
        res.success, res.message = True, "e-stop cleared"
        return res

    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self._switch(Mode.AUTONOMOUS, Trigger.Response())  # every episode starts autonomous
        with self._lock:
            self.gate.reset()
        res.success, res.message = True, "gate re-anchored on the measured state"
        return res

    def _measure_rate(self) -> None:
        if self.stream.error is not None and not self.finished:
            self.get_logger().fatal(f"command stream failed: {self.stream.error!r}")
            self.exit_code, self.finished = 1, True
        now = self._now()
        self._rate = round(self._ticks_since_diag / max(now - self._last_diag, 1e-9), 1)
        self._ticks_since_diag, self._last_diag = 0, now
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        with self._lock:
            diag = self.gate.diagnostics()
            estopped = self.gate.estopped
        diag["rate_hz"] = self._rate
        diag["missed_deadlines"] = self.stream.missed
        diag["publish_failures"] = self.command_pub.failures
        periods = self.stream.period_ms()
        if periods:
            diag["tick_period_p99_ms"] = round(periods["p99"], 3)
        level = DiagnosticStatus.ERROR if estopped or diag["fault"] else DiagnosticStatus.OK
        self._publish_status(level, str(diag["fault"]) or self._last_state or "waiting for joint states", diag)

    def _publish_status(self, level: int, message: str, values: Mapping[str, object]) -> None:
        status = DiagnosticStatus(level=level, name=status_name(self, "gate"), message=message, hardware_id=self.profile.name)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def close(self, stop_within: float = 0.5) -> None:
        """The gate's last act is a stop: decelerate within the limits to rest, then end the stream.

        Whatever ends the process (a signal, its supervisor gone), the robot is left holding still at
        the last command, never frozen mid-motion. The stream ends before the publishers go.
        """
        with self._lock:
            self.gate.shutting_down = True
        deadline = time.monotonic() + stop_within  # at 3 rad/s and 20 rad/s^2 a stop takes 0.15 s
        while self.stream.running and time.monotonic() < deadline:
            with self._lock:
                if self.gate.at_rest:
                    break
            time.sleep(self.gate.period)
        time.sleep(2 * self.gate.period)  # one more tick at rest on the wire
        self.stream.stop()


NODE = GateNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    # The stream thread and the executor share the GIL. When the executor is busy (a flood of chunks),
    # a waking stream thread waits up to the interpreter's switch interval (5 ms by default) for it;
    # 0.2 ms keeps that wait well inside the stream's period.
    sys.setswitchinterval(0.0002)
    raise_process_nice()  # DDS's threads, created with the node, deliver its messages: ahead of other work
    return run(GateNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
