"""Sim rehearsal: twin, action source, gate and session, built from tether.graph.

    ros2 launch launch/sim_rehearsal.launch.py episodes:=20 seed:=0 report:=runs/rehearsal

Requires the tether core importable by the ROS Python (``pip install -e .``)
and ``tether_ros`` built with colcon.
"""

from tether.graph import RehearsalArgs, rehearsal_graph
from tether.launch_description import graph_launch_description


def generate_launch_description():  # noqa: ANN201 - launch's entry point
    return graph_launch_description(RehearsalArgs, rehearsal_graph)
