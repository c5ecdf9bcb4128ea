"""The one declaration of each deployment profile's ROS 2 graph.

``launch/*.launch.py`` turn these NodeSpecs into ``launch_ros`` Node actions;
the embedded runner (``tether rehearse``) starts the very same nodes as
processes of the project's venv. Neither adds or drops a node.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tether.errors import TetherError

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


def processes(nodes: list[NodeSpec]) -> list[ProcessSpec]:
    """Group a graph's nodes into processes (in order of first appearance), merging shared parameters."""
    groups: dict[str, list[NodeSpec]] = {}
    for spec in nodes:
        groups.setdefault(spec.process or f"node:{spec.name}", []).append(spec)
    return [_container(key, specs) if specs[0].process else _single(specs[0]) for key, specs in groups.items()]


def _single(spec: NodeSpec) -> ProcessSpec:
    return ProcessSpec(spec.name, spec.executable, [], dict(spec.parameters), spec.package, spec.terminal)


def _container(name: str, specs: list[NodeSpec]) -> ProcessSpec:
    merged: dict[str, ParamValue] = {}
    for spec in specs:
        for key, value in spec.parameters.items():
            if key in merged and merged[key] != value:
                raise TetherError(f"process '{name}': parameter '{key}' differs between its nodes "
                                  f"({merged[key]!r} vs {value!r}); parameters apply to every node in a process")
            merged[key] = value
    return ProcessSpec(name, "container", [s.executable for s in specs], merged,
                       terminal=any(s.terminal for s in specs), remap_name=False)


@dataclass(frozen=True)
class RehearsalArgs:
    robot: str = "so101"
    task: str = "pick_place"
    source: str = "expert"
    episodes: int = 2
    seed: int = 0
    report: str = "runs/rehearsal"
    camera_width: int = 0  # 0: the profile's size
    camera_height: int = 0
    episode_timeout: float = 20.0
    gate_rate_hz: float = 200.0
    video_episodes: int = 1
    policy: str = ""  # source "policy": its model folder ("": the model shipped with the repo)
    replan_hz: float = 0.0  # source "policy": inferences a second (0: the policy node's default)
    scheduler: str = ""  # source "policy": "ensemble" or "switch" ("": the policy node's default for the model)
    clock: str = "wall"  # see CLOCKS


SOURCES = ("expert", "policy")
# wall: the twin keeps pace with the wall clock, as a robot does; a machine that cannot render its
# cameras in time skips frames or lets sim time slip (counted). sim: the twin drives /clock and
# every node runs on it (use_sim_time); a busy machine slows the simulated world instead, so
# nothing is skipped: what unattended data collection wants.
CLOCKS = ("wall", "sim")


def rehearsal_graph(a: RehearsalArgs) -> list[NodeSpec]:
    """Twin, action source, gate and session: the full loop against the twin."""
    if a.source not in SOURCES:
        raise TetherError(f"unknown source '{a.source}'; sources: {', '.join(SOURCES)}")
    if a.clock not in CLOCKS:
        raise TetherError(f"unknown clock '{a.clock}'; clocks: {', '.join(CLOCKS)}")
    return _on_clock(a.clock, [
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
    ])


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


@dataclass(frozen=True)
class CollectArgs:
    robot: str = "so101"
    task: str = "pick_place"
    device: str = "expert"
    episodes: int = 20
    seed: int = 0
    dataset: str = "runs/dataset"
    report: str = "runs/collect"
    camera_width: int = 0  # 0: the profile's size
    camera_height: int = 0
    episode_timeout: float = 20.0
    gate_rate_hz: float = 200.0
    takeover_after: float = 2.0  # replay device: seconds into each episode
    device_path: str = ""  # keyboard: its tty; gamepad/spacemouse: the device node ("": the first found)
    stop_on_success: bool = True  # False: every episode runs its full timeout (recording soak)
    linger_s: float = 0.0  # keep recording this long after success (the release and retreat)
    # Raw camera images in the MCAP log too: ~3.3 GB/min at 2x640x480x30 fps, and on 2 cores the
    # control loop then slows (13/20 expert successes measured); the dataset's videos hold them anyway.
    mcap_images: bool = False
    # Who drives until the device takes over: "expert", or "policy" (HG-DAgger-style corrections:
    # the policy's own commands are recorded with control_source "policy" and are not trained on).
    autonomous: str = "expert"
    policy: str = ""  # autonomous "policy": its model folder ("": the model shipped with the repo)
    # A session that fails (a node dies, the graph is stopped) mid-episode: the recorder commits that
    # episode as truncated (outcome unknown), or discards it.
    on_abort: str = "truncate"
    clock: str = "wall"  # see CLOCKS


# What the recorder does with the episode it is recording when the session fails (see CollectArgs).
ON_ABORT = ("truncate", "discard")

# expert: no device; the autonomous source (the expert, or a policy) drives alone. replay: the
# autonomous source drives, then the scripted expert, standing in for a human, takes over
# ``takeover_after`` seconds into each episode (labelled interventions, end to end).
# keyboard, gamepad, spacemouse, leader: the autonomous source drives until a person takes over.
DEVICES = ("expert", "replay", "keyboard", "gamepad", "spacemouse", "leader")


def collect_graph(a: CollectArgs) -> list[NodeSpec]:
    """Rehearsal's loop plus the recorder: every episode lands in a LeRobotDataset v3."""
    if a.device not in DEVICES:
        raise TetherError(f"unknown device '{a.device}'; devices: {', '.join(DEVICES)}")
    if a.on_abort not in ON_ABORT:
        raise TetherError(f"unknown on_abort '{a.on_abort}'; choices: {', '.join(ON_ABORT)}")
    base = rehearsal_graph(
        RehearsalArgs(
            robot=a.robot, task=a.task, source=a.autonomous, episodes=a.episodes, seed=a.seed, report=a.report,
            camera_width=a.camera_width, camera_height=a.camera_height, episode_timeout=a.episode_timeout,
            gate_rate_hz=a.gate_rate_hz, video_episodes=0, policy=a.policy, clock=a.clock,
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
    return [twin, *base[1:-1], *_on_clock(a.clock, [*human, recorder]),
            NodeSpec(session.executable, session.name, params, terminal=True)]


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
