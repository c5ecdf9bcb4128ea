"""``tether bench policy``: batch-1 latency of PyTorch eager vs ONNX fp32 vs ONNX INT8, same weights.

The baseline is PyTorch eager measured in the same run on the same held-out frames; every
speed-up is a ratio against it. INT8 action error is against fp32, in radians. When the
end-to-end evaluation has run (``scripts/policy_e2e.sh``), its rehearsal figures are
added: success with its Wilson interval and the obs->command latency through the gate.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tether.errors import TetherError
from tether.policy_runtime import export as ex
from tether.policy_runtime import manifest as mf
from tether.policy_runtime.models import PolicyModel
from tether.policy_runtime.train import load_run, load_weights

POLICIES = ("act", "diffusion")


def eager_latency(model: PolicyModel, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    obs = {k: torch.from_numpy(v) for k, v in feed.items() if k != mf.NOISE}
    noise = torch.from_numpy(feed[mf.NOISE]) if mf.NOISE in feed else None
    p50, p99 = ex.latency_ms(lambda: model.predict_chunk(obs, noise=noise), runs, warmup=5)
    return {"p50": p50, "p99": p99, "runs": runs}


def bench_policy(run: Path, runs: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    spec, model = load_run(run), load_weights(run)
    with tempfile.TemporaryDirectory() as tmp:
        # No tolerance here: the benchmark reports the fastest INT8 variant and its error, whatever it is.
        parity = json.loads((ex.export(run, Path(tmp), quantize="int8", threads=threads, timing_runs=runs,
                                       parity_frames=32, calib_frames=32,
                                       tolerance_rad=float("inf")) / "parity.json").read_text())
    eager = eager_latency(model, ex.held_out_inputs(ex.held_out_source(spec, model), model, 1)[0], runs)
    variants = {v["quantization"]: v for v in parity["variants"]}
    fp32, int8 = variants["none"], parity["chosen"]
    return {
        "run": str(run),
        "threads": threads,
        "eager_ms": eager,
        "onnx_fp32_ms": {"p50": fp32["p50_ms"], "p99": fp32["p99_ms"]},
        "onnx_int8_ms": {"p50": int8["p50_ms"], "p99": int8["p99_ms"], "mode": int8["quantization"]},
        "int8_variants": {q: {"p50": v["p50_ms"], "p99": v["p99_ms"], "action_err": v["action_err_max"]}
                          for q, v in variants.items() if q != "none"},
        "speedup_int8_vs_eager": eager["p50"] / int8["p50_ms"],
        "speedup_fp32_vs_eager": eager["p50"] / fp32["p50_ms"],
        "action_err_int8": int8["action_err_max"],
        "action_err_int8_mean": int8["action_err_mean"],
        "fp32_vs_torch_max_abs_err": parity["fp32_vs_torch_max_abs_err"],
    }


def rehearsal_figures(e2e: Path) -> dict[str, Any]:
    """Success and latency from ``scripts/policy_e2e.sh``'s evaluations, where they exist."""
    found = {}
    for report in sorted(e2e.glob("eval_*/report.json")):
        r = json.loads(report.read_text())
        found[report.parent.name[len("eval_"):]] = {
            "episodes": r["episodes"], "successes": r["successes"], "success_rate": r["success_rate"],
            "ci95": r["ci95"], "obs_to_command_ms": r["latency_ms"]["obs_to_command"],
            "failures": r.get("failures")}  # None: a report from before the failure breakdown
    return found


def run(runs_by_policy: dict[str, Path], e2e: Path, runs: int = 200, threads: int = 2) -> dict[str, Any]:
    missing = {p: str(r) for p, r in runs_by_policy.items() if not (r / "run.json").is_file()}
    if missing:
        raise TetherError(f"no training run for {missing}; train them first (`bash scripts/policy_e2e.sh`) or "
                          "pass --act RUN / --diffusion RUN")
    results: dict[str, Any] = {}
    for policy, folder in tqdm(runs_by_policy.items(), desc="bench policy", unit="policy"):
        results[policy] = bench_policy(folder, runs, threads)
    results["rehearsal"] = rehearsal_figures(e2e)
    return results


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Policy inference benchmark", "",
             "Batch 1, onnxruntime CPU EP vs PyTorch eager on the same weights and held-out frame; "
             "ratios against eager from the same run.", "",
             "| policy | eager p50 / p99 ms | ONNX fp32 p50 / p99 ms | ONNX INT8 p50 / p99 ms (mode) | "
             "INT8 speed-up vs eager | INT8 action err (rad, max) |", "|---|---|---|---|---|---|"]
    for p in POLICIES:
        if p not in r:
            continue
        x = r[p]
        lines.append(f"| {p} | {x['eager_ms']['p50']:.2f} / {x['eager_ms']['p99']:.2f} | "
                     f"{x['onnx_fp32_ms']['p50']:.2f} / {x['onnx_fp32_ms']['p99']:.2f} | "
                     f"{x['onnx_int8_ms']['p50']:.2f} / {x['onnx_int8_ms']['p99']:.2f} ({x['onnx_int8_ms']['mode']}) | "
                     f"{x['speedup_int8_vs_eager']:.1f}x | {x['action_err_int8']:.4f} |")
    if r.get("rehearsal"):
        lines += ["", "## In rehearsal (full ROS 2 graph, twin, gate)", "",
                  "| model | success | 95% CI | obs->command p50 / p99 ms | failed episodes missed |",
                  "|---|---|---|---|---|"]
        for name, x in r["rehearsal"].items():
            lat = x["obs_to_command_ms"]
            failures = x["failures"]
            missed = "n/a" if failures is None else ", ".join(f"{k} {n}" for k, n in failures.items()) or "-"
            lines.append(f"| {name} | {x['successes']}/{x['episodes']} = {x['success_rate']:.2f} | "
                         f"{x['ci95'][0]:.2f}-{x['ci95'][1]:.2f} | {lat.get('p50') or float('nan'):.1f} / "
                         f"{lat.get('p99') or float('nan'):.1f} | {missed} |")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], json_path: Path) -> Path:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md = json_path.with_suffix(".md")
    md.write_text(markdown(results))
    return md
