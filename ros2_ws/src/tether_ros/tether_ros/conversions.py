"""Message <-> numpy conversions and the topic names the graph shares."""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

# The graph's own names are relative, so a whole graph runs under a namespace (launch's namespace:=,
# the CLI's --namespace) beside another one on the same ROS domain.
JOINT_STATES = "joint_states"
OBJECT_POSE = "tether/sim/object_pose"  # privileged: only the twin knows it
TARGET_POSE = "tether/sim/target_pose"
# Absolute, as ROS has it: /diagnostics is the one robot-wide topic that diagnostic_aggregator and
# rqt_robot_monitor read, whatever namespace a node runs in; each status's name carries the graph's
# namespace (status_name), so two graphs' reports stay apart. /clock is absolute too (use_sim_time reads it).
DIAGNOSTICS = "/diagnostics"
CLOCK = "/clock"
INTERVENTION = "tether/intervention"  # std_msgs/Bool, transient-local: True while a human drives
TELEOP_EVENT = "tether/teleop/event"  # std_msgs/String: success, failure, discard, rerecord (episode buttons)


def status_name(node: Node, what: str) -> str:
    """A diagnostic status's name: ``tether/<what>``, under the node's namespace when it has one."""
    namespace = node.get_namespace().strip("/")
    return f"{namespace}/tether/{what}" if namespace else f"tether/{what}"


def source_topic(source: str) -> str:
    """Each action source publishes chunks on its own topic; only the gate reaches the robot."""
    return f"tether/source/{source}/joint_trajectory"


def camera_topic(camera: str, leaf: str = "image_raw") -> str:
    return f"camera/{camera}/{leaf}"


STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED_QOS = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
# A reliable KEEP_LAST writer keeps only ``depth`` samples for a reader that lags: a recorder starved by a
# busy machine lost the joint state of a frame's instant (its frame dropped as stale_state) and whole
# camera frames (camera_gap) to a depth of 10 and 5. The sensor writers keep ~0.4 s of states and 1 s of
# images for such a reader; subscribers choose their own depth.
STATE_WRITER_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
IMAGE_WRITER_QOS = QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def to_stamp(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def to_duration(seconds: float) -> Duration:
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def from_duration(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def image_msg(rgb: np.ndarray, stamp: float, frame_id: str) -> Image:
    """An rgb8 Image of an HxWx3 uint8 array: one memcpy into the message.

    (Assigning ``bytes`` to ``data`` makes rclpy build its array element by element: ~0.8 ms for a
    640x480 frame, on the thread that renders and publishes 60 of them a second.)
    """
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.header.stamp, msg.header.frame_id = to_stamp(stamp), frame_id
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb, dtype=np.uint8).data)
    msg.data = data
    return msg


def joint_state_msg(names: list[str], q: np.ndarray, v: np.ndarray, stamp: float) -> JointState:
    msg = JointState()
    msg.header.stamp = to_stamp(stamp)
    msg.name = list(names)
    msg.position = q.astype(float).tolist()
    msg.velocity = v.astype(float).tolist()
    return msg


def trajectory_msg(names: list[str], start: float, times: list[float], points: np.ndarray) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp = to_stamp(start)
    msg.joint_names = list(names)
    for t, q in zip(times, np.atleast_2d(points)):
        msg.points.append(JointTrajectoryPoint(positions=np.asarray(q, float).tolist(), time_from_start=to_duration(t)))
    return msg


def trajectory_fields(msg: JointTrajectory) -> tuple[list[str], float, list[float], list[np.ndarray]]:
    """(joint_names, start, times, positions) for the core's validators; each point's positions a float64
    array viewing the message's own buffer (no copy: the gate converts every chunk it accepts)."""
    return (
        list(msg.joint_names),
        to_sec(msg.header.stamp),
        [from_duration(p.time_from_start) for p in msg.points],
        [np.frombuffer(p.positions, dtype=np.float64) for p in msg.points],
    )
