"""Turn a tether graph declaration into a ``launch`` description (used by ``launch/*.launch.py``).

``launch``/``launch_ros`` come from a ROS 2 install, so they are imported only
when a launch file asks; the rest of tether never needs them.

The launch ends as the embedded runner's run does (tether.runner): when the session exits, or
when any node exits first. It fails (``LaunchService.run()`` returns 1, so ``ros2 launch``
exits 1) when a node exits non-zero or a node other than the session exits before the launch
shuts down: ``launch`` turns an exception raised in an event handler into that return code, and
has no other way to set it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.graph import NodeSpec, ProcessSpec, processes
from tether.graph_args import GraphArgument, args_from_text, graph_arguments


class GraphExitError(TetherError):
    """A node of a launched graph failed: the launch returns non-zero."""


def graph_launch_description(args_type: type, build: Callable[[Any], list[NodeSpec]]) -> Any:
    """One launch argument per field of ``args_type``; one Node per process of what ``build`` returns."""
    from launch import LaunchDescription  # type: ignore[attr-defined]  # (the repo has a launch/ folder)
    from launch.actions import OpaqueFunction, RegisterEventHandler
    from launch.event_handlers import OnProcessExit

    watch = ExitWatch()
    return LaunchDescription([
        *(_declare(a) for a in graph_arguments(args_type)),
        RegisterEventHandler(OnProcessExit(on_exit=watch)),
        OpaqueFunction(function=lambda context: _nodes(context, args_type, build, watch)),
    ])


def _declare(argument: GraphArgument) -> Any:
    from launch.actions import DeclareLaunchArgument

    choices = {"choices": list(argument.choices)} if argument.choices else {}
    return DeclareLaunchArgument(argument.name, default_value=str(argument.default),
                                 description=argument.help, **choices)


class ExitWatch:
    """The OnProcessExit handler of every node: a node's failure fails the launch (see the module's doc)."""

    def __init__(self) -> None:
        self._nodes: dict[int, ProcessSpec] = {}  # id of the Node action -> what it runs

    def watch(self, action: Any, spec: ProcessSpec) -> Any:
        self._nodes[id(action)] = spec
        return action

    def __call__(self, event: Any, context: Any) -> None:
        spec = self._nodes.get(id(event.action))
        if spec is None:  # a process this graph did not start (an including launch file's)
            return None
        if event.returncode != 0:
            raise GraphExitError(f"node '{spec.name}' exited with {event.returncode}; the graph failed")
        if not spec.terminal and not context.is_shutdown:
            raise GraphExitError(f"node '{spec.name}' exited before the session ended; the graph failed")
        return None


def _nodes(context: Any, args_type: type, build: Callable[[Any], list[NodeSpec]], watch: ExitWatch) -> list[Any]:
    from launch.substitutions import LaunchConfiguration

    text = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph_arguments(args_type)}
    args = args_from_text(args_type, text)
    if args.params_file and not Path(args.params_file).is_file():
        raise TetherError(f"launch argument params_file:={args.params_file!r}: no such file; "
                          f"give a ROS parameters YAML, or '' for none")
    return [watch.watch(_node(spec), spec) for spec in processes(build(args))]


def _node(spec: ProcessSpec) -> Any:
    from launch.actions import Shutdown
    from launch_ros.actions import Node

    # The graph's own parameters come last, so they win over the file's (as `-p` does over
    # `--params-file` in the embedded runner).
    parameters: list[Any] = [*([spec.params_file] if spec.params_file else []), spec.parameters]
    return Node(
        package=spec.package,
        executable=spec.executable,
        arguments=spec.arguments or None,
        parameters=parameters,
        output="screen",
        # The session ending, or any node dying, ends the launch (as in the embedded runner).
        on_exit=[Shutdown(reason=f"{spec.name} exited")],
        **({"name": spec.name} if spec.remap_name else {}),
        **({"namespace": spec.namespace} if spec.namespace else {}),
    )
