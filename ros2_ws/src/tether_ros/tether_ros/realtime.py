"""Real-time scheduling for the threads on the control path: the gate's stream, the twin's state loop, the expert.

A busy machine must slow rendering, encoding and training, never the command stream: with
SCHED_FIFO the kernel runs these threads as soon as they wake, ahead of every ordinary
process. It needs root or CAP_SYS_NICE (``setcap cap_sys_nice+ep`` on the venv's python, or a
``rtprio`` limit in /etc/security/limits.conf, as ros2_control deployments do); without it the
node says so once and runs at normal priority. These threads sleep between short callbacks, so
they cannot starve the machine (the kernel also caps real-time threads at 95 % of each second).
"""

from __future__ import annotations

import os
import threading

from rclpy.node import Node


class RealtimeThread:
    """Puts the thread that runs a node's callbacks under SCHED_FIFO, once, from inside a callback.

    From a callback, because in a container the node is built on the main thread but spun on one
    of its own; the priority belongs to the spinning thread.
    """

    def __init__(self, node: Node, priority: int) -> None:
        self._node, self._priority = node, priority
        self._thread: int | None = None

    def __call__(self) -> None:
        """Call at the top of the node's most frequent callback; cheap after the first call."""
        if self._thread is not None or self._priority <= 0:
            return
        self._thread = threading.get_native_id()
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._priority))
            self._node.get_logger().info(f"callbacks at SCHED_FIFO priority {self._priority}")
        except (PermissionError, AttributeError, OSError) as exc:
            self._node.get_logger().warning(
                f"no real-time priority ({exc}); under load its timing may suffer. Grant CAP_SYS_NICE "
                "or an rtprio limit, or set realtime_priority:=0 to silence this")
