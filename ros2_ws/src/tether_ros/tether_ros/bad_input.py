"""A node's refusals of messages it cannot use, said on ``/diagnostics`` instead of a crash or a silent drop.

A joint-state message that lacks one of the robot's joints used to raise ``KeyError`` inside the
expert's callback (the process died) and was dropped without a word by teleop and the recorder.
Now each refusal is counted, logged (throttled) and published as a WARN status named
``tether/<node>/input`` (under the node's namespace; at most once a second), whose values are the counts per topic.
"""

from __future__ import annotations

import collections
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from tether_ros.conversions import DIAGNOSTICS, status_name
from tether_ros.publishing import tolerant_publisher


class BadInputReport:
    """Counts, logs and reports the messages one node refuses."""

    PERIOD = 1.0  # seconds between two WARN statuses, however fast bad messages arrive

    def __init__(self, node: Node) -> None:
        self._node = node
        self._pub = tolerant_publisher(node, DiagnosticArray, DIAGNOSTICS, 10, max_outage_s=10.0)
        self.counts: collections.Counter[str] = collections.Counter()
        self._last_report = -float("inf")

    def refuse(self, topic: str, error: Exception) -> None:
        self.counts[topic] += 1
        self._node.get_logger().warning(f"refused a message on {topic}: {error}", throttle_duration_sec=self.PERIOD)
        now = time.monotonic()
        if now - self._last_report >= self.PERIOD:
            self._last_report = now
            self._publish(f"refused a message on {topic}: {error}")

    def _publish(self, message: str) -> None:
        name = status_name(self._node, f"{self._node.get_name()}/input")
        status = DiagnosticStatus(level=DiagnosticStatus.WARN, name=name, message=message)
        status.values = [KeyValue(key=f"refused {topic}", value=str(n)) for topic, n in self.counts.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(arr)
