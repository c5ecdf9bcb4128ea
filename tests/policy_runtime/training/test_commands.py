"""`tether train` and `tether export` refuse bad arguments before torch loads a frame or a folder is made.

Each case gets everything else right (a real dataset, a real training run, tiny settings), so the one
bad value is what is refused: one line naming the command and the flag, exit code 2, nothing created.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    return demo_data.write_demos(tmp_path_factory.mktemp("commands") / "ds", so101, [10, 9, 8])


def refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]) -> str:
    """Run ``tether ARGV``; it must exit 2 with one line on stderr and leave ``tmp_path`` as it was."""
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before
    return err.strip()


@pytest.mark.parametrize("flag, line", [
    (["--steps", "0"], "tether train: --steps must be at least 1, got 0"),
    (["--batch-size", "0"], "tether train: --batch-size must be at least 1, got 0"),
    (["--image-size", "-32"], "tether train: --image-size must be at least 1, got -32"),
    (["--val-every", "0"], "tether train: --val-every must be at least 1, got 0"),
    (["--lr", "0"], "tether train: --lr must be more than 0, got 0.0"),
    (["--ema-decay", "1"], "tether train: --ema-decay must be in [0, 1) (0 turns the average off), got 1.0"),
    (["--set", "chunk_length"], "tether train: --set expects KEY=VALUE, got 'chunk_length'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_train_refuses_a_bad_setting_before_it_starts(dataset: Path, tmp_path: Path, capsys, demo_data,
                                                      flag: list[str], line: str) -> None:
    tiny = [x for k, v in demo_data.TINY["act"].items() for x in ("--set", f"{k}={json.dumps(v)}")]
    good = ["train", "--policy", "act", "--dataset", str(dataset), "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "4", "--image-size", "32", "--val-every", "2", "--checkpoint-every", "2", *tiny]
    assert refused(capsys, tmp_path, [*good, *flag]) == line  # the later flag wins


def test_train_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    line = refused(capsys, tmp_path, ["train", "--policy", "act", "--dataset", str(tmp_path / "photos"),
                                      "--out", str(tmp_path / "run")])
    assert line == (f"tether train: --dataset {tmp_path / 'photos'} is not a LeRobot dataset (no meta/info.json); "
                    "give a dataset folder made by `tether collect`")


def test_train_refuses_an_output_that_is_a_file(dataset: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "run").write_text("a file")
    line = refused(capsys, tmp_path, ["train", "--policy", "act", "--dataset", str(dataset), "--out",
                                      str(tmp_path / "run")])
    assert line == f"tether train: --out {tmp_path / 'run'} is a file; give a folder"


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    line = refused(capsys, tmp_path, ["export", str(tmp_path / "photos"), "--out", str(tmp_path / "model")])
    assert line == (f"tether export: RUN: {tmp_path / 'photos'}: no run.json; not a training run folder "
                    "(make one with `tether train`)")


def test_export_refuses_a_tolerance_of_zero_and_an_output_that_is_a_file(run: Path, tmp_path: Path, capsys) -> None:
    assert refused(capsys, tmp_path, ["export", str(run), "--out", str(tmp_path / "model"), "--tolerance", "0"]) \
        == "tether export: --tolerance must be more than 0 rad, got 0.0"
    (tmp_path / "model").write_text("a file")
    assert refused(capsys, tmp_path, ["export", str(run), "--out", str(tmp_path / "model")]) \
        == f"tether export: --out {tmp_path / 'model'} is a file; give a folder"
