"""Real rclpy over real DDS, in one process: nodes under test plus a probe node."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator

import pytest

os.environ["ROS_DOMAIN_ID"] = str(random.randint(101, 200))  # apart from any rehearsal running alongside
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402


class Graph:
    def __init__(self) -> None:
        self.executor = SingleThreadedExecutor()
        self.nodes: list[rclpy.node.Node] = []

    def add(self, node: rclpy.node.Node) -> rclpy.node.Node:
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.005)

    def spin_until(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=0.005)
        return cond()


@pytest.fixture(autouse=True)
def normal_scheduling() -> Iterator[None]:
    """Nodes hosted in this process put the spinning thread under SCHED_FIFO (tether_ros.realtime);
    put it back, so the CPU-heavy tests after them never run at real-time priority."""
    yield
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@pytest.fixture
def graph() -> Iterator[Graph]:
    rclpy.init()
    g = Graph()
    try:
        yield g
    finally:
        for node in g.nodes:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        rclpy.shutdown()


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A terminal for the keyboard device: (master fd to type into, the slave's path)."""
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)
