"""`tether bench policy`: eager vs ONNX fp32 vs INT8 on the same weights, plus the rehearsal figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.policy_runtime import benchmark as bench


def test_bench_policy_reports_every_figure_against_eager(run: Path) -> None:
    r = bench.bench_policy(run, runs=5, threads=1)
    for key in ("eager_ms", "onnx_fp32_ms", "onnx_int8_ms"):
        assert 0 < r[key]["p50"] <= r[key]["p99"]
    assert r["speedup_int8_vs_eager"] == pytest.approx(r["eager_ms"]["p50"] / r["onnx_int8_ms"]["p50"])
    assert r["onnx_int8_ms"]["mode"] in r["int8_variants"]  # the variant shipped is one of those timed
    assert r["action_err_int8"] >= 0 and r["fp32_vs_torch_max_abs_err"] < 1e-3


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
