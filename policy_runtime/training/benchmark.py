"""``tether bench policy``: batch-1 latency of PyTorch eager vs ONNX fp32 vs ONNX INT8 on the same weights,
and the shipped model through the torch-free runtime.

Each policy is benched from its training run when there is one: held-out frames, INT8 action error
against fp32 in rad. Without a run it is benched at random initialisation in its CPU config: the
latency is the architecture's whatever the weights, but an action error between random networks says
nothing of a trained policy's, and the JSON and the markdown say so. The baseline is PyTorch eager
measured in the same run on the same frame; every speed-up is a ratio against it. Everything runs at
the process's thread count (``tether --threads N``). When the end-to-end evaluation has run
(``scripts/policy_e2e.sh``), its rehearsal figures are added: success with its Wilson interval and the
obs->command latency through the gate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from tether.errors import PolicyError, TetherError
from tether.policy_runtime.training import export as ex
from tether.policy_runtime.runtime import manifest as mf
from tether.policy_runtime.training import models
from tether.policy_runtime.training.models import PolicyModel
from tether.policy_runtime.runtime.inference import DEFAULT_MODEL_DIR, PolicyRuntime
from tether.policy_runtime.runtime.threads import count as thread_count
from tether.policy_runtime.training.train import TrainConfig, load_run, load_weights
from tether.report import write_benchmark

if TYPE_CHECKING:
    from tether.robot_profile import RobotProfile

POLICIES = ("act", "diffusion")
# What scripts/policy_e2e.sh trains (the README's table): the CPU presets, diffusion with the BatchNorm + ReLU
# UNet that export folds into its convolutions.
CPU_CONFIGS: dict[str, dict[str, Any]] = {"act": {}, "diffusion": {"unet_block": "batch_relu", "norm": "batch"}}
RANDOM_WEIGHTS = ("random initialisation (seed 0), no training run: latency is meaningful, "
                  "action error is not a trained policy's")
FRAMES = 32  # compared frames, and as many calibration frames for static INT8


@dataclass(frozen=True)
class Subject:
    """One network to time: the frames it is fed and what its numbers mean."""

    policy: str
    model: PolicyModel
    feeds: list[dict[str, np.ndarray]]  # compared on all, timed on the first
    calib: list[dict[str, np.ndarray]]  # static INT8 calibration
    action_std: np.ndarray  # normalized action -> reported units
    weights: str
    error_units: str
    run: str | None
    config: dict[str, Any]


def from_run(run: Path) -> Subject:
    """A trained run on its held-out frames; errors in rad."""
    spec, model = load_run(run), load_weights(run)
    src = ex.held_out_source(spec, model)
    return Subject(spec.policy, model, ex.held_out_inputs(src, model, FRAMES),
                   ex.held_out_inputs(src, model, FRAMES, seed=1),
                   np.asarray(spec.normalization[mf.ACTION].std, dtype=np.float32), f"trained run {run}", "rad",
                   str(run), spec.policy_config)


def at_random_init(policy: str, profile: RobotProfile) -> Subject:
    """The CPU config with random weights, for the profile's joints and cameras at the training image size."""
    config = dataclasses.replace(models.config_for(policy, "cpu"), **CPU_CONFIGS[policy])
    joints, size = len(profile.joint_names), TrainConfig().image_size
    torch.manual_seed(0)
    model = models.build_policy(policy, config, joints, joints, [c.name for c in profile.cameras], (size, size))
    return Subject(policy, model.eval(), random_inputs(model, FRAMES, 0), random_inputs(model, FRAMES, 1),
                   np.ones(joints, dtype=np.float32), RANDOM_WEIGHTS, "normalized", None, dataclasses.asdict(config))


def random_inputs(model: PolicyModel, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Standard-normal feeds: what normalized observations (and the sampler's noise) look like."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {n: t.shape for n, t in zip(model.export_input_names(), model.export_example_inputs(1), strict=True)}
    return [{n: torch.randn(s, generator=gen).numpy() for n, s in shapes.items()} for _ in range(count)]


def eager_latency(model: PolicyModel, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    obs = {k: torch.from_numpy(v) for k, v in feed.items() if k != mf.NOISE}
    noise = torch.from_numpy(feed[mf.NOISE]) if mf.NOISE in feed else None
    p50, p99 = ex.latency_ms(lambda: model.predict_chunk(obs, noise=noise), runs, warmup=5)
    return {"p50": p50, "p99": p99, "runs": runs}


Phase = Callable[[str], AbstractContextManager[None]]  # one step of the progress bar, named


def bench_subject(s: Subject, runs: int, phase: Phase = lambda _: nullcontext()) -> dict[str, Any]:
    """Eager vs ONNX fp32 vs every INT8 variant; the fastest variant is reported, whatever its error."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.fp32.onnx"
        with phase("export ONNX"):
            ex.to_onnx(s.model, fp32)
        with phase("fp32 and INT8 variants"):
            m = ex.measure(s.model, fp32, s.feeds, s.action_std, timing_runs=runs, calib=s.calib)
    int8 = m.fastest_within(float("inf"))
    if int8 is None:
        raise PolicyError(f"{s.policy}: no INT8 variant could be built or run: {m.failed}")
    with phase("PyTorch eager"):
        eager = eager_latency(s.model, s.feeds[0], runs)
    return {
        "weights": s.weights, "run": s.run, "config": s.config, "threads": thread_count(),
        "eager_ms": eager,
        "onnx_fp32_ms": {"p50": m.fp32.p50_ms, "p99": m.fp32.p99_ms},
        "onnx_int8_ms": {"p50": int8.p50_ms, "p99": int8.p99_ms, "mode": int8.quantization},
        "int8_variants": {v.quantization: {"p50": v.p50_ms, "p99": v.p99_ms, "action_err": v.action_err_max}
                          for v in m.int8},
        "failed_variants": m.failed,
        "speedup_int8_vs_eager": eager["p50"] / int8.p50_ms,
        "speedup_fp32_vs_eager": eager["p50"] / m.fp32.p50_ms,
        "action_err_int8": int8.action_err_max,
        "action_err_int8_mean": int8.action_err_mean,
        "action_err_units": s.error_units,
        "fp32_vs_torch_max_abs_err": m.fp32_vs_torch_max_abs_err,
    }


def bench_policy(run: Path, runs: int) -> dict[str, Any]:
    """A trained run's figures (what ``tether bench policy --act RUN`` reports for it)."""
    return bench_subject(from_run(run), runs)


def shipped_runtime(profile: RobotProfile, runs: int, model_dir: Path = DEFAULT_MODEL_DIR) -> dict[str, Any]:
    """The shipped model through PolicyRuntime.infer: normalization, onnxruntime, checks, as the policy node runs it."""
    runtime = PolicyRuntime.load(model_dir, profile, threads=thread_count())
    m = runtime.manifest
    rng = np.random.default_rng(0)
    images = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in m.cameras}
    state = np.asarray(m.normalization[mf.STATE].mean, dtype=np.float64)
    p50, p99 = ex.latency_ms(lambda: runtime.infer(state, images), runs, warmup=5)
    return {"model": model_dir.name, "policy": m.policy, "quantization": m.quantization, "threads": thread_count(),
            "infer_ms": {"p50": p50, "p99": p99, "runs": runs}}


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


def resolve_runs(given: dict[str, Path | None], defaults: dict[str, Path]) -> dict[str, Path | None]:
    """Each policy's run: the one given (which must be a run), else the default where it is one, else None
    (random initialisation)."""
    chosen: dict[str, Path | None] = {}
    for policy, run in given.items():
        if run is not None and not (run / "run.json").is_file():
            raise TetherError(f"--{policy} {run}: not a training run (no run.json there); pass a `tether train` "
                              f"run folder, or leave --{policy} out to bench it at random initialisation")
        default = defaults[policy]
        chosen[policy] = run or (default if (default / "run.json").is_file() else None)
    return chosen


def run(runs_by_policy: dict[str, Path | None], e2e: Path, profile: RobotProfile, runs: int = 200,
        progress: bool = True) -> dict[str, Any]:
    """Bench each policy (from its run, or at random initialisation for None) and the shipped runtime."""
    results: dict[str, Any] = {}
    with tqdm(total=4 * len(runs_by_policy) + 1, desc="bench policy", unit="step", disable=not progress) as bar:
        for policy, folder in runs_by_policy.items():
            with _phase(bar, f"{policy}: {'load run' if folder else 'random init'}"):
                subject = from_run(folder) if folder else at_random_init(policy, profile)
            results[policy] = bench_subject(subject, runs, functools.partial(_phase, bar, prefix=f"{policy}: "))
        with _phase(bar, "shipped model runtime"):
            results["shipped_runtime"] = shipped_runtime(profile, runs)
    results["rehearsal"] = rehearsal_figures(e2e)
    return results


@contextmanager
def _phase(bar: tqdm, label: str, prefix: str = "") -> Iterator[None]:
    bar.set_postfix_str(prefix + label)
    yield
    bar.update(1)


@contextmanager
def library_log(path: Path) -> Iterator[Path]:
    """tether's INFO log (the quantizer's notes among it) goes to ``path`` while the benchmark runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger, level = logging.getLogger("tether"), logging.getLogger("tether").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Policy inference benchmark", "",
             "Batch 1, onnxruntime CPU EP vs PyTorch eager on the same weights and frame; "
             "ratios against eager from the same run.", ""]
    benched = [p for p in POLICIES if p in r]
    random = [p for p in benched if r[p]["run"] is None]
    if random:
        lines += [f"**Weights: random** for {', '.join(random)}: no training run, so the CPU config at random "
                  "initialisation (seed 0). Latency is meaningful; the action errors compare random networks' graphs "
                  "(normalized units), not a trained policy's. Pass `--act RUN` / `--diffusion RUN` for those, in rad.",
                  ""]
    if benched:
        lines += ["| policy | weights | threads | eager p50 / p99 ms | ONNX fp32 p50 / p99 ms | "
                  "ONNX INT8 p50 / p99 ms (mode) | INT8 speed-up vs eager | INT8 action err (max) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [_policy_row(p, r[p]) for p in benched]
    if "shipped_runtime" in r:
        s = r["shipped_runtime"]
        lines += ["", "## The shipped model through the runtime", "",
                  f"`models/{s['model']}` ({s['policy']}, {s['quantization']}), `PolicyRuntime.infer` with "
                  f"normalization and checks, {s['threads']} thread(s): p50 {s['infer_ms']['p50']:.2f} ms, "
                  f"p99 {s['infer_ms']['p99']:.2f} ms over {s['infer_ms']['runs']} runs."]
    if r.get("rehearsal"):
        lines += _rehearsal_lines(r["rehearsal"])
    return "\n".join(lines) + "\n"


def _policy_row(p: str, x: dict[str, Any]) -> str:
    weights = "random" if x["run"] is None else f"run `{x['run']}`"
    return (f"| {p} | {weights} | {x['threads']} | {x['eager_ms']['p50']:.2f} / {x['eager_ms']['p99']:.2f} | "
            f"{x['onnx_fp32_ms']['p50']:.2f} / {x['onnx_fp32_ms']['p99']:.2f} | "
            f"{x['onnx_int8_ms']['p50']:.2f} / {x['onnx_int8_ms']['p99']:.2f} ({x['onnx_int8_ms']['mode']}) | "
            f"{x['speedup_int8_vs_eager']:.1f}x | {x['action_err_int8']:.4f} {x['action_err_units']} |")


def _rehearsal_lines(rehearsal: dict[str, Any]) -> list[str]:
    lines = ["", "## In rehearsal (full ROS 2 graph, twin, gate)", "",
             "| model | success | 95% CI | obs->command p50 / p99 ms | failed episodes missed |",
             "|---|---|---|---|---|"]
    for name, x in rehearsal.items():
        lat = x["obs_to_command_ms"]
        failures = x["failures"]
        missed = "n/a" if failures is None else ", ".join(f"{k} {n}" for k, n in failures.items()) or "-"
        lines.append(f"| {name} | {x['successes']}/{x['episodes']} = {x['success_rate']:.2f} | "
                     f"{x['ci95'][0]:.2f}-{x['ci95'][1]:.2f} | {lat.get('p50') or float('nan'):.1f} / "
                     f"{lat.get('p99') or float('nan'):.1f} | {missed} |")
    return lines


def write(results: dict[str, Any], json_path: Path) -> Path:
    return write_benchmark(results, json_path, markdown(results))
