"""Run a node the ros2/examples way: clean exit on Ctrl-C and on external shutdown."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.experimental import EventsExecutor
from rclpy.node import Node


def run(make_node: Callable[[], Node], args: list[str] | None = None, *, events: bool = False) -> int:
    """Spin one node in bounded steps (EventsExecutor ignores signals in an unbounded spin)."""
    rclpy.init(args=args)
    node: Node | None = None
    code = 0
    try:
        node = make_node()
        executor: Executor = EventsExecutor() if events else SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not getattr(node, "finished", False):
            executor.spin_once(timeout_sec=0.1)
        code = int(getattr(node, "exit_code", 0))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        release([node] if node is not None else [])
    return code


def release(nodes: list[Node]) -> None:
    """Close (devices, files) and destroy nodes, then shut rclpy down.

    Every node is closed even when one before it fails to (the twin's GL context, say), so a
    recorder after it still commits its episode; the first failure is raised at the end.
    """
    failure: Exception | None = None
    for node in nodes:
        close = getattr(node, "close", None)
        try:
            if close is not None:
                close()
        except Exception as exc:  # noqa: BLE001 - raised below, once every node is closed
            failure = failure or exc
        node.destroy_node()
    if rclpy.ok():
        rclpy.shutdown()
    if failure is not None:
        raise failure
