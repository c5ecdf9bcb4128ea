"""One thread count per process: `tether` fixes it at start-up, and nothing in tether changes it afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tether.cli import main
from tether.errors import TetherError
from tether.policy_runtime.runtime import threads


@pytest.mark.parametrize("run", ["act"], indirect=True)  # one policy: the code paths are the same
def test_nothing_changes_the_thread_count_after_start_up(run: Path, tmp_path: Path, python_with, demo_data) -> None:
    """Train (backward passes), export, bench, then train again, in one process fixed at 2 threads at start-up.

    Every torch.set_num_threads / set_num_interop_threads call after start-up is recorded: changing the count
    after a backward pass is what aborted torch on an AVX2 machine. The count must also still be the one fixed.
    """
    train = ["train", "--policy", "act", "--dataset", json.loads((run / "run.json").read_text())["dataset"],
             "--steps", "2", "--batch-size", "4", "--image-size", "32", "--val-every", "2",
             *(x for k, v in demo_data.TINY["act"].items() for x in ("--set", f"{k}={json.dumps(v)}"))]
    result, _ = python_with(f"""
        import json
        from tether.cli import main
        assert main({[*train, "--out", str(tmp_path / "first")]!r}) == 0  # start-up fixes the count, then backward

        import torch
        calls = []
        for name in ("set_num_threads", "set_num_interop_threads"):
            def spy(n, real=getattr(torch, name), name=name):
                calls.append([name, n])
                return real(n)
            setattr(torch, name, spy)
        after_start_up = [torch.get_num_threads(), torch.get_num_interop_threads()]
        assert main(["export", "{run}", "--out", "{tmp_path / 'int8'}", "--quantize", "int8", "--tolerance", "10"]) == 0
        assert main(["bench", "policy", "--act", "{run}", "--policies", "act", "--runs", "2",
                     "--json", "{tmp_path / 'bench.json'}"]) == 0
        assert main({[*train, "--out", str(tmp_path / "second")]!r}) == 0  # a backward after all that
        print(json.dumps({{"calls": calls, "after_start_up": after_start_up,
                          "at_end": [torch.get_num_threads(), torch.get_num_interop_threads()]}}))
    """, threads=2)
    assert result["calls"] == []
    assert result["after_start_up"] == result["at_end"] == [2, 2]
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["act"]["threads"] == bench["shipped_runtime"]["threads"] == 2  # onnxruntime took the same count
    assert json.loads((tmp_path / "int8" / "parity.json").read_text())["threads"] == 2


def test_the_suite_runs_at_the_count_its_conftest_fixed() -> None:
    assert threads.count() == torch.get_num_threads() == (threads.requested() or 1)


def test_a_running_process_refuses_another_count(capsys: pytest.CaptureFixture[str]) -> None:
    other = torch.get_num_threads() + 1
    assert main(["--threads", str(other), "export", "no_such_run", "--out", "unused"]) == 2
    assert f"already fixed at {torch.get_num_threads()}; --threads {other}" in capsys.readouterr().err
    assert torch.get_num_threads() == other - 1


def test_threads_given_twice_must_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--threads", "1", "export", "no_such_run", "--out", "unused", "--threads", "2"]) == 2
    assert "--threads is given twice, as 1 and 2; give one count" in capsys.readouterr().err


def test_bad_counts_are_errors_that_name_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(TetherError, match="TETHER_THREADS='two' is not a thread count; give a positive integer"):
        threads.requested()
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.requested() == 3 and threads.requested(1) == 1  # the flag wins over the environment
    with pytest.raises(TetherError, match="--threads 0: the thread count must be a positive integer"):
        threads.requested(0)
