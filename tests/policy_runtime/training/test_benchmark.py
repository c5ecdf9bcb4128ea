"""`tether bench policy`: eager vs ONNX fp32 vs INT8 on the same weights (a training run's, or random ones from
a fresh clone), the shipped model through the runtime, and the rehearsal figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.cli import main
from tether.errors import TetherError
from tether.policy_runtime.training import benchmark as bench


def test_bench_policy_reports_every_figure_against_eager(run: Path) -> None:
    r = bench.bench_policy(run, runs=5)
    for key in ("eager_ms", "onnx_fp32_ms", "onnx_int8_ms"):
        assert 0 < r[key]["p50"] <= r[key]["p99"]
    assert r["speedup_int8_vs_eager"] == pytest.approx(r["eager_ms"]["p50"] / r["onnx_int8_ms"]["p50"])
    assert r["onnx_int8_ms"]["mode"] in r["int8_variants"]  # the variant shipped is one of those timed
    assert r["action_err_int8"] >= 0 and r["fp32_vs_torch_max_abs_err"] < 1e-3
    assert r["run"] == str(run) and r["weights"] == f"trained run {run}" and r["action_err_units"] == "rad"


def _bench_from_a_fresh_clone(folder: Path, policies: list[str], python_with) -> tuple[dict, str, str]:
    """`tether bench policy` in a folder without runs/e2e (nothing trained), in its own process: its terminal."""
    code, stderr = python_with(f"""
        import json, os
        os.chdir({str(folder)!r})
        from tether.cli import main
        print(json.dumps(main(["bench", "policy", "--policies", *{policies!r}, "--runs", "3",
                               "--json", "bench/policy.json"])))
    """, threads=1)
    assert code == 0, stderr
    return (json.loads((folder / "bench" / "policy.json").read_text()), (folder / "bench" / "policy.md").read_text(),
            stderr)


def test_without_training_runs_it_benches_random_weights_and_the_shipped_model(tmp_path: Path, python_with) -> None:
    r, md, err = _bench_from_a_fresh_clone(tmp_path, ["act"], python_with)
    act = r["act"]
    assert act["run"] is None and act["weights"].startswith("random initialisation")
    assert act["action_err_units"] == "normalized" and act["config"]["backbone_width"] == 16  # the CPU config
    assert 0 < act["onnx_int8_ms"]["p50"] <= act["onnx_int8_ms"]["p99"] and act["eager_ms"]["runs"] == 3
    shipped = r["shipped_runtime"]
    assert shipped["model"] == "so101_pick_place_act_int8" and 0 < shipped["infer_ms"]["p50"]
    assert "**Weights: random** for act" in md and "| act | random |" in md
    assert "The shipped model through the runtime" in md
    # The terminal shows the progress bar only: the quantizer's per-tensor notes go to the log beside the results.
    assert "bench policy: 100%" in err
    assert [line for line in err.splitlines() if "bench policy:" not in line and line.strip()] == []
    assert "Axis 1 is out-of-range" in (tmp_path / "bench" / "policy.log").read_text()


@pytest.mark.slow
def test_without_training_runs_both_cpu_configs_bench(tmp_path: Path, python_with) -> None:
    r, md, _ = _bench_from_a_fresh_clone(tmp_path, ["act", "diffusion"], python_with)
    assert r["diffusion"]["run"] is None and r["diffusion"]["config"]["unet_block"] == "batch_relu"
    assert "**Weights: random** for act, diffusion" in md


def test_a_run_that_is_named_must_exist(tmp_path: Path, run: Path) -> None:
    with pytest.raises(TetherError, match=f"--act {tmp_path}: not a training run"):
        bench.resolve_runs({"act": tmp_path}, {"act": run})
    defaults = {"act": run, "diffusion": tmp_path / "absent"}
    assert bench.resolve_runs({"act": None, "diffusion": None}, defaults) == {"act": run, "diffusion": None}


def _report(folder: Path, successes: int, failures: dict[str, int] | None) -> None:
    folder.mkdir(parents=True)
    report = {"episodes": 50, "successes": successes, "success_rate": successes / 50, "ci95": [0.1, 0.9],
              "latency_ms": {"obs_to_command": {"p50": 12.0, "p99": 24.0}}}
    if failures is not None:  # reports written before the failure breakdown have none
        report["failures"] = failures
    (folder / "report.json").write_text(json.dumps(report))


def test_rehearsal_figures_and_markdown(tmp_path: Path) -> None:
    _report(tmp_path / "eval_act_int8", 41, {"outside_target": 7, "held": 2})
    _report(tmp_path / "eval_act_fp32", 50, {})
    _report(tmp_path / "eval_diffusion_fp32", 0, None)
    (tmp_path / "act_int8").mkdir()  # a model folder, not an evaluation: ignored
    figures = bench.rehearsal_figures(tmp_path)
    assert list(figures) == ["act_fp32", "act_int8", "diffusion_fp32"]
    assert figures["act_int8"]["failures"] == {"outside_target": 7, "held": 2}
    md = bench.markdown({"rehearsal": figures})
    assert "| act_int8 | 41/50 = 0.82 | 0.10-0.90 | 12.0 / 24.0 | outside_target 7, held 2 |" in md
    assert "| act_fp32 | 50/50 = 1.00 | 0.10-0.90 | 12.0 / 24.0 | - |" in md
    assert "| diffusion_fp32 | 0/50 = 0.00 | 0.10-0.90 | 12.0 / 24.0 | n/a |" in md
