"""Tiny real ONNX policies with a known function, and model folders (manifest + sha256) around them.

The graph computes, with s the normalized state history [1, n_obs, J] and x_c a normalized image:

    action[0, k, j] = sum_o state_weights[o] * s[0, o, j] + bias[k, j]
                      + image_weight * sum_c mean(x_c) + noise_weight * noise[0, k, j]

so a test can compute the exact expected action. ``nan=True`` adds NaN to every action.
Load it from any test folder with ``load_fixtures()`` (pytest runs in importlib mode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tether.policy_runtime.runtime import manifest as mf

SO101_JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@dataclass
class TinyPolicy:
    joints: list[str] = field(default_factory=lambda: list(SO101_JOINTS))
    cameras: dict[str, tuple[int, int]] = field(default_factory=lambda: {"front": (16, 12), "wrist": (16, 12)})
    chunk_length: int = 5
    n_obs_steps: int = 1
    control_period_s: float = 0.05
    policy: str = "act"
    noise: bool = False
    nan: bool = False
    state_weights: list[float] | None = None  # per history step; default 1 for the newest, 0 otherwise
    bias: np.ndarray | None = None  # (chunk_length, J); default 0.01 * k for every joint
    image_weight: float = 0.0
    noise_weight: float = 0.0
    state_norm: tuple[list[float], list[float]] | None = None  # (mean, std); default identity
    action_norm: tuple[list[float], list[float]] | None = None
    image_norm: tuple[list[float], list[float]] = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])

    @property
    def weights(self) -> np.ndarray:
        if self.state_weights is not None:
            return np.asarray(self.state_weights, np.float32)
        return np.eye(1, self.n_obs_steps, self.n_obs_steps - 1, dtype=np.float32)[0]

    @property
    def biases(self) -> np.ndarray:
        if self.bias is not None:
            return np.asarray(self.bias, np.float32)
        ramp = 0.01 * np.arange(self.chunk_length, dtype=np.float32)[:, None]
        return np.repeat(ramp, len(self.joints), axis=1)

    def norms(self) -> dict[str, mf.Normalization]:
        j = len(self.joints)
        ident = ([0.0] * j, [1.0] * j)
        return {mf.STATE: mf.Normalization(*(self.state_norm or ident)),
                mf.ACTION: mf.Normalization(*(self.action_norm or ident)),
                "images": mf.Normalization(*self.image_norm)}


def build_graph(p: TinyPolicy) -> onnx.ModelProto:
    j, k, n = len(p.joints), p.chunk_length, p.n_obs_steps
    inputs = [helper.make_tensor_value_info(mf.STATE, TensorProto.FLOAT, [1, n, j])]
    init = [numpy_helper.from_array(p.weights.reshape(1, n, 1), "w_state"),
            numpy_helper.from_array(p.biases.reshape(1, k, j), "bias"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([p.image_weight], np.float32), "w_image"),
            numpy_helper.from_array(np.array([p.noise_weight], np.float32), "w_noise"),
            numpy_helper.from_array(np.array([np.nan if p.nan else 0.0], np.float32), "nan_or_zero")]
    nodes = [helper.make_node("Mul", [mf.STATE, "w_state"], ["ws"]),
             helper.make_node("ReduceSum", ["ws", "axis1"], ["s"], keepdims=1),  # [1, 1, J]
             helper.make_node("Add", ["s", "bias"], ["a0"])]  # [1, K, J]
    last = "a0"
    for i, (cam, (w, h)) in enumerate(p.cameras.items()):
        name = mf.IMAGE_PREFIX + cam
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n, 3, h, w]))
        nodes += [helper.make_node("ReduceMean", [name], [f"m{i}"], keepdims=0),  # scalar
                  helper.make_node("Mul", [f"m{i}", "w_image"], [f"mi{i}"]),
                  helper.make_node("Add", [last, f"mi{i}"], [f"a_img{i}"])]
        last = f"a_img{i}"
    if p.noise:
        inputs.append(helper.make_tensor_value_info(mf.NOISE, TensorProto.FLOAT, [1, k, j]))
        nodes += [helper.make_node("Mul", [mf.NOISE, "w_noise"], ["wn"]), helper.make_node("Add", [last, "wn"], ["a_n"])]
        last = "a_n"
    nodes.append(helper.make_node("Add", [last, "nan_or_zero"], [mf.ACTION]))
    output = helper.make_tensor_value_info(mf.ACTION, TensorProto.FLOAT, [1, k, j])
    graph = helper.make_graph(nodes, "tiny_policy", inputs, [output], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def manifest_for(p: TinyPolicy, sha256: str, file: str = "policy.onnx") -> mf.Manifest:
    j, k, n = len(p.joints), p.chunk_length, p.n_obs_steps
    inputs = [mf.TensorSpec(mf.STATE, [1, n, j])]
    inputs += [mf.TensorSpec(mf.IMAGE_PREFIX + c, [1, n, 3, h, w]) for c, (w, h) in p.cameras.items()]
    if p.noise:
        inputs.append(mf.TensorSpec(mf.NOISE, [1, k, j]))
    graph = mf.GraphSpec(file, sha256, inputs, [mf.TensorSpec(mf.ACTION, [1, k, j])])
    return mf.Manifest(policy=p.policy, robot="so101", joint_names=list(p.joints),
                       cameras=[mf.CameraSpec(c, w, h) for c, (w, h) in p.cameras.items()],
                       chunk_length=k, n_obs_steps=n, control_period_s=p.control_period_s,
                       graphs={"policy": graph}, normalization=p.norms(), created_by="tests")


def write_model(folder: Path, p: TinyPolicy | None = None) -> Path:
    """A complete model folder: policy.onnx and a manifest.json that pins its sha256."""
    p = p or TinyPolicy()
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(build_graph(p), str(folder / "policy.onnx"))
    manifest_for(p, mf.sha256_of(folder / "policy.onnx")).save(folder)
    return folder


def edit_manifest(folder: Path, **changes: object) -> None:
    """Rewrite top-level manifest keys (the way a hand edit or another tool would)."""
    path = folder / mf.MANIFEST
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def images_for(p: TinyPolicy, value: int | tuple[int, int, int] = 0) -> dict[str, np.ndarray]:
    return {c: np.full((h, w, 3), value, np.uint8) for c, (w, h) in p.cameras.items()}
