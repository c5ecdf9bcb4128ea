"""A write the middleware refuses loses that sample, not the node; a publisher that stays refused fails the node."""

from __future__ import annotations

import pytest
from rclpy._rclpy_pybind11 import RCLError
from std_msgs.msg import Int32

from tether_ros.publishing import DropTolerantPublisher, PublishOutageError

REFUSAL = "Failed to publish: cannot publish data, at src/rmw_publish.cpp:68"


class Middleware:
    """Stands in for an rclpy publisher whose writes Fast DDS refuses while ``refusing`` is set."""

    topic_name = "/joint_states"

    def __init__(self) -> None:
        self.refusing = False
        self.sent: list[int] = []

    def publish(self, msg: Int32) -> None:
        if self.refusing:
            raise RCLError(REFUSAL)
        self.sent.append(msg.data)

    def get_subscription_count(self) -> int:
        return 1


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, throttle_duration_sec: float = 0.0) -> None:
        self.warnings.append(message)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tolerant(max_outage_s: float = 0.5) -> tuple[DropTolerantPublisher, Middleware, Log, Clock]:
    middleware, log, clock = Middleware(), Log(), Clock()
    return DropTolerantPublisher(middleware, log, max_outage_s, clock), middleware, log, clock  # type: ignore[arg-type]  # stand-ins


def test_a_refused_write_is_counted_and_dropped_and_the_next_one_goes_through() -> None:
    pub, middleware, log, clock = tolerant()
    assert pub.publish(Int32(data=1))
    middleware.refusing = True
    assert not pub.publish(Int32(data=2))
    middleware.refusing = False
    clock.now += 0.004
    assert pub.publish(Int32(data=3))
    assert middleware.sent == [1, 3] and pub.failures == 1
    assert "/joint_states" in log.warnings[0] and "cannot publish data" in log.warnings[0]


def test_refusals_shorter_than_the_outage_never_fail_the_node() -> None:
    pub, middleware, _, clock = tolerant(max_outage_s=0.5)
    for _ in range(50):  # every other write refused for 1 s: each outage is one period long
        middleware.refusing = not middleware.refusing
        pub.publish(Int32(data=0))
        clock.now += 0.02
    assert pub.failures == 25


def test_a_publisher_refused_for_longer_than_its_outage_raises_naming_the_topic() -> None:
    pub, middleware, _, clock = tolerant(max_outage_s=0.5)
    middleware.refusing = True
    for _ in range(10):
        pub.publish(Int32(data=0))
        clock.now += 0.05
    with pytest.raises(PublishOutageError, match=r"/joint_states: no sample could be published for 0\.5\d? s"):
        for _ in range(3):
            pub.publish(Int32(data=0))
            clock.now += 0.05
