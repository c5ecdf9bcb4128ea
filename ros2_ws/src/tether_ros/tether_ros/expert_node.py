"""Expert node: the scripted pick-and-place expert as an action source.

It reads ``/joint_states`` and the cube and target poses that only the twin
knows (``/tether/sim/object_pose``, ``/tether/sim/target_pose``). That is
privileged information a learned policy never gets: the expert exists to
produce demonstrations and to rehearse the graph, not as a baseline.

Publishes JointTrajectory chunks on ``/tether/source/expert/joint_trajectory``,
stamped with the capture time of the joint state they were computed from.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from tether.errors import TetherError
from tether.joint_state import joint_vector
from tether.robot_profile import load_profile
from tether.sim.expert import PickPlaceExpert
from tether_ros.bad_input import BadInputReport
from tether_ros.conversions import (
    COMMAND_QOS,
    OBJECT_POSE,
    STATE_QOS,
    TARGET_POSE,
    source_topic,
    to_sec,
    trajectory_msg,
)
from tether_ros.publishing import tolerant_publisher
from tether_ros.realtime import RealtimeThread, raise_process_nice
from tether_ros.spin import run


class ExpertNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("expert", **kwargs)  # type: ignore[arg-type]
        self.profile = load_profile(str(self.declare_parameter("robot", "so101").value))
        self.expert = PickPlaceExpert(self.profile)
        rate = float(self.declare_parameter("control_hz", self.expert.control_hz).value)
        self.period = 1.0 / rate
        # Below the gate's threads (40, 35), which it can then never preempt while they hold their GIL.
        self._realtime = RealtimeThread(self, int(self.declare_parameter("realtime_priority", 30).value))
        self.pub = tolerant_publisher(self, JointTrajectory, source_topic("expert"), COMMAND_QOS)
        self.create_subscription(JointState, self.profile.joint_states_topic, self._on_state, STATE_QOS)
        self.create_subscription(PoseStamped, OBJECT_POSE, self._on_object, 10)
        self.create_subscription(PoseStamped, TARGET_POSE, self._on_target, 10)
        self.create_service(Trigger, "~/reset", self._reset)
        self._state: tuple[float, np.ndarray] | None = None  # (stamp, joint vector) of the latest state
        self.bad_input = BadInputReport(self)
        self._object: PoseStamped | None = None
        self._target: PoseStamped | None = None
        self._episode_start: float | None = None
        self._last_act = -float("inf")

    def _on_state(self, msg: JointState) -> None:
        self._realtime()
        # Act on a fresh state rather than on a timer: the chunk then starts from an observation
        # that is microseconds old, not up to one state period old.
        try:
            q = joint_vector(self.profile.joint_names, msg.name, msg.position, self.profile.joint_states_topic)
        except TetherError as exc:
            self.bad_input.refuse(self.profile.joint_states_topic, exc)
            return
        stamp = to_sec(msg.header.stamp)
        self._state = (stamp, q)
        if stamp - self._last_act >= self.period - 1e-3 or stamp < self._last_act:
            self._last_act = stamp
            self._act()

    def _on_object(self, msg: PoseStamped) -> None:
        self._object = msg

    def _on_target(self, msg: PoseStamped) -> None:
        self._target = msg

    def _reset(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.expert.reset()
        self._state = self._object = self._target = None  # wait for post-reset observations
        self._episode_start = None
        res.success, res.message = True, "expert reset"
        return res

    def _act(self) -> None:
        if self._state is None or self._object is None or self._target is None:
            return
        stamp, q = self._state
        if self._episode_start is None:
            self._episode_start = stamp
        p, o = self._object.pose.position, self._object.pose.orientation
        t = self._target.pose.position
        action = self.expert.act(
            q, np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z]), np.array([t.x, t.y, t.z]), stamp - self._episode_start
        )
        self.pub.publish(trajectory_msg(self.profile.joint_names, stamp, [self.period], action))


NODE = ExpertNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    raise_process_nice()  # DDS's threads, created with the node, deliver its messages: ahead of other work
    return run(ExpertNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
