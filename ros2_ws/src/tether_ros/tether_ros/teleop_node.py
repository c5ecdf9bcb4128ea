"""Teleop node: a human (or a replay standing in for one) as an action source.

Publishes JointTrajectory chunks on ``/tether/source/teleop/joint_trajectory``
and asks the gate for control (``/gate/takeover``) when the device becomes
active. The ``replay`` device replays the scripted expert from the moment it
takes over (``takeover_after`` seconds into the episode): the same code path a
person on a gamepad uses, so takeovers and their labels can be tested and demoed.
Its first command starts from the measured robot state, so the handover is smooth.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError
from tether.robot_profile import load_profile
from tether.sim.expert import PickPlaceExpert
from tether_ros.conversions import COMMAND_QOS, OBJECT_POSE, STATE_QOS, TARGET_POSE, source_topic, to_sec, trajectory_msg
from tether_ros.spin import run

DEVICES = ("replay",)


class TeleopNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("teleop", **kwargs)  # type: ignore[arg-type]
        self.profile = load_profile(str(self.declare_parameter("robot", "so101").value))
        device = str(self.declare_parameter("device", "replay").value)
        if device not in DEVICES:
            raise TetherError(f"unknown teleop device '{device}'; devices: {', '.join(DEVICES)}")
        self.takeover_after = float(self.declare_parameter("takeover_after", 2.0).value)
        self.expert = PickPlaceExpert(self.profile)
        self.period = 1.0 / self.expert.control_hz
        self.pub = self.create_publisher(JointTrajectory, source_topic("teleop"), COMMAND_QOS)
        self.takeover = self.create_client(Trigger, "/gate/takeover")
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        self.create_subscription(PoseStamped, OBJECT_POSE, lambda m: setattr(self, "_object", m), 10)
        self.create_subscription(PoseStamped, TARGET_POSE, lambda m: setattr(self, "_target", m), 10)
        self.create_service(Trigger, "~/reset", self._reset)
        self._object: PoseStamped | None = None
        self._target: PoseStamped | None = None
        self._start: float | None = None
        self._last_act = -np.inf
        self.active = False

    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.expert.reset()
        self._start, self._object, self._target = None, None, None
        self.active = False
        res.success, res.message = True, "teleop reset"
        return res

    def _on_state(self, msg: JointState) -> None:
        stamp = to_sec(msg.header.stamp)
        if self._start is None or stamp < self._start:
            self._start = stamp
        if not self.active and stamp - self._start >= self.takeover_after:
            self.active = True
            self.takeover.call_async(Trigger.Request())
            self.get_logger().info(f"takeover at t={stamp - self._start:.2f}s")
        if not self.active or self._object is None or self._target is None or stamp - self._last_act < self.period - 1e-3:
            return
        self._last_act = stamp
        index = {n: i for i, n in enumerate(msg.name)}
        q = np.array([msg.position[index[j]] for j in self.profile.joint_names])
        p, o, t = self._object.pose.position, self._object.pose.orientation, self._target.pose.position
        action = self.expert.act(q, np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z]),
                                 np.array([t.x, t.y, t.z]), stamp - self._start - self.takeover_after)
        self.pub.publish(trajectory_msg(self.profile.joint_names, stamp, [self.period], action))


NODE = TeleopNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(TeleopNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
