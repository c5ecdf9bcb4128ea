"""The gate's command stream as processes over DDS: a frozen robot, a chunk flood, neither stalls it.

The gate and the twin run as their own processes (as in a rehearsal); this test process plays
the action source and watches the stream on the wire, timed by each command's DDS source
timestamp (when the gate wrote it): on a busy machine this process may take the samples late
and in bursts, which says nothing about the gate. Bounds here are liveness bounds, far above
the figures measured (``tether bench gate``): they catch a stream that stalls or starves, not a
slow machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether_ros.conversions import COMMAND_QOS, DIAGNOSTICS, STATE_QOS, source_topic, trajectory_msg


class Source(Node):
    """Sends chunks as the expert would and records the gate's stream and diagnostics."""

    def __init__(self, profile) -> None:
        super().__init__("stream_probe")
        self.profile = profile
        self.received: list[float] = []  # when the gate wrote each command (DDS source timestamp)
        self.states: list[JointState] = []
        self.gate: dict[str, str] = {}
        self.create_subscription(JointTrajectory, profile.command_topic,
                                 lambda _m, info: self.received.append(info["source_timestamp"] * 1e-9), COMMAND_QOS)
        self.create_subscription(JointState, "/joint_states", self.states.append, STATE_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._diag, 50)
        self.chunks = self.create_publisher(JointTrajectory, source_topic("expert"), COMMAND_QOS)

    def _diag(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name == "tether/gate" and any(kv.key == "commands" for kv in s.values):
                self.gate = {kv.key: kv.value for kv in s.values}

    def send(self, offset: float = 0.1) -> None:
        q = np.array(self.states[-1].position) if self.states else self.profile.home
        q[0] += offset
        now = self.get_clock().now().nanoseconds * 1e-9
        self.chunks.publish(trajectory_msg(self.profile.joint_names, now, [0.1], np.atleast_2d(q)))

    def call(self, graph, service: str) -> float:
        """Call a Trigger service; returns the answer time in ms."""
        start = time.perf_counter()
        future = self.create_client(Trigger, service).call_async(Trigger.Request())
        assert graph.spin_until(future.done, 5.0), f"{service} did not answer"
        return (time.perf_counter() - start) * 1e3


@pytest.fixture
def twin_and_gate() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    args = ["--ros-args", "-p", "camera_width:=64", "-p", "camera_height:=48"]
    procs = {name: subprocess.Popen([sys.executable, "-m", f"tether_ros.{name}_node", *args, "-r", f"__node:={name}"])
             for name in ("twin", "gate")}
    try:
        yield procs
    finally:
        for proc in procs.values():
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            assert proc.wait(timeout=10) == 0  # a clean stop, even after being frozen


def _stream(graph, source: Source, seconds: float, chunk_hz: float) -> np.ndarray:
    """Periods (ms) of the commands received while sending chunks at ``chunk_hz``."""
    first, end, next_chunk = len(source.received), time.monotonic() + seconds, 0.0
    while time.monotonic() < end:
        if time.monotonic() >= next_chunk:
            source.send()
            next_chunk = time.monotonic() + 1.0 / chunk_hz
        graph.executor.spin_once(timeout_sec=0.0002)
    return np.diff(source.received[first:]) * 1e3


def _start(graph, so101) -> Source:
    source = graph.add(Source(so101))
    assert graph.spin_until(lambda: len(source.states) > 10 and len(source.received) > 10, 30.0), "graph did not start"
    return source


def test_a_frozen_robot_neither_stalls_the_stream_nor_the_estop(graph, so101, twin_and_gate) -> None:
    """SIGSTOP of the robot side (the twin, the command topic's consumer): the gate streams on and answers."""
    source = _start(graph, so101)
    _stream(graph, source, 1.0, 50.0)
    os.kill(twin_and_gate["twin"].pid, signal.SIGSTOP)
    first = len(source.received)
    answers = []
    for _ in range(5):
        _stream(graph, source, 0.3, 50.0)
        answers.append(source.call(graph, "/gate/estop"))
        source.call(graph, "/gate/clear_estop")
    frozen = np.diff(source.received[first:]) * 1e3
    os.kill(twin_and_gate["twin"].pid, signal.SIGCONT)
    print(f"\ne-stop answers {np.round(answers, 1)} ms; stream while frozen: p50 {np.median(frozen):.2f} "
          f"p99 {np.percentile(frozen, 99):.2f} max {frozen.max():.1f} ms over {len(frozen)} commands")
    assert max(answers) < 100.0
    assert frozen.max() < 100.0 and np.median(frozen) == pytest.approx(5.0, abs=0.5)


def test_a_chunk_flood_is_rate_limited_without_starving_the_stream(graph, so101, twin_and_gate) -> None:
    source = _start(graph, so101)
    periods = _stream(graph, source, 3.0, 1500.0)
    assert graph.spin_until(lambda: int(source.gate.get("rejected_rate_limited", "0")) > 0, 3.0)
    rate = 1e3 / np.mean(periods)
    print(f"\nstream under a {1500} Hz chunk flood: {rate:.1f} Hz, period p50 {np.median(periods):.2f} "
          f"p99 {np.percentile(periods, 99):.2f} max {periods.max():.1f} ms; "
          f"rate-limited {source.gate['rejected_rate_limited']}")
    assert 190.0 <= rate <= 210.0  # 200 Hz +- 5 %
    assert periods.max() < 100.0
