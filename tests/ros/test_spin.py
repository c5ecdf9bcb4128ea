"""Releasing a process's nodes: one that fails to close does not keep the others open."""

from __future__ import annotations

import pytest
import rclpy
from rclpy.node import Node

from tether_ros.spin import release


class Closing(Node):
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        super().__init__(name)
        self.log, self.fail = log, fail

    def close(self) -> None:
        self.log.append(self.get_name())
        if self.fail:
            raise RuntimeError(f"{self.get_name()} cannot close")


def test_every_node_is_closed_and_the_first_failure_raised() -> None:
    rclpy.init()
    closed: list[str] = []
    nodes = [Closing("twin", closed, fail=True), Closing("recorder", closed), Closing("other", closed, fail=True)]
    with pytest.raises(RuntimeError, match="twin cannot close"):
        release(nodes)
    assert closed == ["twin", "recorder", "other"]
    assert not rclpy.ok()
