"""The model folder's contract: ``manifest.json`` beside one or more ``.onnx`` graphs.

A manifest says everything a runtime needs without torch: the graph's input and
output names and shapes, the normalization (kept outside the network), the chunk
length and period, and the joints and cameras the model was trained for. Every
graph file is pinned by its sha256, so a swapped or truncated file is refused.

ONNX I/O convention (both ACT and diffusion):
  inputs   ``observation.state``            float32 [1, n_obs, n_joints]   normalized
           ``observation.images.<camera>``  float32 [1, n_obs, 3, H, W]    normalized (after /255)
           ``noise`` (diffusion only)       float32 [1, chunk_length, n_joints]  standard normal
  output   ``action``                       float32 [1, chunk_length, n_joints]  normalized
Normalization is affine everywhere: ``x_norm = (x - mean) / std``; a min-max scaling
to [-1, 1] is written as mean = (max + min) / 2, std = (max - min) / 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tether.config import from_dict
from tether.errors import ConfigError, ManifestError, ModelMismatchError

FORMAT = "tether-policy"
VERSION = 1
MANIFEST = "manifest.json"
POLICIES = ("act", "diffusion")
QUANTIZATIONS = ("none", "int8-dynamic", "int8-static-qdq", "int8-static-conv")
STATE = "observation.state"
ACTION = "action"
NOISE = "noise"
IMAGE_PREFIX = "observation.images."


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass(frozen=True)
class GraphSpec:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class Normalization:
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class CameraSpec:
    name: str
    width: int
    height: int


@dataclass(frozen=True)
class Manifest:
    policy: str
    robot: str
    joint_names: list[str]
    cameras: list[CameraSpec]
    chunk_length: int
    n_obs_steps: int
    control_period_s: float  # time between consecutive actions of a chunk (the dataset's 1/fps)
    graphs: dict[str, GraphSpec]  # role -> graph; "policy" is the one a runtime runs
    normalization: dict[str, Normalization]  # STATE, ACTION, and "images" (per channel, after /255)
    quantization: str = "none"
    format: str = FORMAT
    version: int = VERSION
    created_by: str = ""  # the command line that made this folder
    extra: dict[str, object] = field(default_factory=dict)  # training config, parity figures, ...

    @property
    def policy_graph(self) -> GraphSpec:
        return self.graphs["policy"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        path.write_text(self.to_json() + "\n")
        return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: Path | str, *, verify: bool = True) -> Manifest:
    """Read and check ``folder/manifest.json``; with ``verify``, every graph's sha256 too."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST}; a model folder holds {MANIFEST} and its .onnx graphs "
                            "(make one with `tether export RUN --out MODEL_DIR`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    try:
        manifest = _graphs_from_dict(data, str(path))
    except ConfigError as exc:
        raise ManifestError(str(exc)) from exc
    _check_fields(manifest, path)
    if verify:
        for role, graph in manifest.graphs.items():
            verify_graph(folder, role, graph)
    return manifest


def _graphs_from_dict(data: object, where: str) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: top level must be an object")
    graphs = data.get("graphs")
    if not isinstance(graphs, dict):
        raise ManifestError(f"{where}: 'graphs' must map a role to a graph")
    norms = data.get("normalization")
    if not isinstance(norms, dict):
        raise ManifestError(f"{where}: 'normalization' must map a feature to its mean and std")
    rest = {k: v for k, v in data.items() if k not in ("graphs", "normalization")}
    manifest = from_dict(Manifest, {**rest, "graphs": {}, "normalization": {}}, where)
    return Manifest(**{**manifest.__dict__,
                       "graphs": {r: from_dict(GraphSpec, g, f"{where}.graphs.{r}") for r, g in graphs.items()},
                       "normalization": {k: from_dict(Normalization, n, f"{where}.normalization.{k}")
                                         for k, n in norms.items()}})


def _check_fields(m: Manifest, path: Path) -> None:
    if m.format != FORMAT or m.version != VERSION:
        raise ManifestError(f"{path}: format {m.format!r} version {m.version}; this runtime reads "
                            f"{FORMAT!r} version {VERSION}")
    if m.policy not in POLICIES:
        raise ManifestError(f"{path}: unknown policy {m.policy!r}; policies: {', '.join(POLICIES)}")
    if m.quantization not in QUANTIZATIONS:
        raise ManifestError(f"{path}: unknown quantization {m.quantization!r}; valid: {', '.join(QUANTIZATIONS)}")
    if "policy" not in m.graphs:
        raise ManifestError(f"{path}: no 'policy' graph; graphs: {', '.join(m.graphs) or '(none)'}")
    for key in (STATE, ACTION, "images"):
        if key not in m.normalization:
            raise ManifestError(f"{path}: normalization lacks {key!r}; it has: {', '.join(m.normalization)}")
    n = len(m.joint_names)
    if n == 0 or len(set(m.joint_names)) != n:
        raise ManifestError(f"{path}: joint_names must name each joint once, got {m.joint_names}")
    for key, size, what in ((STATE, n, "joints"), (ACTION, n, "joints"), ("images", 3, "channels (RGB)")):
        norm = m.normalization[key]
        if len(norm.mean) != size or len(norm.std) != size:
            raise ManifestError(f"{path}: normalization {key!r} has {len(norm.mean)} means and {len(norm.std)} "
                                f"stds for {size} {what}")
        if min(norm.std) <= 0:
            raise ManifestError(f"{path}: normalization {key!r} has a non-positive std")
    names = [c.name for c in m.cameras]
    if len(set(names)) != len(names) or any(c.width <= 0 or c.height <= 0 for c in m.cameras):
        raise ManifestError(f"{path}: cameras must have distinct names and positive sizes, got {m.cameras}")
    if m.chunk_length < 1 or m.n_obs_steps < 1 or m.control_period_s <= 0:
        raise ManifestError(f"{path}: chunk_length, n_obs_steps and control_period_s must be positive")


def verify_graph(folder: Path, role: str, graph: GraphSpec) -> None:
    path = folder / graph.file
    if Path(graph.file).is_absolute() or ".." in Path(graph.file).parts:
        raise ManifestError(f"{folder}: graph '{role}' file {graph.file!r} must be a path inside the model folder")
    if not path.is_file():
        raise ManifestError(f"{folder}: graph '{role}' file {graph.file!r} is missing")
    actual = sha256_of(path)
    if actual != graph.sha256:
        raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {graph.sha256}; "
                            "the file was changed or truncated after export, so it is refused")


def check_matches_profile(m: Manifest, joints: list[str], cameras: dict[str, tuple[int, int]]) -> None:
    """The model must drive exactly the profile's joints, in order, and see cameras it has."""
    if list(m.joint_names) != list(joints):
        raise ModelMismatchError(f"model joints {m.joint_names} do not match the robot's {joints} "
                                 f"(robot '{m.robot}' in the manifest)")
    for cam in m.cameras:
        if cam.name not in cameras:
            raise ModelMismatchError(f"model camera '{cam.name}' is not on the robot; its cameras: "
                                     f"{', '.join(sorted(cameras)) or '(none)'}")
