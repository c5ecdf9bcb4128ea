"""Exact CDR of test messages, as a raw subscription receives them (rosbags' Kilted type store)."""

from __future__ import annotations

import numpy as np
from rosbags.typesys import Stores, get_typestore

KILTED = get_typestore(Stores.ROS2_KILTED)


def joint_state(i: int) -> bytes:
    """A JointState whose first position (and stamp in ns) is ``i``."""
    t = KILTED.types
    stamp = t["builtin_interfaces/msg/Time"](sec=0, nanosec=i)
    msg = t["sensor_msgs/msg/JointState"](header=t["std_msgs/msg/Header"](stamp=stamp, frame_id=""), name=["pan"],
                                          position=np.array([float(i)]), velocity=np.zeros(0), effort=np.zeros(0))
    return bytes(KILTED.serialize_cdr(msg, "sensor_msgs/msg/JointState"))
