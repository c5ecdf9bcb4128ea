"""The ROS 2 launch file and the ament_python package, checked without a ROS install.

``launch``/``launch_ros`` are not on PyPI, so the launch file is executed against
recorder stand-ins of the few names it uses; the assertions are on what the file
builds: one launch argument per ``RehearsalArgs`` field and one Node per NodeSpec
of ``tether.graph``, with the graph's package, executable, name and parameters.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import types
import typing
import xml.etree.ElementTree as ET
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import pytest

from tether import graph as graph_module
from tether.graph import GRAPHS, SOURCES, NodeSpec, RehearsalArgs, rehearsal_graph

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "sim_rehearsal.launch.py"
PKG = ROOT / "ros2_ws" / "src" / "tether_ros"
PKG_NAME = "tether_ros"


# --- recorder stand-ins for launch / launch_ros -----------------------------------------------
class _Recorded:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


class _LaunchDescription(_Recorded):
    pass


class _DeclareLaunchArgument(_Recorded):
    pass


class _OpaqueFunction(_Recorded):
    pass


class _Shutdown(_Recorded):
    pass


class _RegisterEventHandler(_Recorded):
    pass


class _OnProcessExit(_Recorded):
    pass


class _Node(_Recorded):
    pass


class _LaunchConfiguration(_Recorded):
    def perform(self, context: _Context) -> str:
        return context.launch_configurations[self.args[0]]


class _Context:
    """The part of launch.LaunchContext that LaunchConfiguration.perform reads: strings only."""

    def __init__(self, configurations: dict[str, str]) -> None:
        self.launch_configurations = configurations


def _stub_modules() -> dict[str, types.ModuleType]:
    names: dict[str, dict[str, Any]] = {
        "launch": {"LaunchDescription": _LaunchDescription},
        "launch.actions": {
            "DeclareLaunchArgument": _DeclareLaunchArgument,
            "OpaqueFunction": _OpaqueFunction,
            "Shutdown": _Shutdown,
            "RegisterEventHandler": _RegisterEventHandler,
        },
        "launch.event_handlers": {"OnProcessExit": _OnProcessExit},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": _Node},
    }
    modules = {}
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        modules[name] = module
    modules["launch"].actions = modules["launch.actions"]  # type: ignore[attr-defined]
    modules["launch"].substitutions = modules["launch.substitutions"]  # type: ignore[attr-defined]
    modules["launch"].event_handlers = modules["launch.event_handlers"]  # type: ignore[attr-defined]
    modules["launch_ros"].actions = modules["launch_ros.actions"]  # type: ignore[attr-defined]
    return modules


@pytest.fixture
def launch_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("_sim_rehearsal_launch", LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(launch_module: types.ModuleType, overrides: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """Run the file as `ros2 launch ... k:=v`: declared defaults, then the command line, then the OpaqueFunction."""
    description = launch_module.generate_launch_description()
    assert isinstance(description, _LaunchDescription)
    entities = list(description.args[0])
    declared = [e for e in entities if isinstance(e, _DeclareLaunchArgument)]
    opaque = [e for e in entities if isinstance(e, _OpaqueFunction)]
    assert len(opaque) == 1, "the nodes are built in exactly one OpaqueFunction"
    configurations = {d.args[0]: d.kwargs["default_value"] for d in declared}
    assert set(overrides) <= set(configurations), "overriding an undeclared launch argument"
    configurations.update(overrides)
    nodes = opaque[0].kwargs["function"](_Context(configurations))
    return declared, list(nodes)


def _typed(params: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    # 1 == 1.0 == True in Python; a ROS parameter's type is part of its value.
    return {k: (type(v), v) for k, v in params.items()}


# --- the launch file ------------------------------------------------------------------------
def test_launch_file_structure() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    imported = {
        alias.name
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and n.module == "tether.graph"
        for alias in n.names
    }
    assert "rehearsal_graph" in imported, "the launch file must build its nodes from tether.graph"


def test_every_rehearsal_arg_is_a_launch_argument(launch_module: types.ModuleType) -> None:
    declared, _ = _build(launch_module, {})
    defaults = RehearsalArgs()
    fields = dataclasses.fields(RehearsalArgs)
    assert [d.args[0] for d in declared] == [f.name for f in fields]
    for d in declared:
        assert d.kwargs["default_value"] == str(getattr(defaults, d.args[0]))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"episodes": "1", "camera_width": "64", "camera_height": "48", "report": "/tmp/r", "episode_timeout": "5"},
        {"seed": "7", "gate_rate_hz": "100", "video_episodes": "0", "robot": "panda"},
        {"source": "policy", "policy": "models/m", "replan_hz": "30"},
    ],
)
def test_one_node_per_graph_node(launch_module: types.ModuleType, overrides: dict[str, str]) -> None:
    _, nodes = _build(launch_module, overrides)
    defaults = RehearsalArgs()
    values = {k: type(getattr(defaults, k))(v) for k, v in overrides.items()}
    expected = rehearsal_graph(dataclasses.replace(defaults, **values))
    assert len(nodes) == len(expected)
    for node, spec in zip(nodes, expected, strict=True):
        assert isinstance(node, _Node)
        kw = node.kwargs
        assert (kw["package"], kw["executable"], kw["name"]) == (spec.package, spec.executable, spec.name)
        params = kw["parameters"]
        assert len(params) == 1
        assert _typed(params[0]) == _typed(spec.parameters)
        # As in the embedded runner: the session ending, or any node dying, ends the launch.
        on_exit = kw.get("on_exit")
        assert on_exit and all(isinstance(a, _Shutdown) for a in on_exit)


def test_graph_parameters_are_launchable() -> None:
    # launch_ros rejects empty lists (no element type) and mixed-type lists in parameter dicts.
    for spec in _all_graph_nodes():
        for key, value in spec.parameters.items():
            if isinstance(value, list):
                assert value and all(isinstance(v, str) for v in value), f"{spec.name}.{key}={value!r}"


# --- the ament_python package ---------------------------------------------------------------
def _all_graph_nodes() -> list[NodeSpec]:
    nodes: list[NodeSpec] = []
    for build in GRAPHS.values():
        hints = typing.get_type_hints(build, vars(graph_module))
        args_type = next(t for name, t in hints.items() if name != "return")
        variants = [args_type()]
        if "source" in {f.name for f in dataclasses.fields(args_type)}:
            variants = [args_type(source=s) for s in SOURCES]
        for args in variants:
            nodes += build(args)
    return nodes


def _setup_kwargs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import setuptools

    recorded: dict[str, Any] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: recorded.update(kw))
    code = compile((PKG / "setup.py").read_text(), str(PKG / "setup.py"), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(PKG / "setup.py")})
    assert recorded, "setup.py did not call setuptools.setup"
    return recorded


def test_console_scripts_cover_every_graph_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = _setup_kwargs(monkeypatch)
    assert kw["name"] == PKG_NAME
    scripts = {}
    for line in kw["entry_points"]["console_scripts"]:
        name, target = (s.strip() for s in line.split("="))
        scripts[name] = target
    needed = {s.executable for s in _all_graph_nodes() if s.package == PKG_NAME}
    assert needed <= set(scripts), f"missing console_scripts: {sorted(needed - set(scripts))}"
    for name, target in scripts.items():
        module, func = target.split(":")
        path = PKG / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{name} -> {target}: no {path.relative_to(ROOT)}"
        tree = ast.parse(path.read_text())
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{name} -> {target}"


def test_ament_index_and_script_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = _setup_kwargs(monkeypatch)
    data_files = {dest: list(srcs) for dest, srcs in kw["data_files"]}
    assert f"resource/{PKG_NAME}" in data_files["share/ament_index/resource_index/packages"]
    assert "package.xml" in data_files[f"share/{PKG_NAME}"]
    assert (PKG / "resource" / PKG_NAME).is_file()
    # ros2 run / launch_ros look for executables in <prefix>/lib/<package>, not <prefix>/bin.
    cfg = ConfigParser()
    cfg.read(PKG / "setup.cfg")
    assert cfg.get("develop", "script_dir") == f"$base/lib/{PKG_NAME}"
    assert cfg.get("install", "install_scripts") == f"$base/lib/{PKG_NAME}"


def test_package_xml_is_format_3_ament_python(monkeypatch: pytest.MonkeyPatch) -> None:
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PKG_NAME
    assert root.findtext("export/build_type") == "ament_python"
    assert root.findtext("version") == _setup_kwargs(monkeypatch)["version"]
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "launch", "launch_ros"} <= exec_depends


def test_launch_files_are_data_files_of_the_share_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    # `ros2 launch tether_ros <file>` looks in <prefix>/share/tether_ros/launch.
    kw = _setup_kwargs(monkeypatch)
    data_files = {dest: list(srcs) for dest, srcs in kw["data_files"]}
    installed = data_files[f"share/{PKG_NAME}/launch"]
    assert sorted(Path(s).name for s in installed) == sorted(p.name for p in (ROOT / "launch").glob("*.launch.py"))
    assert all((PKG / s).resolve().parent == ROOT / "launch" for s in installed)


def test_a_built_package_installs_its_launch_files(tmp_path: Path) -> None:
    """Build a wheel of a copy of the package (a build leaves build/ and egg-info beside setup.py) and
    look for the launch files where an install puts them."""
    import shutil
    import subprocess
    import zipfile

    copy = tmp_path / "ros2_ws" / "src" / PKG_NAME
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "launch", tmp_path / "launch")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(copy)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    share = f"{PKG_NAME}-0.1.0.data/data/share/{PKG_NAME}/launch/"
    names = {n.removeprefix(share) for n in zipfile.ZipFile(wheel).namelist() if n.startswith(share)}
    assert names == {"sim_rehearsal.launch.py", "teleop_collect.launch.py"}


# --- one declaration for the CLI and the launch files ---------------------------------------------
COLLECT_FILE = ROOT / "launch" / "teleop_collect.launch.py"


def _load(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_launch_{path.stem.replace('.', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command, file", [("rehearse", LAUNCH_FILE), ("collect", COLLECT_FILE)])
def test_launch_arguments_and_cli_flags_have_the_same_names_defaults_help_and_choices(
        monkeypatch: pytest.MonkeyPatch, command: str, file: Path) -> None:
    import argparse

    from tether.cli import build_parser

    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    declared, _ = _build(_load(file), {})
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {opt: action for action in sub.choices[command]._actions for opt in action.option_strings}
    for d in declared:
        name = d.args[0]
        action = flags[f"--{name.replace('_', '-')}"]
        assert action.dest == name
        assert str(action.default) == d.kwargs["default_value"], name
        assert d.kwargs["description"] and d.kwargs["description"] in action.help, name
        assert list(action.choices or d.kwargs.get("choices", [])) == d.kwargs.get("choices", []), name
    assert {"namespace", "use_sim_time", "params_file"} <= {d.args[0] for d in declared}


def test_arguments_with_a_fixed_set_of_values_declare_their_choices(launch_module: types.ModuleType) -> None:
    declared, _ = _build(launch_module, {})
    choices = {d.args[0]: d.kwargs.get("choices") for d in declared}
    assert choices["source"] == list(SOURCES)
    assert choices["clock"] == ["wall", "sim"]
    assert choices["scheduler"] == ["", "ensemble", "switch"]


@pytest.mark.parametrize("name, raw, expected", [
    ("episodes", "abc", "episodes takes an integer"),
    ("episode_timeout", "soon", "episode_timeout takes a number"),
    ("use_sim_time", "maybe", "use_sim_time takes true or false"),
    ("source", "human", "source takes one of 'expert', 'policy'"),
])
def test_a_bad_launch_argument_names_itself_and_the_type(launch_module: types.ModuleType, name: str, raw: str,
                                                          expected: str) -> None:
    from tether.graph_args import GraphArgumentError

    with pytest.raises(GraphArgumentError, match=f"launch argument {name}:='{raw}' is not valid: {expected}"):
        _build(launch_module, {name: raw})


def test_namespace_sim_time_and_params_file_reach_every_node(launch_module: types.ModuleType, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    rate_hz: 100.0\n")
    _, nodes = _build(launch_module, {"namespace": "arm1", "use_sim_time": "true", "params_file": str(params)})
    for node in nodes:
        assert node.kwargs["namespace"] == "/arm1"
        # The graph's own parameters last: they win over the file's.
        assert node.kwargs["parameters"][0] == str(params)
        assert node.kwargs["parameters"][1]["use_sim_time"] is True
    twin = next(n for n in nodes if n.kwargs["executable"] == "twin_node")
    assert twin.kwargs["parameters"][1]["publish_clock"] is True  # the twin's /clock, for use_sim_time


def test_a_missing_params_file_is_refused(launch_module: types.ModuleType, tmp_path: Path) -> None:
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="params_file:=.*no such file"):
        _build(launch_module, {"params_file": str(tmp_path / "none.yaml")})


class _Exited:
    def __init__(self, action: object, returncode: int) -> None:
        self.action, self.returncode = action, returncode


class _LaunchState:
    def __init__(self, is_shutdown: bool) -> None:
        self.is_shutdown = is_shutdown


def test_a_failing_node_fails_the_launch() -> None:
    """``launch`` makes LaunchService.run() return 1 when an event handler raises; ExitWatch raises for
    exactly the cases the embedded runner calls a failed graph."""
    from tether.graph import ProcessSpec
    from tether.launch_description import ExitWatch, GraphExitError

    watch = ExitWatch()
    session, gate, stranger = object(), object(), object()
    watch.watch(session, ProcessSpec("session", "session", [], {}, terminal=True))
    watch.watch(gate, ProcessSpec("gate", "gate", [], {}))
    assert watch(_Exited(session, 0), _LaunchState(False)) is None
    assert watch(_Exited(gate, 0), _LaunchState(True)) is None  # stopped by the launch's shutdown
    assert watch(_Exited(stranger, 1), _LaunchState(False)) is None  # not this graph's
    with pytest.raises(GraphExitError, match="node 'session' exited with 2"):
        watch(_Exited(session, 2), _LaunchState(False))
    with pytest.raises(GraphExitError, match="node 'gate' exited with -15"):
        watch(_Exited(gate, -15), _LaunchState(True))
    with pytest.raises(GraphExitError, match="node 'gate' exited before the session ended"):
        watch(_Exited(gate, 0), _LaunchState(False))


def test_the_launch_registers_the_exit_watch(launch_module: types.ModuleType) -> None:
    from tether.launch_description import ExitWatch

    entities = list(launch_module.generate_launch_description().args[0])
    (register,) = [e for e in entities if isinstance(e, _RegisterEventHandler)]
    (handler,) = register.args
    assert isinstance(handler, _OnProcessExit) and isinstance(handler.kwargs["on_exit"], ExitWatch)
