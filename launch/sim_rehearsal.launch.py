"""Sim rehearsal: twin, action source, gate and session, built from tether.graph.

    ros2 launch launch/sim_rehearsal.launch.py episodes:=20 seed:=0 report:=runs/rehearsal

Requires the tether core importable by the ROS Python (``pip install -e .``)
and ``tether_ros`` built with colcon.
"""

from __future__ import annotations

import dataclasses

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from tether.graph import RehearsalArgs, rehearsal_graph


def _nodes(context, *_args, **_kwargs):
    values = {}
    for f in dataclasses.fields(RehearsalArgs):
        raw = LaunchConfiguration(f.name).perform(context)
        values[f.name] = type(getattr(RehearsalArgs(), f.name))(raw)
    actions = []
    for spec in rehearsal_graph(RehearsalArgs(**values)):
        actions.append(
            Node(
                package=spec.package,
                executable=spec.executable,
                name=spec.name,
                parameters=[spec.parameters],
                output="screen",
                # The session ending, or any node dying, ends the launch (as in `tether rehearse`).
                on_exit=[Shutdown(reason=f"{spec.name} exited")],
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    defaults = RehearsalArgs()
    args = [DeclareLaunchArgument(f.name, default_value=str(getattr(defaults, f.name))) for f in dataclasses.fields(RehearsalArgs)]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
