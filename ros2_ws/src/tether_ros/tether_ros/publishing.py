"""Publishers on the control path that lose a sample, not the node, when the middleware refuses a write.

Fast DDS can refuse a write (rclpy raises ``RCLError: Failed to publish: cannot publish data``)
when its writer has no free sample or change for a moment; it did so once in CI, for the twin's
joint states, with CPU hogs on both cores, and the twin died and took the rehearsal with it. The
topics these publishers carry are periodic and KEEP_LAST: the next sample supersedes a lost one
within a few milliseconds, which is what a subscriber of a KEEP_LAST topic already expects. So a
refused write is counted (``failures``, shown on ``/diagnostics``) and logged, throttled. A
publisher that keeps failing is a real fault: after ``max_outage_s`` without one write getting
through, ``PublishOutageError`` is raised from ``publish`` and the node dies, so the graph fails
safe with a non-zero exit instead of driving on stale data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile

from tether.errors import TetherError

try:  # where rclpy keeps its exception type has moved between releases
    from rclpy._rclpy_pybind11 import RCLError
except ImportError:  # pragma: no cover - older rclpy
    from rclpy.exceptions import RCLError  # type: ignore[attr-defined,no-redef]


class PublishOutageError(TetherError):
    """A control-path publisher could not write a single sample for longer than its allowed outage."""


class DropTolerantPublisher:
    """Wraps one rclpy publisher: a refused write is counted and dropped; a long outage raises."""

    def __init__(self, publisher: Publisher, logger: RcutilsLogger, max_outage_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pub, self._logger, self._max_outage, self._clock = publisher, logger, max_outage_s, clock
        self.failures = 0
        self._failing_since: float | None = None

    @property
    def topic_name(self) -> str:
        return str(self._pub.topic_name)

    def get_subscription_count(self) -> int:
        return int(self._pub.get_subscription_count())

    def publish(self, msg: object) -> bool:
        """True when the middleware took the sample."""
        try:
            self._pub.publish(msg)
        except RCLError as exc:
            return self._refused(exc)
        self._failing_since = None
        return True

    def _refused(self, exc: Exception) -> bool:
        now = self._clock()
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = now
        outage = now - self._failing_since
        if outage > self._max_outage:
            raise PublishOutageError(
                f"{self.topic_name}: no sample could be published for {outage:.1f} s "
                f"({self.failures} writes refused); last error: {exc}") from exc
        self._logger.warning(f"{self.topic_name}: the middleware refused a sample ({self.failures} so far), "
                             f"dropped: {str(exc).splitlines()[0]}", throttle_duration_sec=1.0)
        return False


def tolerant_publisher(node: Node, msg_type: type, topic: str, qos: QoSProfile | int,
                       max_outage_s: float = 1.0) -> DropTolerantPublisher:
    """``node.create_publisher`` behind a ``DropTolerantPublisher`` logging to the node's logger."""
    return DropTolerantPublisher(node.create_publisher(msg_type, topic, qos), node.get_logger(), max_outage_s)
