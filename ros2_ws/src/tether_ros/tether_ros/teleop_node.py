"""Teleop node: a human (or a replay standing in for one) as an action source.

Publishes JointTrajectory chunks on ``/tether/source/teleop/joint_trajectory``
and asks the gate for control (``/gate/takeover``) when the device becomes
active.

Devices (parameter ``device``):

* ``keyboard`` (a terminal: ``device_path`` names its tty, default stdin), ``gamepad`` (evdev,
  ``device_path`` an event node, default the first pad found), ``spacemouse`` (hidapi,
  ``device_path`` a hidraw path, default the first found): a twist through the Cartesian jog.
* ``leader``: a leader arm's ``sensor_msgs/JointState`` on ``leader_topic``; joints map by name
  unless ``leader_map`` names a YAML file (``tether.teleop.leader.LeaderArm.from_config``).
* ``replay``: the scripted expert takes over ``takeover_after`` seconds into the episode: the same
  code path a person on a gamepad uses, so takeovers and their labels can be tested and demoed.

For the human devices the logic lives in :class:`tether.teleop.operator.Operator`; this node only
converts. At ``rate_hz`` (30) it reads the device with the latest measured joints: a takeover
(activity above ``activity_threshold`` or the takeover button) calls ``/gate/takeover``, the
handback button ``/gate/handback``; while the human drives, the targets go out as one-point
chunks stamped with the joint state's capture time. The episode buttons are published on
``/tether/teleop/event`` (std_msgs/String) and the recovery button toggles
``/recorder/mark_recovery``. The first command after a takeover is the measured robot state, so
the handover is smooth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.client import Client
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import DeviceNotFoundError, TetherError
from tether.joint_state import joint_vector
from tether.robot_profile import load_profile
from tether.sim.expert import PickPlaceExpert
from tether.teleop.leader import LeaderArm
from tether.teleop.operator import HUMAN_DEVICES, Operator, make_device
from tether_ros.bad_input import BadInputReport
from tether_ros.conversions import (
    COMMAND_QOS,
    OBJECT_POSE,
    STATE_QOS,
    TARGET_POSE,
    TELEOP_EVENT,
    source_topic,
    to_sec,
    trajectory_msg,
)
from tether_ros.publishing import tolerant_publisher
from tether_ros.spin import run

DEVICES = (*HUMAN_DEVICES, "replay")


class TeleopNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("teleop", **kwargs)  # type: ignore[arg-type]
        p = self.declare_parameter
        self.profile = load_profile(str(p("robot", "so101").value))
        self.device_name = str(p("device", "replay").value)
        if self.device_name not in DEVICES:
            raise TetherError(f"unknown teleop device '{self.device_name}'; devices: {', '.join(DEVICES)}")
        self.takeover_after = float(p("takeover_after", 2.0).value)
        self.pub = tolerant_publisher(self, JointTrajectory, source_topic("teleop"), COMMAND_QOS)
        self.bad_input = BadInputReport(self)
        self.takeover: Client = self.create_client(Trigger, "gate/takeover")
        self.handback: Client = self.create_client(Trigger, "gate/handback")
        self.create_service(Trigger, "~/reset", self._reset)
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        self._start: float | None = None
        self.active = False
        self.operator: Operator | None = None
        self._state: tuple[float, np.ndarray] | None = None
        if self.device_name == "replay":
            self.expert = PickPlaceExpert(self.profile)
            self.period = 1.0 / self.expert.control_hz
            self.create_subscription(PoseStamped, OBJECT_POSE, lambda m: setattr(self, "_object", m), 10)
            self.create_subscription(PoseStamped, TARGET_POSE, lambda m: setattr(self, "_target", m), 10)
            self._object: PoseStamped | None = None
            self._target: PoseStamped | None = None
            self._last_act = -np.inf
            return
        self.period = 1.0 / float(p("rate_hz", 30.0).value)
        path = str(p("device_path", "").value)
        self._tty: int | None = None
        if self.device_name == "keyboard" and path:  # a terminal of its own (a process of a graph has none)
            try:
                self._tty = os.open(path, os.O_RDWR | os.O_NOCTTY)
            except OSError as err:
                raise DeviceNotFoundError("keyboard", f"cannot open terminal {path} ({err.strerror})",
                                          "run in an interactive terminal") from None
        device = make_device(self.device_name, self.profile, path, str(p("leader_map", "").value),
                             keyboard_fd=self._tty)
        self.operator = Operator(device, self.profile, threshold=float(p("activity_threshold", 0.2).value))
        if isinstance(device, LeaderArm):
            self.create_subscription(JointState, str(p("leader_topic", "leader/joint_states").value),
                                     self._on_leader, STATE_QOS)
        self.event_pub = self.create_publisher(String, TELEOP_EVENT, 10)
        self.recovery: Client = self.create_client(SetBool, "recorder/mark_recovery")
        device.connect()
        self.create_timer(self.period, self._tick)
        self.get_logger().info(f"teleop device '{self.device_name}' connected")

    def close(self) -> None:
        if self.operator is None:
            return
        self.operator.device.disconnect()  # restores the terminal's mode
        if self._tty is not None:
            os.close(self._tty)
            self._tty = None

    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        if self.operator is not None:
            self.operator.reset()
        else:
            self.expert.reset()
            self._object, self._target = None, None
        self._start = None
        self.active = False
        res.success, res.message = True, "teleop reset"
        return res

    def _on_leader(self, msg: JointState) -> None:
        assert self.operator is not None and isinstance(self.operator.device, LeaderArm)
        try:
            self.operator.device.update(list(msg.name), list(msg.position), to_sec(msg.header.stamp))
        except TetherError as exc:
            self.bad_input.refuse("leader joint_states", exc)

    def _on_state(self, msg: JointState) -> None:
        try:
            q = joint_vector(self.profile.joint_names, msg.name, msg.position, self.profile.joint_states_topic)
        except TetherError as exc:
            self.bad_input.refuse(self.profile.joint_states_topic, exc)
            return
        stamp = to_sec(msg.header.stamp)
        if self.operator is not None:
            self._state = (stamp, q)
            return
        self._replay(stamp, q)

    def _tick(self) -> None:
        assert self.operator is not None
        if self._state is None:
            return
        stamp, q = self._state
        step = self.operator.step(q, self.period)
        if step.takeover:
            self.takeover.call_async(Trigger.Request())
            self.get_logger().info("takeover: the human drives")
        if step.handback:
            self.handback.call_async(Trigger.Request())
            self.get_logger().info("handback: autonomous again")
        self.active = self.operator.driving
        if step.mark_recovery is not None:
            self.recovery.call_async(SetBool.Request(data=step.mark_recovery))
        for event in step.events:
            self.event_pub.publish(String(data=event))
            self.get_logger().info(f"episode event: {event}")
        if step.target is not None:
            self.pub.publish(trajectory_msg(self.profile.joint_names, stamp, [self.period], step.target[None]))

    def _replay(self, stamp: float, q: np.ndarray) -> None:
        if self._start is None or stamp < self._start:
            self._start = stamp
        if not self.active and stamp - self._start >= self.takeover_after:
            self.active = True
            self.takeover.call_async(Trigger.Request())
            self.get_logger().info(f"takeover at t={stamp - self._start:.2f}s")
        if not self.active or self._object is None or self._target is None or stamp - self._last_act < self.period - 1e-3:
            return
        self._last_act = stamp
        p, o, t = self._object.pose.position, self._object.pose.orientation, self._target.pose.position
        action = self.expert.act(q, np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z]),
                                 np.array([t.x, t.y, t.z]), stamp - self._start - self.takeover_after)
        self.pub.publish(trajectory_msg(self.profile.joint_names, stamp, [self.period], action))


NODE = TeleopNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(TeleopNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
