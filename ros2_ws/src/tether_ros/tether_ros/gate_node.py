"""Gate node: the only path from action sources to the robot's command topic.

Subscribes to ``/joint_states`` and to ``/tether/source/<name>/joint_trajectory``
for each source; streams safety-filtered single-point JointTrajectory commands
at ``rate_hz`` on the robot profile's command topic; holds position on stale
state or a silent source; latches an e-stop (``~/estop``, ``~/clear_estop``);
reports state, rates and every refusal on ``/diagnostics``.

Arbitration: ``~/takeover`` hands control to the human source, ``~/handback``
returns it to the autonomous one, ``~/pause`` (SetBool) holds. Whether a human
drives is published on ``/tether/intervention`` (Bool, transient-local).
"""

from __future__ import annotations

import collections
import os

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError
from tether.gate import Gate, GateConfig, Mode
from tether.robot_profile import load_profile
from tether.safety import ChunkRejected
from tether_ros.conversions import (
    COMMAND_QOS,
    DIAGNOSTICS,
    INTERVENTION,
    LATCHED_QOS,
    STATE_QOS,
    source_topic,
    to_sec,
    trajectory_fields,
    trajectory_msg,
)
from tether_ros.spin import run


class GateNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("gate", **kwargs)  # type: ignore[arg-type]
        robot = self.declare_parameter("robot", "so101").value
        self.profile = load_profile(str(robot))
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
        self._raise_priority(int(self.declare_parameter("realtime_priority", 40).value))
        self.command_pub = self.create_publisher(JointTrajectory, self.profile.command_topic, COMMAND_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        for source in config.sources:
            self.create_subscription(
                JointTrajectory, source_topic(source), lambda m, s=source: self._on_chunk(s, m), COMMAND_QOS
            )
        self.create_service(Trigger, "~/estop", self._estop)
        self.create_service(Trigger, "~/clear_estop", self._clear_estop)
        self.create_service(Trigger, "~/reset", self._reset)
        self.create_service(Trigger, "~/takeover", lambda q, r: self._switch(Mode.HUMAN, r))
        self.create_service(Trigger, "~/handback", lambda q, r: self._switch(Mode.AUTONOMOUS, r))
        self.create_service(SetBool, "~/pause", self._pause)
        self.intervention_pub = self.create_publisher(Bool, INTERVENTION, LATCHED_QOS)
        self.intervention_pub.publish(Bool(data=False))
        self.create_timer(self.gate.period, self._tick)
        self.create_timer(1.0, self._measure_rate)
        self._last_state = ""
        self._ticks_since_diag = 0
        self._last_diag = self._now()
        self._rate = 0.0
        self._last_tick: float | None = None
        self._periods: collections.deque[float] = collections.deque(maxlen=2000)  # ~10 s of ticks

    def _raise_priority(self, priority: int) -> None:
        """SCHED_FIFO for the command stream when allowed (root or CAP_SYS_NICE); 0 disables."""
        if priority <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            self.get_logger().info(f"command stream at SCHED_FIFO priority {priority}")
        except (PermissionError, AttributeError, OSError) as exc:
            self.get_logger().warning(f"no real-time priority ({exc}); the 200 Hz stream may jitter under load")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: JointState) -> None:
        try:
            self.gate.on_joint_state(list(msg.name), list(msg.position), to_sec(msg.header.stamp))
        except TetherError as exc:
            self._refused("joint_states", str(exc))

    def _on_chunk(self, source: str, msg: JointTrajectory) -> None:
        try:
            self.gate.on_chunk(source, *trajectory_fields(msg), now=self._now())
        except ChunkRejected as exc:
            self._refused(f"{source}:{exc.reason}", str(exc))

    def _refused(self, what: str, message: str) -> None:
        self.get_logger().warning(f"refused {what}: {message}", throttle_duration_sec=1.0)
        self._publish_status(DiagnosticStatus.WARN, f"refused {what}: {message}", {})

    def _tick(self) -> None:
        now = self._now()
        cmd = self.gate.tick(now)
        self._ticks_since_diag += 1
        if self._last_tick is not None:
            self._periods.append((now - self._last_tick) * 1e3)
        self._last_tick = now
        if cmd is None:
            return
        self.command_pub.publish(trajectory_msg(self.profile.joint_names, now, [self.gate.period], cmd.positions))
        if cmd.reason != self._last_state:
            self._last_state = cmd.reason
            self._publish_diagnostics()

    def _switch(self, mode: Mode, res: Trigger.Response) -> Trigger.Response:
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
        self.gate.estop()
        self.get_logger().error("E-STOP latched")
        res.success, res.message = True, "e-stop latched"
        return res

    def _clear_estop(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.gate.clear_estop()
        res.success, res.message = True, "e-stop cleared"
        return res

    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self._switch(Mode.AUTONOMOUS, Trigger.Response())  # every episode starts autonomous
        self.gate.reset()
        res.success, res.message = True, "gate re-anchored on the measured state"
        return res

    def _measure_rate(self) -> None:
        now = self._now()
        self._rate = round(self._ticks_since_diag / max(now - self._last_diag, 1e-9), 1)
        self._ticks_since_diag, self._last_diag = 0, now
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        diag = self.gate.diagnostics()
        diag["rate_hz"] = self._rate
        if self._periods:
            diag["tick_period_p99_ms"] = round(float(np.percentile(self._periods, 99)), 3)
        level = DiagnosticStatus.ERROR if self.gate.estopped else DiagnosticStatus.OK
        self._publish_status(level, self._last_state or "waiting for joint states", diag)

    def _publish_status(self, level: int, message: str, values: dict[str, object]) -> None:
        status = DiagnosticStatus(level=level, name="tether/gate", message=message, hardware_id=self.profile.name)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


NODE = GateNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(GateNode, args, events=True)  # the 200 Hz stream needs the lowest-overhead executor


if __name__ == "__main__":
    raise SystemExit(main())
