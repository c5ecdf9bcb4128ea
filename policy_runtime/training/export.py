"""``tether export``: a training run -> ONNX + manifest, optionally INT8, with a parity report.

INT8 mode is chosen by measurement: both dynamic and static-QDQ (calibrated on dataset
frames) variants are built, timed and compared against fp32 on held-out frames, and
the fastest one whose action error stays within tolerance ships as ``model.onnx``.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from tether.errors import PolicyError
from tether.policy_runtime.runtime import manifest as mf
from tether.policy_runtime.training.batches import BatchSource
from tether.dataset.reader import load_demos
from tether.policy_runtime.training.models import PolicyModel, export_onnx
from tether.policy_runtime.runtime.threads import count as thread_count
from tether.policy_runtime.training.train import RunSpec, load_run, load_weights

MODES = ("none", "int8")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    quantization: str
    file: str
    p50_ms: float
    p99_ms: float
    action_err_max: float  # robot units (rad), vs fp32 ONNX, over held-out frames
    action_err_mean: float


@dataclass
class Measured:
    """One network's graphs, measured on the same frames: fp32 against torch, each INT8 variant against fp32."""

    fp32: Variant
    fp32_vs_torch_max_abs_err: float  # normalized units
    fp32_vs_torch_action_err: float  # in the units of the ``std`` it was measured with (rad for a trained run)
    int8: list[Variant] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # INT8 variant -> why it could not be built or run

    def fastest_within(self, tolerance_rad: float) -> Variant | None:
        """The fastest INT8 variant whose action error stays within ``tolerance_rad``; None when none does."""
        within = [v for v in self.int8 if v.action_err_max <= tolerance_rad]
        return min(within, key=lambda v: v.p50_ms) if within else None


def held_out_source(spec: RunSpec, model: PolicyModel) -> BatchSource:
    """The run's validation episodes, decoded once, as normalized model inputs."""
    demos = load_demos(spec.dataset, image_size=(spec.image_size[0], spec.image_size[1]),
                       only_success=False, episodes=spec.val_episodes)
    cfg = model.config
    return BatchSource(demos, cfg.n_obs_steps, cfg.chunk_length, spec.normalization, torch.device("cpu"))


def held_out_inputs(src: BatchSource, model: PolicyModel, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` frames of ``src`` as graph feeds (plus fixed noise where the graph takes it)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(src), generator=gen)[:count]
    names = model.export_input_names()
    feeds = []
    for i in idx:
        batch = src.batch(i.view(1))
        noise = torch.randn(1, cfg.chunk_length, model.action_dim, generator=gen)
        feeds.append({n: (noise if n == mf.NOISE else batch[n]).numpy().astype(np.float32) for n in names})
    return feeds


def to_onnx(model: PolicyModel, path: Path) -> None:
    with torch.no_grad():
        export_onnx(model, path)  # batch 1, with the exporter's notices about tracing filtered where they arise


def session(path: Path) -> ort.InferenceSession:
    """A CPU session with the process's thread count (a per-session option: nothing global changes)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = thread_count()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([sess.run([mf.ACTION], f)[0] for f in feeds])


def latency_ms(call: Callable[[], object], runs: int, warmup: int = 10) -> tuple[float, float]:
    """(p50, p99) wall milliseconds of ``call`` over ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def time_session(sess: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int = 200) -> tuple[float, float]:
    return latency_ms(lambda: sess.run([mf.ACTION], feed), runs)


def eager_actions(model: PolicyModel, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    names = model.export_input_names()
    outs = []
    with torch.no_grad():
        for f in feeds:
            obs = {n: torch.from_numpy(f[n]) for n in names if n != mf.NOISE}
            noise = torch.from_numpy(f[mf.NOISE]) if mf.NOISE in f else None
            outs.append(model.predict_chunk(obs, noise=noise).numpy())
    return np.concatenate(outs)


class _Calibration(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


# Shape inference loses some intermediate types in unrolled graphs; they are all float.
_UNTYPED_ARE_FLOAT = {"DefaultTensorType": onnx.TensorProto.FLOAT}


class _QuantizerNotes(logging.Filter):
    """onnxruntime.quantization tells the root logger about every weight it quantizes per tensor instead of per
    channel ('Axis 1 is out-of-range for weight ...', a hundred lines a graph). The parity report measures what
    that costs, so these notes go to this module's log at INFO; the quantizer's errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname or \
                "quantization" not in record.pathname:
            return True
        log.info("onnxruntime.quantization: %s", record.getMessage())
        return False


@contextmanager
def quantizer_notes_to_log() -> Iterator[None]:
    root, notes = logging.getLogger(), _QuantizerNotes()
    # logging.warning() installs a stderr handler on a bare root logger for good; stand in for it meanwhile,
    # so whatever the filter lets through is shown the way that handler would have shown it.
    stand_in = logging.StreamHandler() if not root.handlers else None
    if stand_in is not None:
        stand_in.setLevel(logging.WARNING)  # tether's own INFO (the notes above) propagates here too
        stand_in.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        root.addHandler(stand_in)
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)
        if stand_in is not None:
            root.removeHandler(stand_in)


def quantize_variants(fp32: Path, out: Path, calib: list[dict[str, np.ndarray]]) -> dict[str, Path | str]:
    """Each INT8 variant's file, or why it could not be built (kept in the parity report)."""
    with quantizer_notes_to_log():
        return _quantize_variants(fp32, out, calib)


def _quantize_variants(fp32: Path, out: Path, calib: list[dict[str, np.ndarray]]) -> dict[str, Path | str]:
    pre = out / "model.pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    builders = {
        # MatMul/Gemm only: dynamic ConvInteger is the slow path on CPU (see DESIGN.md).
        "int8-dynamic": lambda path: quantize_dynamic(
            str(pre), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
            extra_options=_UNTYPED_ARE_FLOAT),
        "int8-static-qdq": lambda path: _static(pre, path, calib, None),
        # Conv only: Q/DQ pairs around every Mul/Add of GroupNorm and Mish cost more than int8 saves.
        "int8-static-conv": lambda path: _static(pre, path, calib, ["Conv"]),
    }
    made: dict[str, Path | str] = {}
    for mode, build in builders.items():
        path = out / f"model.{mode}.onnx"
        try:
            build(path)
            made[mode] = path
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises bare RuntimeError/ValueError
            made[mode] = f"{type(exc).__name__}: {exc}"
    pre.unlink()
    return made


def _static(pre: Path, path: Path, calib: list[dict[str, np.ndarray]], op_types: list[str] | None) -> None:
    """Static QDQ with MinMax calibration on ``calib``; ``op_types`` None: every op type it supports."""
    quantize_static(str(pre), str(path), _Calibration(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,  # u8s8: x86's fast int8 kernels
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
                    extra_options=_UNTYPED_ARE_FLOAT)


def _action_err(a: np.ndarray, b: np.ndarray, std: np.ndarray) -> tuple[float, float]:
    # normalized -> robot units: only the scale matters for a difference
    diff = np.abs(a - b) * std
    return float(diff.max()), float(diff.mean())


def measure(model: PolicyModel, fp32: Path, feeds: list[dict[str, np.ndarray]], std: np.ndarray, *,
            timing_runs: int, calib: list[dict[str, np.ndarray]] | None = None) -> Measured:
    """Time ``fp32`` (the model's graph) on ``feeds[0]`` and compare it with torch on every feed; with ``calib``,
    build every INT8 variant beside it (calibrated on those frames) and compare each with fp32.

    Errors are ``|a - b| * std``: robot units when ``std`` is the action normalization's.
    """
    eager = eager_actions(model, feeds)
    fp32_session = session(fp32)
    ref = run_all(fp32_session, feeds)
    err_max, _ = _action_err(ref, eager, std)
    measured = Measured(Variant("none", fp32.name, *time_session(fp32_session, feeds[0], timing_runs), 0.0, 0.0),
                        float(np.abs(ref - eager).max()), err_max)
    if calib is None:
        return measured
    for q, path in quantize_variants(fp32, fp32.parent, calib).items():
        if isinstance(path, str):
            measured.failed[q] = path
            continue
        try:
            sess = session(path)
            e_max, e_mean = _action_err(run_all(sess, feeds), ref, std)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            measured.failed[q] = f"{type(exc).__name__}: {exc}"
            continue
        measured.int8.append(Variant(q, path.name, *time_session(sess, feeds[0], timing_runs), e_max, e_mean))
    return measured


def export(run: Path | str, out: Path | str, *, quantize: str = "none", parity_frames: int = 64,
           calib_frames: int = 128, tolerance_rad: float = 0.05, timing_runs: int = 200,
           keep_reference: bool = True) -> Path:
    """Write ``out``: model.onnx (+ the fp32 graph when quantized), manifest.json, parity.json, parity.md.

    onnxruntime runs at the process's thread count (``tether --threads N``), like torch.
    """
    if quantize not in MODES:
        raise PolicyError(f"unknown quantization {quantize!r}; choices: {', '.join(MODES)}")
    run, out = Path(run), Path(out)
    spec, model = load_run(run), load_weights(run)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.fp32.onnx"
    to_onnx(model, fp32)
    held_out = held_out_source(spec, model)
    feeds = held_out_inputs(held_out, model, parity_frames)
    calib = held_out_inputs(held_out, model, calib_frames, seed=1) if quantize == "int8" else None
    m = measure(model, fp32, feeds, np.asarray(spec.normalization[mf.ACTION].std, dtype=np.float32),
                timing_runs=timing_runs, calib=calib)
    report: dict[str, Any] = {"run": str(run), "frames": len(feeds), "threads": thread_count(),
                              "fp32_vs_torch_max_abs_err": m.fp32_vs_torch_max_abs_err,
                              "fp32_vs_torch_action_err_rad": m.fp32_vs_torch_action_err,
                              "variants": [asdict(v) for v in [m.fp32, *m.int8]]}
    if m.failed:
        report["failed_variants"] = m.failed
    chosen = m.fp32 if quantize == "none" else m.fastest_within(tolerance_rad)
    if chosen is None:
        raise PolicyError(f"no INT8 variant kept the action error within {tolerance_rad} rad of fp32: "
                          f"{report['variants'][1:]}; ship fp32 (--quantize none) or raise --tolerance")
    _keep_only(out, chosen, keep_reference)
    report["chosen"] = asdict(chosen)
    report["tolerance_rad"] = tolerance_rad
    write_manifest(out, spec, model, chosen.quantization, report)
    (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "parity.md").write_text(parity_markdown(report))
    return out


def _keep_only(out: Path, chosen: Variant, keep_reference: bool) -> None:
    """model.onnx is the shipped graph; a quantized folder keeps model.fp32.onnx as its reference if asked."""
    shutil.copyfile(out / chosen.file, out / "model.onnx")
    for path in out.glob("model.int8-*.onnx"):
        path.unlink()
    if chosen.quantization == "none" or not keep_reference:
        (out / "model.fp32.onnx").unlink()


def write_manifest(out: Path, spec: RunSpec, model: PolicyModel, quantization: str, report: dict[str, Any]) -> None:
    cfg = model.config
    example = model.export_example_inputs(1)
    inputs = [mf.TensorSpec(n, list(t.shape)) for n, t in zip(model.export_input_names(), example, strict=True)]
    outputs = [mf.TensorSpec(mf.ACTION, [1, cfg.chunk_length, len(spec.joint_names)])]
    graph = mf.GraphSpec("model.onnx", mf.sha256_of(out / "model.onnx"), inputs, outputs)
    norms = {k: mf.Normalization(v.mean, v.std) for k, v in spec.normalization.items()}
    cams = [mf.CameraSpec(c, spec.image_size[1], spec.image_size[0]) for c in spec.cameras]
    graphs = {"policy": graph}
    if (out / "model.fp32.onnx").is_file():
        graphs["fp32_reference"] = mf.GraphSpec("model.fp32.onnx", mf.sha256_of(out / "model.fp32.onnx"),
                                                inputs, outputs)
    manifest = mf.Manifest(spec.policy, spec.robot, spec.joint_names, cams, cfg.chunk_length, cfg.n_obs_steps,
                           1.0 / spec.fps, graphs, norms, quantization,
                           created_by=" ".join(shlex.quote(x) for x in ["tether", *sys.argv[1:]]),
                           extra={"policy_config": spec.policy_config, "dataset": spec.dataset,
                                  "parity": {k: report[k] for k in ("fp32_vs_torch_max_abs_err",
                                                                      "fp32_vs_torch_action_err_rad")},
                                  "chosen": report["chosen"]})
    manifest.save(out)


def parity_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Parity report: {r['run']}", "",
             f"{r['frames']} held-out frames, onnxruntime CPU, {r['threads']} threads, batch 1.", "",
             f"- fp32 ONNX vs torch eager: max abs error {r['fp32_vs_torch_max_abs_err']:.2e} (normalized), "
             f"{r['fp32_vs_torch_action_err_rad']:.2e} rad", "",
             "| graph | p50 ms | p99 ms | action err vs fp32, max (rad) | mean (rad) |",
             "|---|---|---|---|---|"]
    for v in r["variants"]:
        lines.append(f"| {v['quantization']} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                     f"{v['action_err_max']:.4f} | {v['action_err_mean']:.4f} |")
    for mode, why in r.get("failed_variants", {}).items():
        lines.append(f"| {mode} | could not be built: {why[:120]} | | | |")
    lines += ["", f"Shipped as model.onnx: **{r['chosen']['quantization']}** (fastest within "
                  f"{r['tolerance_rad']} rad of fp32).", ""]
    return "\n".join(lines)
