"""The one graph declaration: processes, shared processes and their parameters."""

import dataclasses

import pytest

from tether.errors import TetherError
from tether.graph import CollectArgs, NodeSpec, RehearsalArgs, collect_graph, processes, rehearsal_graph


def test_rehearsal_runs_one_process_per_node_with_the_session_last() -> None:
    procs = processes(rehearsal_graph(RehearsalArgs()))
    assert [p.executable for p in procs] == ["twin_node", "expert_node", "gate_node", "session_node"]
    assert [p.terminal for p in procs] == [False, False, False, True]


def test_collect_keeps_images_in_the_twins_process() -> None:
    procs = processes(collect_graph(CollectArgs(device="replay")))
    station = next(p for p in procs if p.executable == "container")
    assert station.arguments == ["twin_node", "recorder_node"] and not station.remap_name
    assert station.parameters["dataset"] == "runs/dataset" and station.parameters["task"] == "pick_place"
    assert "teleop_node" in [p.executable for p in procs]


def test_conflicting_parameters_in_one_process_are_refused() -> None:
    nodes = [NodeSpec("twin_node", "twin", {"robot": "so101"}, process="p"),
             NodeSpec("recorder_node", "recorder", {"robot": "panda"}, process="p")]
    with pytest.raises(TetherError, match="parameter 'robot' differs"):
        processes(nodes)


def test_unknown_sources_and_devices_list_the_valid_ones() -> None:
    with pytest.raises(TetherError, match="sources: expert"):
        rehearsal_graph(dataclasses.replace(RehearsalArgs(), source="ghost"))
    with pytest.raises(TetherError, match="devices: expert, replay"):
        collect_graph(dataclasses.replace(CollectArgs(), device="ghost"))
    with pytest.raises(TetherError, match="sources: expert, policy"):
        collect_graph(dataclasses.replace(CollectArgs(), autonomous="ghost"))


def test_collect_can_let_a_policy_drive_until_the_human_takes_over() -> None:
    nodes = {n.name: n for n in collect_graph(CollectArgs(device="replay", autonomous="policy", policy="models/m"))}
    assert nodes["policy"].executable == "policy_node" and nodes["policy"].parameters["model_dir"] == "models/m"
    assert "expert" not in nodes and nodes["teleop"].parameters["device"] == "replay"
    assert nodes["gate"].parameters["active_source"] == "policy"
    assert nodes["session"].parameters["source"] == "policy"  # the session resets the policy each episode
    assert nodes["recorder"].parameters["autonomous_source"] == "policy"  # its frames are labelled as rollouts


def test_policy_source_takes_the_model_replan_rate_and_scheduler() -> None:
    args = RehearsalArgs(source="policy", policy="models/m", replan_hz=30.0, scheduler="switch")
    source = rehearsal_graph(args)[1]
    assert source.executable == "policy_node"
    assert source.parameters == {"robot": "so101", "model_dir": "models/m", "replan_hz": 30.0, "mode": "switch"}
    # 0 and "" leave the node's own defaults, and the expert never gets policy parameters.
    assert rehearsal_graph(dataclasses.replace(args, replan_hz=0.0, scheduler=""))[1].parameters == {
        "robot": "so101", "model_dir": "models/m"}
    assert rehearsal_graph(dataclasses.replace(args, source="expert"))[1].parameters == {"robot": "so101"}


def test_the_sim_clock_puts_every_node_on_the_twins_clock() -> None:
    from tether.graph import CollectArgs, RehearsalArgs, collect_graph, processes, rehearsal_graph

    for graph in (rehearsal_graph(RehearsalArgs(clock="sim")), collect_graph(CollectArgs(clock="sim", device="replay"))):
        params = {p.name: p.parameters for p in processes(graph)}
        assert all(p["use_sim_time"] is True for p in params.values())
        twin = params.get("twin") or params["sim_station"]
        assert twin["publish_clock"] is True and "publish_clock" not in params["gate"]
    wall = {n.name: n.parameters for n in rehearsal_graph(RehearsalArgs())}
    assert not any("use_sim_time" in p or "publish_clock" in p for p in wall.values())


def test_an_unknown_clock_lists_the_valid_ones() -> None:
    from tether.graph import RehearsalArgs, rehearsal_graph

    with pytest.raises(TetherError, match="unknown clock 'gps'; clocks: wall, sim"):
        rehearsal_graph(RehearsalArgs(clock="gps"))


def test_the_declared_schedulers_are_the_policy_nodes() -> None:
    from tether.graph import SCHEDULERS
    from tether.policy_runtime.runtime.scheduler import MODES

    assert set(SCHEDULERS) == set(MODES)


def test_namespace_and_params_file_reach_every_process() -> None:
    from tether.graph import CollectArgs, collect_graph, processes
    from tether.runner import ros_args

    for p in processes(collect_graph(CollectArgs(device="replay", namespace="lab/arm1", params_file="p.yaml"))):
        args = ros_args(p)
        assert args[args.index("__ns:=/lab/arm1") - 1] == "-r"
        # -p overrides after the file: rcl gives them precedence anyway, as the launch files order them.
        assert args.index("--params-file") < args.index("-p") and args[args.index("--params-file") + 1] == "p.yaml"


@pytest.mark.parametrize("namespace", ["1arm", "arm-1", "arm//1", "arm/"])
def test_a_bad_namespace_names_the_rules(namespace: str) -> None:
    from tether.graph import RehearsalArgs, rehearsal_graph

    with pytest.raises(TetherError, match=f"namespace '{namespace}' is not a ROS namespace"):
        rehearsal_graph(RehearsalArgs(namespace=namespace))


def test_use_sim_time_is_the_sim_clock() -> None:
    from tether.graph import CollectArgs, RehearsalArgs, collect_clock, rehearsal_graph

    assert rehearsal_graph(RehearsalArgs(use_sim_time=True)) == rehearsal_graph(RehearsalArgs(clock="sim"))
    assert collect_clock(CollectArgs(device="keyboard", use_sim_time=True)) == "sim"
    assert collect_clock(CollectArgs(device="keyboard")) == "wall"
    assert collect_clock(CollectArgs(device="replay")) == "sim"
