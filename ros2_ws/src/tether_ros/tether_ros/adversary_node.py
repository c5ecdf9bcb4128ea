"""Adversary node: attacks the gate through its own inputs and records what reaches the robot.

For ``tether bench gate``. A thread floods the active source's topic with valid chunks at
``flood_hz`` and mixes in a malformed chunk of every kind (``tether.attack``) at
``malformed_hz``; every ``estop_every_s`` it latches the e-stop and clears it a second later,
and every ``switch_every_s`` it hands control to the (silent) human source and back. It records
each command on the robot's topic and the joint state measured before it; on close it writes
them to ``out`` (``tether.gate_soak.SoakRecord``) for the benchmark to judge.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.client import Client
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from tether.attack import REFUSAL, ChunkAttack
from tether.gate_soak import SoakRecord
from tether.joint_state import joint_vector
from tether.robot_profile import load_profile
from tether_ros.conversions import (
    COMMAND_QOS,
    DIAGNOSTICS,
    STATE_QOS,
    source_topic,
    status_name,
    to_duration,
    to_sec,
    to_stamp,
)
from tether_ros.spin import run


class AdversaryNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("adversary", **kwargs)  # type: ignore[arg-type]
        p = self.declare_parameter
        self.profile = load_profile(str(p("robot", "so101").value))
        self.out = Path(str(p("out", "runs/bench/gate").value))
        self.flood_hz = float(p("flood_hz", 1500.0).value)
        self.malformed_hz = float(p("malformed_hz", 20.0).value)
        self.estop_every = float(p("estop_every_s", 10.0).value)
        self.switch_every = float(p("switch_every_s", 7.0).value)
        self.attack = ChunkAttack(self.profile, seed=int(p("seed", 0).value))
        self.sent: collections.Counter[str] = collections.Counter()
        self._stamps: list[float] = []
        self._commands: list[list[float]] = []
        self._measured: list[np.ndarray] = []
        self._state = np.asarray(self.profile.home)
        self._gate: dict[str, str] = {}
        # Armed once the session has reset the gate for its episode: the twin's reset teleports the
        # robot and the stream with it, which is no tick of the gate's to judge.
        self._armed = threading.Event()
        self.chunks = self.create_publisher(JointTrajectory, source_topic(str(p("source", "expert").value)), COMMAND_QOS)
        self.create_subscription(JointTrajectory, self.profile.command_topic, self._on_command,
                                 QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diag, 50)
        self._gate_services: dict[str, Client] = {name: self.create_client(Trigger, f"gate/{name}")
                         for name in ("estop", "clear_estop", "takeover", "handback")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._attack, name="adversary", daemon=True)
        self._thread.start()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: JointState) -> None:
        self._state = joint_vector(self.profile.joint_names, msg.name, msg.position)

    def _on_command(self, msg: JointTrajectory) -> None:
        if msg.points and self._armed.is_set():
            self._stamps.append(to_sec(msg.header.stamp))
            self._commands.append(list(msg.points[0].positions))
            self._measured.append(self._state)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == status_name(self, "gate") and any(kv.key == "commands" for kv in status.values):
                self._gate = {kv.key: kv.value for kv in status.values}
                if int(self._gate.get("resets", "0")) >= 1:
                    self._armed.set()

    def _attack(self) -> None:
        while not self._armed.wait(0.1):
            if self._stop.is_set():
                return
        kinds, pool = list(REFUSAL), [self._message("valid") for _ in range(64)]
        start, sent = time.monotonic(), 0
        next_malformed = next_estop = next_switch = 0.0
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            while sent < elapsed * self.flood_hz:  # in bursts: a Python loop cannot sleep 0.7 ms reliably
                self._publish("valid", pool[sent % len(pool)])
                sent += 1
            if elapsed >= next_malformed:
                kind = kinds[sum(self.sent[k] for k in kinds) % len(kinds)]  # each kind in turn
                self._publish(kind, self._message(kind))
                next_malformed = elapsed + 1.0 / self.malformed_hz
            if elapsed >= next_estop:
                next_estop = elapsed + self.estop_every
                self._pulse("estop", "clear_estop", 1.0)
            if elapsed >= next_switch:
                next_switch = elapsed + self.switch_every
                self._pulse("takeover", "handback", 0.5)
            time.sleep(0.005)

    def _publish(self, kind: str, msg: JointTrajectory) -> None:
        """Send ``msg`` stamped now (a pooled chunk too: stale stamps are their own attack)."""
        if kind not in ("stale_stamp", "future_stamp"):
            msg.header.stamp = to_stamp(self._now())
        self.chunks.publish(msg)
        self.sent[kind] += 1

    def _message(self, kind: str) -> JointTrajectory:
        """One chunk of ``kind``, built as given: malformed ones too (the conversions would refuse them)."""
        names, start, times, positions = self.attack.chunk(kind, self._now())
        msg = JointTrajectory(joint_names=names)
        msg.header.stamp = to_stamp(start)
        msg.points = [JointTrajectoryPoint(positions=[float(v) for v in q], time_from_start=to_duration(t))
                      for t, q in zip(times, positions)]
        return msg

    def _pulse(self, first: str, second: str, hold_s: float) -> None:
        """Call ``first`` now and ``second`` ``hold_s`` later, on a timer so the flood goes on meanwhile."""
        self._gate_services[first].call_async(Trigger.Request())
        threading.Timer(hold_s, lambda: self._gate_services[second].call_async(Trigger.Request())).start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        n = len(self.profile.joints)
        SoakRecord(np.asarray(self._stamps), np.asarray(self._commands).reshape(-1, n),
                   np.asarray(self._measured).reshape(-1, n), dict(self._gate), dict(self.sent)).save(self.out)


NODE = AdversaryNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(AdversaryNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
