"""onnxruntime inference on tiny real graphs: normalization, history, noise, refusals, the worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tether.errors import PolicyError, PolicyOutputError
from tether.policy_runtime.runtime.inference import (
    InferenceResult,
    InferenceWorker,
    Observation,
    ObservationError,
    PolicyRuntime,
)

JOINTS = 6


def load(tmp_path: Path, fx, **kw) -> tuple[PolicyRuntime, Any]:
    p = fx.TinyPolicy(**kw)
    return PolicyRuntime.load(fx.write_model(tmp_path / "model", p)), p


RUNTIME = "tether.policy_runtime.runtime"
# The one torch import the runtime holds: threads.fix(torch=True), which only commands that train, export or
# benchmark ask for, sets torch's thread count before any torch work.
OPT_IN_TORCH = {"tether.policy_runtime.runtime.threads": {"torch"}}


def test_importing_the_runtime_does_not_import_torch() -> None:
    code = ("import importlib, pkgutil, sys, tether.policy_runtime.runtime as r\n"
            "for m in pkgutil.walk_packages(r.__path__, r.__name__ + '.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_runtime_module_reaches_torch_or_the_training_code_through_any_import(import_graph) -> None:
    """Read from the source, so an import inside a function counts too: the runtime subpackage and every tether
    module it reaches import no torch (but for the opt-in above) and nothing of policy_runtime.training."""
    found = import_graph.modules("tether")
    edges = import_graph.graph(found)
    runtime = {m for m in found if m == RUNTIME or m.startswith(RUNTIME + ".")}
    reached = runtime.union(*(import_graph.reachable(edges, m) for m in runtime))
    assert not sorted(m for m in reached if m.startswith("tether.policy_runtime.training"))
    torch_imports = {m: names for m in sorted(reached)
                     if (names := {n for n in import_graph.imported_names(m, found[m])
                                   if n.split(".")[0] == "torch" or n == "safetensors.torch"})}
    assert torch_imports == OPT_IN_TORCH


def test_normalization_round_trip_gives_the_exact_action(tmp_path: Path, fx) -> None:
    s_mean, s_std = [0.1 * j for j in range(JOINTS)], [0.5 + 0.1 * j for j in range(JOINTS)]
    a_mean, a_std = [-0.2 * j for j in range(JOINTS)], [2.0 + j for j in range(JOINTS)]
    img_mean, img_std = [0.2, 0.4, 0.6], [0.5, 0.25, 0.125]
    rt, p = load(tmp_path, fx, state_norm=(s_mean, s_std), action_norm=(a_mean, a_std),
                 image_norm=(img_mean, img_std), image_weight=0.5)
    state = np.linspace(-1.0, 1.0, JOINTS)
    rgb = (51, 102, 204)  # 0.2, 0.4, 0.8 after /255
    images = {c: np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy() for c, (w, h) in p.cameras.items()}
    chunk = rt.infer(state, images)
    s_norm = (state - s_mean) / s_std
    img_term = 0.5 * 2 * np.mean((np.array(rgb) / 255.0 - img_mean) / img_std)  # two cameras
    expected = (s_norm + p.biases.astype(float) + img_term) * a_std + a_mean
    assert chunk.shape == (p.chunk_length, JOINTS)
    np.testing.assert_allclose(chunk, expected, rtol=1e-5, atol=1e-5)


def test_history_is_padded_with_the_first_observation_and_reset(tmp_path: Path, fx) -> None:
    rt, p = load(tmp_path, fx, n_obs_steps=2, state_weights=[10.0, 1.0])  # 10 x older + 1 x newest
    images = fx.images_for(p)
    x0, x1, x2 = (np.full(JOINTS, v) for v in (0.1, 0.2, 0.3))
    first = rt.infer(x0, images)[0]  # padded: [x0, x0]
    np.testing.assert_allclose(first, 11 * x0, rtol=1e-6)
    np.testing.assert_allclose(rt.infer(x1, images)[0], 10 * x0 + x1, rtol=1e-6)
    np.testing.assert_allclose(rt.infer(x2, images)[0], 10 * x1 + x2, rtol=1e-6)
    rt.reset()
    np.testing.assert_allclose(rt.infer(x2, images)[0], 11 * x2, rtol=1e-6)


def test_noise_is_fed_from_the_seeded_generator(tmp_path: Path, fx) -> None:
    p = fx.TinyPolicy(noise=True, noise_weight=1.0, policy="diffusion", bias=np.zeros((5, JOINTS)))
    model = fx.write_model(tmp_path / "model", p)
    rt = PolicyRuntime.load(model, seed=7)
    assert rt.takes_noise
    state = np.zeros(JOINTS)
    expected_rng = np.random.default_rng(7)
    for _ in range(2):  # a new draw every call
        expected = expected_rng.standard_normal((1, 5, JOINTS), dtype=np.float32)[0]
        np.testing.assert_allclose(rt.infer(state, fx.images_for(p)), expected, rtol=1e-6)
    first_draw = PolicyRuntime.load(model, seed=7).infer(state, fx.images_for(p))
    assert not np.allclose(PolicyRuntime.load(model, seed=8).infer(state, fx.images_for(p)), first_draw)


def test_nan_output_is_refused_never_returned(tmp_path: Path, fx) -> None:
    rt, p = load(tmp_path, fx, nan=True)
    with pytest.raises(PolicyOutputError, match="NaN/inf"):
        rt.infer(np.zeros(JOINTS), fx.images_for(p))


@pytest.mark.parametrize("front, state, message", [
    (np.zeros((48, 64, 3), np.uint8), np.zeros(JOINTS), r"expected uint8 \(12, 16, 3\) RGB \(16x12"),
    (np.zeros((12, 16, 3), np.float32), np.zeros(JOINTS), "image is float32"),
    (np.zeros((12, 16), np.uint8), np.zeros(JOINTS), r"image is uint8 \(12, 16\)"),
    (None, np.zeros(5), r"expected \(6,\) for joints shoulder_pan"),
    (None, np.full(JOINTS, np.nan), "NaN or inf"),
])
def test_bad_observations_name_the_expected_value(tmp_path: Path, fx, front, state, message) -> None:
    rt, p = load(tmp_path, fx)
    images = fx.images_for(p)
    if front is not None:
        images["front"] = front
    with pytest.raises(ObservationError, match=message):
        rt.infer(state, images)


def test_a_missing_camera_names_the_ones_the_model_needs(tmp_path: Path, fx) -> None:
    rt, p = load(tmp_path, fx)
    with pytest.raises(ObservationError, match="no image from camera 'wrist'; the model needs cameras front, wrist"):
        rt.infer(np.zeros(JOINTS), {"front": fx.images_for(p)["front"]})


def test_threads_must_be_positive(tmp_path: Path, fx) -> None:
    with pytest.raises(PolicyError, match="threads must be >= 1"):
        PolicyRuntime.load(fx.write_model(tmp_path / "m"), threads=0)


class SlowRuntime:
    """Stands in for PolicyRuntime: blocks each inference until released; echoes the state."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.seen: list[float] = []
        self.resets = 0

    def infer(self, state: np.ndarray, images: object) -> np.ndarray:
        self.started.set()
        self.gate.wait(5.0)
        self.seen.append(float(state[0]))
        return np.tile(state, (3, 1))

    def reset(self) -> None:
        self.resets += 1


def test_worker_runs_off_thread_and_keeps_only_the_newest_observation() -> None:
    rt = SlowRuntime()
    with InferenceWorker(rt) as worker:  # type: ignore[arg-type]
        worker.submit(Observation(0.0, np.zeros(JOINTS), {}))
        assert rt.started.wait(2.0)  # the first is running and blocked; submit() returned at once
        for i in range(1, 6):
            worker.submit(Observation(float(i), np.full(JOINTS, float(i)), {}))
        rt.gate.set()
        results = [worker.results.get(timeout=2.0) for _ in range(2)]
        time.sleep(0.05)
        assert worker.results.empty()
    assert [r.obs_time for r in results] == [0.0, 5.0]  # 1..4 were superseded, never run
    assert rt.seen == [0.0, 5.0] and worker.replaced == 4
    assert results[1].chunk is not None and np.all(results[1].chunk == 5.0)
    assert all(r.error is None and r.infer_ms >= 0 for r in results)


def test_worker_delivers_errors_and_reset_marks_older_results(tmp_path: Path, fx) -> None:
    rt, p = load(tmp_path, fx, nan=True)
    got: list[InferenceResult] = []
    done = threading.Event()

    def on_result(result: InferenceResult) -> None:  # called on the worker thread
        got.append(result)
        done.set()

    worker = InferenceWorker(rt, on_result)
    try:
        worker.submit(Observation(1.5, np.zeros(JOINTS), fx.images_for(p)))
        assert done.wait(5.0)
        assert got[0].chunk is None and isinstance(got[0].error, PolicyOutputError) and got[0].obs_time == 1.5
        generation = got[0].generation
        worker.reset()
        done.clear()
        worker.submit(Observation(2.0, np.zeros(5), {}))  # wrong state length: delivered as an error too
        assert done.wait(5.0)
        assert isinstance(got[1].error, ObservationError) and got[1].generation == generation + 1
    finally:
        worker.close()
