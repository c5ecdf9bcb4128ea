"""Sim rehearsal: twin, action source, gate and session, built from tether.graph.

    ros2 launch tether_ros sim_rehearsal.launch.py episodes:=20 seed:=0 report:=runs/rehearsal
    ros2 launch launch/sim_rehearsal.launch.py namespace:=arm1 use_sim_time:=true   (the path form)
    ros2 launch tether_ros sim_rehearsal.launch.py --show-args   (every argument, described)

Requires the tether core importable by the ROS Python (``pip install -e .``)
and ``tether_ros`` built with colcon. Exits non-zero when the session fails, as ``tether rehearse`` does.
"""

from tether.graph import RehearsalArgs, rehearsal_graph
from tether.launch_description import graph_launch_description


def generate_launch_description():  # noqa: ANN201 - launch's entry point
    return graph_launch_description(RehearsalArgs, rehearsal_graph)
