"""The launch files under the real ``launch``/``launch_ros`` (skipped where they are not installed).

``ros2 launch`` exits with what ``LaunchService.run()`` returns, so the files are run through a
LaunchService here, as ``ros2 launch`` would, with the nodes found in an ament prefix made for the
test (``<prefix>/lib/tether_ros/<executable>`` runs ``python -m tether_ros.<executable>`` of this venv).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
launch = pytest.importorskip("launch")
if not hasattr(launch, "LaunchService"):  # the repository's own launch/ folder, as a namespace package
    pytest.skip("launch (ROS 2) is not installed", allow_module_level=True)
pytest.importorskip("launch_ros")

from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from tether.graph import PACKAGE, GRAPHS, NodeSpec, processes  # noqa: E402


@pytest.fixture
def ament_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    prefix = tmp_path / "prefix"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / PACKAGE).touch()
    bin_dir = prefix / "lib" / PACKAGE
    bin_dir.mkdir(parents=True)
    executables = {p.executable for build in GRAPHS.values() for p in processes(_nodes(build))}
    for exe in executables:
        script = bin_dir / exe
        script.write_text(f"#!/bin/sh\nexec {sys.executable} -m {PACKAGE}.{exe} \"$@\"\n")
        script.chmod(0o755)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(201, 230)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    return prefix


def _nodes(build: Callable[[Any], list[NodeSpec]]) -> list[NodeSpec]:
    import dataclasses
    import typing

    from tether import graph

    hints = typing.get_type_hints(build, vars(graph))
    args_type = next(t for name, t in hints.items() if name != "return")
    variants = [args_type()]
    if "source" in {f.name for f in dataclasses.fields(args_type)}:
        variants.append(args_type(source="policy"))
    return [n for a in variants for n in build(a)]


def _launch(file: str, arguments: dict[str, str]) -> int:
    service = launch.LaunchService()
    source = PythonLaunchDescriptionSource(str(ROOT / "launch" / file))
    service.include_launch_description(IncludeLaunchDescription(source, launch_arguments=list(arguments.items())))
    return int(service.run())


def test_a_failing_session_fails_the_launch(ament_prefix: Path, tmp_path: Path) -> None:
    code = _launch("sim_rehearsal.launch.py", {"episodes": "1", "source": "policy",
                                               "policy": str(tmp_path / "no_such_model"),
                                               "report": str(tmp_path / "report")})
    assert code != 0


def test_a_bad_value_fails_the_launch(ament_prefix: Path, tmp_path: Path) -> None:
    assert _launch("sim_rehearsal.launch.py", {"episodes": "abc", "report": str(tmp_path / "report")}) != 0


def test_a_successful_session_ends_the_launch_with_0(ament_prefix: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    code = _launch("sim_rehearsal.launch.py", {"episodes": "1", "camera_width": "64", "camera_height": "48",
                                               "video_episodes": "0", "report": str(report),
                                               "namespace": "arm1", "use_sim_time": "true"})
    assert code == 0
    assert (report / "report.json").is_file()
