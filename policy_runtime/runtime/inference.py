"""Torch-free policy inference: a model folder (manifest + ONNX graph) run by onnxruntime on CPU.

:class:`PolicyRuntime` turns one observation in robot units (joint positions and
uint8 HxWx3 camera frames) into one action chunk in robot units: it keeps the
model's ``n_obs_steps`` history, applies the manifest's normalization (which
lives outside the network), feeds seeded standard-normal ``noise`` when the
graph takes it, and refuses non-finite output with :class:`PolicyOutputError`.

:class:`InferenceWorker` runs it off the caller's thread (onnxruntime releases
the GIL) and keeps only the newest pending observation, so a slow inference
never builds a backlog of stale observations.

History steps are successive ``infer`` calls: a model with ``n_obs_steps > 1``
sees its observations at the spacing they were submitted at.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from tether.errors import ManifestError, PolicyError, PolicyOutputError
from tether.policy_runtime.runtime.manifest import (
    ACTION,
    IMAGE_PREFIX,
    NOISE,
    STATE,
    Manifest,
    TensorSpec,
    check_matches_profile,
    load_manifest,
)

if TYPE_CHECKING:
    from tether.robot_profile import RobotProfile

# The model shipped with the repo for the default robot (models/ beside config/).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "so101_pick_place_act_int8"
# One intra-op thread: on the 2-core target the gate's 200 Hz stream and the twin need the other core, and
# on the CPU-sized ACT (2 cameras at 96x96) a second thread was slower, not faster, on this shared 2-core machine.
DEFAULT_THREADS = 1


def resolve_model_dir(value: str | Path) -> Path:
    """The model folder to load; "" means the one shipped with the repo."""
    path = Path(value) if str(value) else DEFAULT_MODEL_DIR
    if not path.is_dir():
        default = " (the default model, expected to ship with the repo)" if not str(value) else ""
        raise ManifestError(f"policy model folder {path} does not exist{default}; give a folder made by "
                            "`tether export` (tether rehearse --policy MODEL_DIR, or the node's -p model_dir:=...)")
    return path.resolve()


class ObservationError(PolicyError, ValueError):
    """An observation does not fit the model: state length, a missing camera, image size or dtype."""


@dataclass(frozen=True)
class Observation:
    stamp: float  # capture time (s) of the joint state; the chunk's first action applies then
    state: np.ndarray  # (n_joints,) robot units
    images: Mapping[str, np.ndarray]  # camera name -> uint8 (H, W, 3), RGB


def contract_shapes(m: Manifest) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(inputs, outputs) name -> shape that the manifest's own fields fix (``noise`` is optional)."""
    n, j = m.n_obs_steps, len(m.joint_names)
    inputs = {STATE: [1, n, j], **{IMAGE_PREFIX + c.name: [1, n, 3, c.height, c.width] for c in m.cameras}}
    return inputs, {ACTION: [1, m.chunk_length, j]}


def check_declared_io(m: Manifest) -> None:
    """The manifest's declared graph I/O must be the contract's, so a runtime can trust either."""
    inputs, outputs = contract_shapes(m)
    graph = m.policy_graph
    if NOISE in {t.name for t in graph.inputs}:
        inputs[NOISE] = [1, m.chunk_length, len(m.joint_names)]
    for kind, declared, expected in (("inputs", graph.inputs, inputs), ("outputs", graph.outputs, outputs)):
        got = {t.name: list(t.shape) for t in declared}
        if got != expected:
            raise ManifestError(f"policy graph {kind} {got} do not follow the contract for this manifest; "
                                f"expected {expected}")
        bad = [t.name for t in declared if t.dtype != "float32"]
        if bad:
            raise ManifestError(f"policy graph {kind} {bad} are not float32; the contract is float32 throughout")


def check_session_io(session: ort.InferenceSession, m: Manifest) -> None:
    """The graph on disk must take and give exactly the manifest's names and shapes."""
    graph = m.policy_graph
    for kind, actual, declared in (("inputs", session.get_inputs(), graph.inputs),
                                   ("outputs", session.get_outputs(), graph.outputs)):
        _check_args(kind, {a.name: (list(a.shape), a.type) for a in actual}, declared, graph.file)


def _check_args(kind: str, actual: dict[str, tuple[list[object], str]], declared: list[TensorSpec], file: str) -> None:
    names = sorted(t.name for t in declared)
    if sorted(actual) != names:
        raise ManifestError(f"{file}: graph {kind} {sorted(actual)} differ from the manifest's {names}")
    for spec in declared:
        shape, kind_type = actual[spec.name]
        # A symbolic (dynamic) dim accepts the manifest's fixed size; a fixed one must equal it.
        fixed_ok = len(shape) == len(spec.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(shape, spec.shape))
        if not fixed_ok or kind_type != "tensor(float)":
            raise ManifestError(f"{file}: graph {kind[:-1]} '{spec.name}' is {kind_type} {shape}; "
                                f"the manifest says float32 {spec.shape}")


def check_graph_matches_manifest(folder: Path | str, m: Manifest) -> None:
    """What ``PolicyRuntime.load`` checks of the graph, for a caller that runs nothing (the CLI before it
    starts a graph): the manifest's declared I/O follows the contract, and the .onnx on disk takes and gives
    exactly those names, shapes and dtypes (read from an onnxruntime session, opened and dropped)."""
    check_declared_io(m)
    check_session_io(make_session(Path(folder) / m.policy_graph.file), m)


def make_session(path: Path, threads: int = DEFAULT_THREADS) -> ort.InferenceSession:
    """A CPU session for batch-1 control: ``threads`` intra-op threads that sleep when idle."""
    if threads < 1:
        raise PolicyError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers would burn the core the gate's command stream needs between inferences.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a graph it cannot load
        raise ManifestError(f"{path}: onnxruntime cannot load the graph: {exc}") from exc


class PolicyRuntime:
    """One model folder, ready to turn observations into action chunks (robot units)."""

    def __init__(self, manifest: Manifest, session: ort.InferenceSession, *, seed: int = 0) -> None:
        self.manifest = manifest
        self._session = session
        self._inputs = {i.name for i in session.get_inputs()}
        norm = manifest.normalization
        self._state = _affine(norm[STATE].mean, norm[STATE].std)
        self._action = _affine(norm[ACTION].mean, norm[ACTION].std)
        mean, std = _affine(norm["images"].mean, norm["images"].std)
        self._image = (mean.reshape(3, 1, 1), std.reshape(3, 1, 1))
        self._history: collections.deque[dict[str, np.ndarray]] = collections.deque(maxlen=manifest.n_obs_steps)
        self._rng = np.random.default_rng(seed)

    @classmethod
    def load(cls, model_dir: Path | str, profile: RobotProfile | None = None, *, joints: list[str] | None = None,
             cameras: Mapping[str, tuple[int, int]] | None = None, threads: int = DEFAULT_THREADS,
             seed: int = 0) -> PolicyRuntime:
        """Verify and open ``model_dir`` for a robot given as a profile or as joints + cameras {name: (w, h)}."""
        manifest = load_manifest(model_dir)  # verifies every graph's sha256
        if profile is not None:
            joints = profile.joint_names
            cameras = {c.name: (c.width, c.height) for c in profile.cameras}
        if joints is not None:
            check_matches_profile(manifest, joints, dict(cameras or {}))
        check_declared_io(manifest)
        session = make_session(Path(model_dir) / manifest.policy_graph.file, threads)
        check_session_io(session, manifest)
        return cls(manifest, session, seed=seed)

    @property
    def takes_noise(self) -> bool:
        return NOISE in self._inputs

    def reset(self) -> None:
        """Forget the observation history (a new episode)."""
        self._history.clear()

    def warm_up(self, runs: int = 3) -> float:
        """Run the graph on zeros so the first real observation does not pay for allocation; returns the last ms."""
        feeds = {i.name: np.zeros(self._shape(i.name), np.float32) for i in self._session.get_inputs()}
        elapsed = 0.0
        for _ in range(runs):
            start = time.perf_counter()
            self._session.run([ACTION], feeds)
            elapsed = (time.perf_counter() - start) * 1e3
        return elapsed

    def _shape(self, name: str) -> list[int]:
        return next(list(t.shape) for t in self.manifest.policy_graph.inputs if t.name == name)

    def infer(self, state: np.ndarray, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """(chunk_length, n_joints) actions in robot units; action i applies i control periods after the obs."""
        self._history.append(self._normalized(state, images))
        while len(self._history) < self._history.maxlen:  # type: ignore[operator]
            self._history.appendleft(self._history[0])  # after a reset: repeat the first observation
        feeds = {name: np.stack([h[name] for h in self._history])[None] for name in self._history[0]}
        m = self.manifest
        if self.takes_noise:
            feeds[NOISE] = self._rng.standard_normal((1, m.chunk_length, len(m.joint_names)), dtype=np.float32)
        (out,) = self._session.run([ACTION], feeds)
        return self._unnormalized(np.asarray(out))

    def _normalized(self, state: np.ndarray, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.manifest
        q = np.asarray(state, dtype=np.float64)
        if q.shape != (len(m.joint_names),):
            raise ObservationError(f"state has shape {q.shape}; expected ({len(m.joint_names)},) for joints "
                                   f"{', '.join(m.joint_names)}")
        if not np.all(np.isfinite(q)):
            raise ObservationError(f"state contains NaN or inf: {q.tolist()}")
        mean, std = self._state
        frame = {STATE: ((q - mean) / std).astype(np.float32)}
        for cam in m.cameras:
            frame[IMAGE_PREFIX + cam.name] = self._image_chw(cam.name, cam.width, cam.height, images)
        return frame

    def _image_chw(self, name: str, width: int, height: int, images: Mapping[str, np.ndarray]) -> np.ndarray:
        if name not in images:
            raise ObservationError(f"no image from camera '{name}'; the model needs cameras "
                                   f"{', '.join(c.name for c in self.manifest.cameras)}, got {', '.join(images) or '(none)'}")
        img = images[name]
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (height, width, 3):
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ObservationError(f"camera '{name}': image is {got}; expected uint8 ({height}, {width}, 3) RGB "
                                   f"({width}x{height}, the size the model was trained at)")
        mean, std = self._image
        chw = img.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
        return (chw - mean) / std

    def _unnormalized(self, out: np.ndarray) -> np.ndarray:
        m = self.manifest
        expected = (1, m.chunk_length, len(m.joint_names))
        if out.shape != expected:
            raise PolicyOutputError(f"model output '{ACTION}' has shape {out.shape}; expected {expected}")
        if not np.all(np.isfinite(out)):
            raise PolicyOutputError(f"model output contains {int(np.count_nonzero(~np.isfinite(out)))} NaN/inf "
                                    f"values of {out.size}; the chunk is refused")
        mean, std = self._action
        return out[0].astype(np.float64) * std + mean


def _affine(mean: list[float], std: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


@dataclass(frozen=True)
class InferenceResult:
    obs_time: float  # the observation's capture time: action 0 of ``chunk`` applies then
    chunk: np.ndarray | None  # (chunk_length, n_joints) in robot units; None when ``error`` is set
    infer_ms: float
    generation: int  # InferenceWorker.generation at submit; an older one predates a reset
    error: PolicyError | None = None


class InferenceWorker:
    """Runs ``runtime.infer`` on its own thread; only the newest pending observation waits.

    Results (and errors, as ``InferenceResult.error``) go to ``on_result`` when given, called from
    the worker thread, else to the ``results`` queue. ``reset()`` drops the pending observation,
    resets the runtime's history between two inferences and bumps ``generation`` so a result
    computed before the reset can be recognised and ignored.
    """

    def __init__(self, runtime: PolicyRuntime, on_result: Callable[[InferenceResult], None] | None = None) -> None:
        self.runtime = runtime
        self.results: queue.Queue[InferenceResult] = queue.Queue()
        self._deliver = on_result or self.results.put
        self.generation = 0
        self.replaced = 0  # observations superseded by a newer one before inference started
        self._cond = threading.Condition()
        self._pending: Observation | None = None
        self._reset_due = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="policy-inference", daemon=True)
        self._thread.start()

    def submit(self, obs: Observation) -> None:
        with self._cond:
            if self._pending is not None:
                self.replaced += 1
            self._pending = obs
            self._cond.notify()

    def reset(self) -> None:
        with self._cond:
            self._pending = None
            self._reset_due = True
            self.generation += 1
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def __enter__(self) -> InferenceWorker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._reset_due or self._pending is not None):
                    self._cond.wait()
                if self._closed:
                    return
                if self._reset_due:  # here, so a reset never races an inference on the history
                    self.runtime.reset()
                    self._reset_due = False
                obs, generation, self._pending = self._pending, self.generation, None
            if obs is not None:
                self._deliver(self._run(obs, generation))

    def _run(self, obs: Observation, generation: int) -> InferenceResult:
        start = time.perf_counter()
        try:
            chunk: np.ndarray | None = self.runtime.infer(obs.state, obs.images)
            error: PolicyError | None = None
        except PolicyError as exc:
            chunk, error = None, exc
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors: delivered, never lost with the thread
            chunk, error = None, PolicyError(f"inference failed: {type(exc).__name__}: {exc}")
        return InferenceResult(obs.stamp, chunk, (time.perf_counter() - start) * 1e3, generation, error)
