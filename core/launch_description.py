"""Turn a tether graph declaration into a ``launch`` description (used by ``launch/*.launch.py``).

``launch``/``launch_ros`` come from a ROS 2 install, so they are imported only
when a launch file asks; the rest of tether never needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tether.graph import NodeSpec, processes


def graph_launch_description(args_type: type, build: Callable[[Any], list[NodeSpec]]) -> Any:
    """One launch argument per field of ``args_type``; one Node per NodeSpec that ``build`` returns."""
    from launch import LaunchDescription  # type: ignore[attr-defined]  # (the repo has a launch/ folder)
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    defaults = args_type()
    declared = [
        DeclareLaunchArgument(f.name, default_value=str(getattr(defaults, f.name)))
        for f in dataclasses.fields(args_type)
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=lambda context: _nodes(context, args_type, build))])


def _nodes(context: Any, args_type: type, build: Callable[[Any], list[NodeSpec]]) -> list[Any]:
    from launch.actions import Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    defaults = args_type()
    values = {}
    for f in dataclasses.fields(args_type):
        raw = LaunchConfiguration(f.name).perform(context)
        kind = type(getattr(defaults, f.name))
        values[f.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    return [
        Node(
            package=spec.package,
            executable=spec.executable,
            arguments=spec.arguments or None,
            parameters=[spec.parameters],
            output="screen",
            # The session ending, or any node dying, ends the launch (as in the embedded runner).
            on_exit=[Shutdown(reason=f"{spec.name} exited")],
            **({"name": spec.name} if spec.remap_name else {}),
        )
        for spec in processes(build(args_type(**values)))
    ]
