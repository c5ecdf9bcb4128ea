"""Data collection: the rehearsal loop plus the recorder, built from tether.graph.

    ros2 launch tether_ros teleop_collect.launch.py device:=expert episodes:=20 dataset:=runs/dataset

Every episode is committed to a LeRobotDataset v3 at ``dataset``.
"""

from tether.graph import CollectArgs, collect_graph
from tether.launch_description import graph_launch_description


def generate_launch_description():  # noqa: ANN201 - launch's entry point
    return graph_launch_description(CollectArgs, collect_graph)
