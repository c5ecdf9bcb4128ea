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

    Only for threads whose work per second is bounded (a fixed-rate loop, callbacks of a sensor):
    the kernel caps all real-time threads at 95 % of each second, and one flooded real-time thread
    can use that up and freeze the others for the rest of the second (a 50 ms gap in the gate's
    stream, measured). Work that an outsider can multiply (the gate's executor, which a flood of
    chunks reaches) gets a raised ``nice`` instead: ``nice=True``.
    """

    NICE = -10  # a share ~10x a default process's, never above the real-time threads

    def __init__(self, node: Node, priority: int, *, nice: bool = False) -> None:
        self._node, self._priority, self._nice = node, priority, nice
        self._thread: int | None = None

    def __call__(self) -> None:
        """Call at the top of the node's most frequent callback; cheap after the first call."""
        if self._thread is not None or self._priority <= 0:
            return
        self._thread = threading.get_native_id()
        try:
            if self._nice:
                os.setpriority(os.PRIO_PROCESS, self._thread, self.NICE)  # this thread only, on Linux
                self._node.get_logger().info(f"callbacks at nice {self.NICE}")
            else:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._priority))
                self._node.get_logger().info(f"callbacks at SCHED_FIFO priority {self._priority}")
        except (PermissionError, AttributeError, OSError) as exc:
            self._node.get_logger().warning(
                f"no raised priority ({exc}); under load its timing may suffer. Grant CAP_SYS_NICE "
                "or an rtprio limit, or set realtime_priority:=0 to silence this")


def raise_process_nice(value: int = RealtimeThread.NICE) -> None:
    """Call first in a control-path node's ``main``: every thread created after it (DDS's receive and
    event threads among them, which deliver the node's messages) starts at nice ``value``. Without the
    right to it, nothing changes (the node's own threads say so when they try)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except (PermissionError, AttributeError, OSError):
        pass
