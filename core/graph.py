"""The one declaration of each deployment profile's ROS 2 graph.

``launch/*.launch.py`` turn these NodeSpecs into ``launch_ros`` Node actions;
the embedded runner (``tether rehearse``) starts the very same nodes as
processes of the project's venv. Neither adds or drops a node.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from tether.errors import TetherError
from tether.graph_args import arg

PACKAGE = "tether_ros"
ParamValue = bool | int | float | str | list[str]


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    name: str
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    package: str = PACKAGE
    # The node whose exit ends the graph (the session).
    terminal: bool = False
    # Nodes with the same non-empty ``process`` share one process (tether_ros.container).
    process: str = ""
    namespace: str = ""  # "" or "/ns": every topic and service of the graph is relative, so it moves along
    params_file: str = ""  # a ROS parameters YAML: sets what the graph's own parameters leave unset


@dataclass(frozen=True)
class ProcessSpec:
    """What to start: one node's executable, or the container running several nodes."""

    name: str
    executable: str
    arguments: list[str]
    parameters: dict[str, ParamValue]
    package: str = PACKAGE
    terminal: bool = False
    remap_name: bool = True  # a lone node takes ``name``; a container's nodes keep their own
    namespace: str = ""
    params_file: str = ""


def processes(nodes: list[NodeSpec]) -> list[ProcessSpec]:
    """Group a graph's nodes into processes (in order of first appearance), merging shared parameters."""
    groups: dict[str, list[NodeSpec]] = {}
    for spec in nodes:
        groups.setdefault(spec.process or f"node:{spec.name}", []).append(spec)
    return [_container(key, specs) if specs[0].process else _single(specs[0]) for key, specs in groups.items()]


def _single(spec: NodeSpec) -> ProcessSpec:
    return ProcessSpec(spec.name, spec.executable, [], dict(spec.parameters), spec.package, spec.terminal,
                       namespace=spec.namespace, params_file=spec.params_file)


def _container(name: str, specs: list[NodeSpec]) -> ProcessSpec:
    merged: dict[str, ParamValue] = {}
    for spec in specs:
        for key, value in spec.parameters.items():
            if key in merged and merged[key] != value:
                raise TetherError(f"process '{name}': parameter '{key}' differs between its nodes "
                                  f"({merged[key]!r} vs {value!r}); parameters apply to every node in a process")
            merged[key] = value
    return ProcessSpec(name, "container", [s.executable for s in specs], merged,
                       terminal=any(s.terminal for s in specs), remap_name=False,
                       namespace=specs[0].namespace, params_file=specs[0].params_file)


SOURCES = ("expert", "policy")
# wall: the twin keeps pace with the wall clock, as a robot does; a machine that cannot render its
# cameras in time skips frames or lets sim time slip (counted). sim: the twin drives /clock and
# every node runs on it (use_sim_time); a busy machine slows the simulated world instead, so
# nothing is skipped: what unattended data collection wants.
CLOCKS = ("wall", "sim")
# The policy node's chunk schedulers (tether.policy_runtime.runtime.scheduler.MODES; a test keeps them equal).
SCHEDULERS = ("ensemble", "switch")

_CLOCK_HELP = ("wall: the twin keeps real time, as a robot would, and the report measures latency; sim: the twin "
               "publishes /clock and every node runs on it (use_sim_time), so a busy machine slows the simulated "
               "world instead")
_CAMERA_HELP = "the twin's camera {} in pixels (0: the profile's; a policy's model sets it)"
_DEPLOYMENT_HELP = {
    "use_sim_time": "true: the same as clock sim (the twin publishes /clock and every node runs on it)",
    "namespace": "ROS namespace of every node, topic and service ('': none), e.g. arm1",
    "params_file": "a ROS parameters YAML for every node (keys '/**' or node names); it sets parameters the "
                   "arguments leave unset ('': none)",
}


@dataclass(frozen=True)
class RehearsalArgs:
    robot: str = arg("so101", "robot profile: a file name in config/robots/ without .yaml")
    task: str = arg("pick_place", "the twin's task")
    source: str = arg("expert", "the action source", SOURCES)
    episodes: int = arg(20, "episodes to run (at least 1)")
    seed: int = arg(0, "seed of the first episode; episode i uses seed + i")
    report: str = arg("runs/rehearsal", "report folder: report.md, report.json, video, plot, logs")
    camera_width: int = arg(0, _CAMERA_HELP.format("width"))
    camera_height: int = arg(0, _CAMERA_HELP.format("height"))
    episode_timeout: float = arg(20.0, "seconds of the twin's time before an episode counts as failed")
    gate_rate_hz: float = arg(200.0, "the gate's command stream rate")
    video_episodes: int = arg(1, "episodes whose video goes into the report")
    policy: str = arg("", "with source policy: the model folder ('': the model shipped with the repo)")
    replan_hz: float = arg(0.0, "with source policy: inferences a second (0: the policy node's default, 10 Hz)")
    scheduler: str = arg("", "with source policy: how chunks become commands ('': ensemble for ACT, switch for "
                             "diffusion)", ("", *SCHEDULERS))
    clock: str = arg("wall", _CLOCK_HELP, CLOCKS)
    use_sim_time: bool = arg(False, _DEPLOYMENT_HELP["use_sim_time"])
    namespace: str = arg("", _DEPLOYMENT_HELP["namespace"])
    params_file: str = arg("", _DEPLOYMENT_HELP["params_file"])


def rehearsal_graph(a: RehearsalArgs) -> list[NodeSpec]:
    """Twin, action source, gate and session: the full loop against the twin."""
    if a.source not in SOURCES:
        raise TetherError(f"unknown source '{a.source}'; sources: {', '.join(SOURCES)}")
    if a.clock not in CLOCKS:
        raise TetherError(f"unknown clock '{a.clock}'; clocks: {', '.join(CLOCKS)}")
    return _deployed(a.namespace, a.params_file, _on_clock("sim" if a.use_sim_time else a.clock, [
        NodeSpec(
            "twin_node",
            "twin",
            {
                "robot": a.robot,
                "task": a.task,
                "seed": a.seed,
                "camera_width": a.camera_width,
                "camera_height": a.camera_height,
                "hold_after_reset": True,  # the session starts each episode once every node is reset
            },
        ),
        NodeSpec(f"{a.source}_node", a.source, _source_parameters(a)),
        NodeSpec(
            "gate_node",
            "gate",
            {"robot": a.robot, "rate_hz": a.gate_rate_hz, "active_source": a.source},
        ),
        NodeSpec(
            "session_node",
            "session",
            {
                "robot": a.robot,
                "task": a.task,
                "source": a.source,
                "episodes": a.episodes,
                "seed": a.seed,
                "report": a.report,
                "episode_timeout": a.episode_timeout,
                "gate_rate_hz": a.gate_rate_hz,
                "video_episodes": a.video_episodes,
            },
            terminal=True,
        ),
    ]))


# A ROS namespace: name tokens (a letter or _, then letters, digits, _) joined by "/".
_NAMESPACE = re.compile(r"/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def ros_namespace(namespace: str) -> str:
    """"" or an absolute namespace ("arm1" -> "/arm1"); anything else is refused, naming the rules."""
    if not namespace:
        return ""
    if not _NAMESPACE.fullmatch(namespace):
        raise TetherError(f"namespace '{namespace}' is not a ROS namespace: names of letters, digits and _ "
                          f"(not starting with a digit) joined by '/', e.g. arm1 or lab/arm1")
    return "/" + namespace.lstrip("/")


def _deployed(namespace: str, params_file: str, nodes: list[NodeSpec]) -> list[NodeSpec]:
    """Every node under ``namespace`` and reading ``params_file`` (the graph's own parameters win)."""
    ns = ros_namespace(namespace)
    return [dataclasses.replace(n, namespace=ns, params_file=params_file) for n in nodes]


def _on_clock(clock: str, nodes: list[NodeSpec]) -> list[NodeSpec]:
    """With the sim clock, the twin publishes /clock and every node (the twin too) sets use_sim_time."""
    if clock == "wall":
        return nodes
    return [dataclasses.replace(n, parameters={**n.parameters, "use_sim_time": True,
                                               **({"publish_clock": True} if n.name == "twin" else {})})
            for n in nodes]


def _source_parameters(a: RehearsalArgs) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {"robot": a.robot}
    if a.source != "policy":
        return params
    if a.policy:
        params["model_dir"] = a.policy
    if a.replan_hz > 0:
        params["replan_hz"] = a.replan_hz
    if a.scheduler:
        params["mode"] = a.scheduler
    return params


# What the recorder does with the episode it is recording when the session fails (see CollectArgs).
ON_ABORT = ("truncate", "discard")

# expert: no device; the autonomous source (the expert, or a policy) drives alone. replay: the
# autonomous source drives, then the scripted expert, standing in for a human, takes over
# ``takeover_after`` seconds into each episode (labelled interventions, end to end).
# keyboard, gamepad, spacemouse, leader: the autonomous source drives until a person takes over.
DEVICES = ("expert", "replay", "keyboard", "gamepad", "spacemouse", "leader")


@dataclass(frozen=True)
class CollectArgs:
    robot: str = arg("so101", "robot profile: a file name in config/robots/ without .yaml")
    task: str = arg("pick_place", "the twin's task")
    device: str = arg("expert", "expert: the autonomous source alone; replay: the scripted expert takes over "
                                "mid-episode, standing in for a person; keyboard (a terminal), gamepad (evdev), "
                                "spacemouse (hidapi), leader (a leader arm's joint states on leader/joint_states): "
                                "the autonomous source drives until a person takes over", DEVICES)
    episodes: int = arg(20, "episodes to record (at least 1)")
    seed: int = arg(0, "seed of the first episode; episode i uses seed + i")
    dataset: str = arg("runs/dataset", "dataset folder: new, empty, or a LeRobot v3 dataset to append to")
    report: str = arg("", "report folder ('': the dataset's folder name + _report, beside it)")
    camera_width: int = arg(0, _CAMERA_HELP.format("width"))
    camera_height: int = arg(0, _CAMERA_HELP.format("height"))
    episode_timeout: float = arg(20.0, "seconds of the twin's time before an episode counts as failed")
    gate_rate_hz: float = arg(200.0, "the gate's command stream rate")
    takeover_after: float = arg(2.0, "device replay: seconds into each episode")
    device_path: str = arg("", "keyboard: its tty; gamepad: /dev/input/eventN; spacemouse: a hidraw path "
                               "('': the first found)")
    stop_on_success: bool = arg(True, "false: every episode runs its full timeout (a recording soak)")
    linger_s: float = arg(0.0, "seconds to keep recording after success, so demos hold the release and retreat")
    # Raw camera images in the MCAP log too: ~3.3 GB/min at 2x640x480x30 fps, and on 2 cores the
    # control loop then slows (13/20 expert successes measured); the dataset's videos hold them anyway.
    mcap_images: bool = arg(False, "also log raw camera images in the MCAP log (~3.3 GB/min at 2x640x480; "
                                   "slows a 2-core machine)")
    # HG-DAgger-style corrections with "policy": the policy's own commands are recorded with
    # control_source "policy" and are not trained on.
    autonomous: str = arg("expert", "who drives until the device takes over", SOURCES)
    policy: str = arg("", "with autonomous policy: the model folder ('': the model shipped with the repo)")
    on_abort: str = arg("truncate", "when the session fails mid-episode: commit that episode marked truncated "
                                    "(outcome unknown), or discard it", ON_ABORT)
    clock: str = arg("", "'': sim for device expert and replay (unattended: nothing is lost on a slow machine), "
                         "wall for the others (a person needs real time); " + _CLOCK_HELP, ("", *CLOCKS))
    use_sim_time: bool = arg(False, _DEPLOYMENT_HELP["use_sim_time"])
    namespace: str = arg("", _DEPLOYMENT_HELP["namespace"])
    params_file: str = arg("", _DEPLOYMENT_HELP["params_file"])


def collect_clock(a: CollectArgs) -> str:
    """Unattended collection runs on sim time (nothing lost on a slow machine); a person needs real time."""
    if a.use_sim_time:
        return "sim"
    return a.clock or ("sim" if a.device in ("expert", "replay") else "wall")


def collect_report(a: CollectArgs) -> str:
    """The report folder: given, or beside the dataset (``<dataset>_report``)."""
    return a.report or a.dataset.rstrip("/") + "_report"


def collect_graph(a: CollectArgs) -> list[NodeSpec]:
    """Rehearsal's loop plus the recorder: every episode lands in a LeRobotDataset v3."""
    if a.device not in DEVICES:
        raise TetherError(f"unknown device '{a.device}'; devices: {', '.join(DEVICES)}")
    if a.on_abort not in ON_ABORT:
        raise TetherError(f"unknown on_abort '{a.on_abort}'; choices: {', '.join(ON_ABORT)}")
    clock = collect_clock(a)
    base = rehearsal_graph(
        RehearsalArgs(
            robot=a.robot, task=a.task, source=a.autonomous, episodes=a.episodes, seed=a.seed,
            report=collect_report(a), camera_width=a.camera_width, camera_height=a.camera_height,
            episode_timeout=a.episode_timeout, gate_rate_hz=a.gate_rate_hz, video_episodes=0, policy=a.policy,
            clock=clock, namespace=a.namespace, params_file=a.params_file,
        )
    )
    # Images never cross a process: the recorder shares the twin's process (on a robot, the cameras').
    twin = dataclasses.replace(base[0], process="sim_station")
    recorder = NodeSpec(
        "recorder_node",
        "recorder",
        {"robot": a.robot, "dataset": a.dataset, "camera_width": a.camera_width, "camera_height": a.camera_height,
         "autonomous_source": a.autonomous, "log_images": a.mcap_images, "on_abort": a.on_abort},
        process="sim_station",
    )
    teleop: dict[str, ParamValue] = {"robot": a.robot, "device": a.device, "takeover_after": a.takeover_after}
    if a.device_path:
        teleop["device_path"] = a.device_path
    human = [NodeSpec("teleop_node", "teleop", teleop)] if a.device != "expert" else []
    session = base[-1]
    params = {**session.parameters, "record": True, "human_source": "teleop" if human else "",
              "stop_on_success": a.stop_on_success, "linger_s": a.linger_s}
    extra = _deployed(a.namespace, a.params_file, _on_clock(clock, [*human, recorder]))
    return [twin, *base[1:-1], *extra, dataclasses.replace(session, parameters=params)]


@dataclass(frozen=True)
class GateSoakArgs:
    """``tether bench gate``: a rehearsal whose action source is under attack (see tether.gate_soak)."""

    robot: str = "so101"
    seconds: float = 300.0
    flood_hz: float = 1500.0  # valid chunks a second on the active source's topic
    malformed_hz: float = 20.0  # malformed chunks a second, every kind in turn
    seed: int = 0
    report: str = "runs/bench/gate"


def gate_soak_graph(a: GateSoakArgs) -> list[NodeSpec]:
    """One episode of ``seconds`` that does not stop at success, with the adversary beside the expert."""
    base = rehearsal_graph(RehearsalArgs(robot=a.robot, episodes=1, seed=a.seed, report=a.report,
                                         episode_timeout=a.seconds, video_episodes=0))
    session = base[-1]
    adversary = NodeSpec("adversary_node", "adversary", {
        "robot": a.robot, "out": a.report, "flood_hz": a.flood_hz, "malformed_hz": a.malformed_hz,
        "seed": a.seed, "source": "expert"})
    return [*base[:-1], adversary, dataclasses.replace(session, parameters={**session.parameters,
                                                                             "stop_on_success": False})]


GRAPHS = {"rehearse": rehearsal_graph, "collect": collect_graph, "gate_soak": gate_soak_graph}
