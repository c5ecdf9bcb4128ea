"""`tether rehearse` and `tether collect` refuse bad arguments before any node starts.

A refusal is one line on stderr that names the command, the flag, the value and what would be
valid; the exit code is 2; nothing is created (no dataset, no report folder, no logs). No test here
starts a graph: the `tether` fixture stands in for the graph runner, so a missing check shows up as
the stand-in's exit code instead of a graph start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tether import cli
from tether.robot_profile import RobotProfile
from tether.dataset import DatasetSpec, DatasetWriter

GRAPH_STARTED = 99  # the stand-in runner's exit code: the arguments got past every check

Tether = Callable[..., tuple[int, str]]


@pytest.fixture
def tether(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Tether:
    """``tether(*argv)`` -> (exit code, stderr), run in ``tmp_path`` with the graph runner stood in for."""
    monkeypatch.setattr(cli, "_run", lambda command, nodes, report, budget: GRAPH_STARTED)
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        return code, capsys.readouterr().err
    return run


def assert_refused(tether: Tether, tmp_path: Path, argv: list[str], line: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    code, err = tether(*argv)
    assert (code, err.splitlines()) == (2, [line])
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, not even a probe left behind


@pytest.mark.parametrize("argv, line", [
    (["rehearse", "--episodes", "0"], "tether rehearse: --episodes must be at least 1, got 0"),
    (["rehearse", "--episodes", "-1"], "tether rehearse: --episodes must be at least 1, got -1"),
    (["collect", "--episodes", "0"], "tether collect: --episodes must be at least 1, got 0"),
    (["rehearse", "--episode-timeout", "0"], "tether rehearse: --episode-timeout must be more than 0 seconds, got 0.0"),
    (["collect", "--episode-timeout", "-2.5"],
     "tether collect: --episode-timeout must be more than 0 seconds, got -2.5"),
    (["rehearse", "--camera-size", "0", "96"],
     "tether rehearse: --camera-size must be two sizes of at least 1 pixel (W H), got 0 96"),
    (["collect", "--camera-size", "96", "-1"],
     "tether collect: --camera-size must be two sizes of at least 1 pixel (W H), got 96 -1"),
    (["collect", "--takeover-after", "-1"], "tether collect: --takeover-after must be 0 or more seconds, got -1.0"),
    (["collect", "--linger", "nan"], "tether collect: --linger must be 0 or more seconds, got nan"),
    (["rehearse", "--source", "human"], "tether rehearse: --source human is not a source; sources: expert, policy"),
    (["rehearse", "--robot", "ur9"], "tether rehearse: --robot: unknown robot profile 'ur9'; available: panda, so101"),
    (["collect", "--task", "juggle"], "tether collect: --task: unknown task 'juggle'; tasks: pick_place"),
    (["collect", "--device", "wand"],
     "tether collect: --device: unknown device 'wand'; devices: expert, replay, keyboard, gamepad, spacemouse, leader"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_value_is_refused_in_one_line_naming_the_command_and_flag(tether: Tether, tmp_path: Path,
                                                                        argv: list[str], line: str) -> None:
    assert_refused(tether, tmp_path, [*argv, *(["--out", "ds"] if argv[0] == "collect" else ["--report", "r"])], line)


def test_an_output_under_proc_is_refused(tether: Tether, tmp_path: Path) -> None:
    assert_refused(tether, tmp_path, ["collect", "--out", "/proc/tether/ds"],
                   "tether collect: --out /proc/tether/ds: nothing can be created in /proc (No such file or "
                   "directory); give a folder you can write to")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs sysfs, which takes no new folders from anyone")
def test_an_output_in_a_read_only_location_is_refused(tether: Tether, tmp_path: Path) -> None:
    code, err = tether("collect", "--out", "/sys/tether-dataset")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("tether collect: --out /sys/tether-dataset: nothing can be created in /sys (")
    assert not Path("/sys/tether-dataset").exists() and list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_file_is_refused(tether: Tether, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    assert_refused(tether, tmp_path, ["collect", "--out", "notes.txt"],
                   "tether collect: --out notes.txt is a file; give a folder")
    assert_refused(tether, tmp_path, ["collect", "--out", "notes.txt/ds"],
                   f"tether collect: --out notes.txt/ds lies under {tmp_path / 'notes.txt'}, which is a file; "
                   "give a folder")


def test_an_output_folder_that_is_not_a_dataset_is_refused_with_what_it_holds(tether: Tether, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        (photos / name).write_bytes(b"")
    assert_refused(tether, tmp_path, ["collect", "--out", "photos"],
                   "tether collect: --out photos is not a LeRobot dataset (no meta/info.json) and not empty: it "
                   "holds 2024/, a.jpg, b.jpg, c.jpg and 1 more; collect appends only to a dataset: give a new or "
                   "empty folder, or an existing dataset")


def test_an_output_dataset_whose_info_is_not_json_is_refused(tether: Tether, tmp_path: Path) -> None:
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text("{half a file")
    code, err = tether("collect", "--out", "ds")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("tether collect: --out: ") and "meta/info.json: not valid JSON" in err


def test_a_report_folder_that_cannot_be_written_is_refused(tether: Tether, tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("a file")
    assert_refused(tether, tmp_path, ["rehearse", "--report", "report.md"],
                   "tether rehearse: --report report.md is a file; give a folder")
    assert_refused(tether, tmp_path, ["collect", "--out", "ds", "--report", "/proc/tether/report"],
                   "tether collect: --report /proc/tether/report: nothing can be created in /proc (No such file or "
                   "directory); give a folder you can write to")


def test_a_report_inside_the_dataset_is_refused(tether: Tether, tmp_path: Path) -> None:
    assert_refused(tether, tmp_path, ["collect", "--out", "ds", "--report", "ds/report"],
                   "tether collect: --report ds/report is inside --out ds; give a folder outside it")


def test_good_outputs_reach_the_graph_and_the_checks_leave_nothing(tether: Tether, tmp_path: Path,
                                                                  so101: RobotProfile) -> None:
    """A new folder, an empty one and an existing dataset all pass; the write probes leave no trace."""
    (tmp_path / "empty").mkdir()
    DatasetWriter.create(tmp_path / "dataset", DatasetSpec.from_profile(so101, fps=30)).close()
    before = sorted(tmp_path.rglob("*"))
    for out in ("new", "empty", "dataset"):
        assert tether("collect", "--out", out) == (GRAPH_STARTED, "")
    assert tether("rehearse", "--report", "r") == (GRAPH_STARTED, "")
    assert sorted(tmp_path.rglob("*")) == before
    assert json.loads((tmp_path / "dataset" / "meta" / "info.json").read_text())["total_episodes"] == 0
