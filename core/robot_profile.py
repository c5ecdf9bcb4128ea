"""Robot profiles: one YAML per robot in ``config/robots/``.

A profile names the URDF (found offline, inside an installed package), the
controlled joints and their limits, the servo model, the cameras and the
command topic. It can be described without connecting to anything.
"""

from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar
from pathlib import Path

import numpy as np

from tether.config import from_dict, load_yaml
from tether.errors import (
    CameraPoseError,
    ConfigError,
    MissingJointError,
    ProfileNotFoundError,
    UnknownCameraError,
    UnknownJointError,
    URDFNotFoundError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = Path(os.environ.get("TETHER_CONFIG_DIR", REPO_ROOT / "config")) / "robots"


@dataclass(frozen=True)
class JointSpec:
    name: str
    lower: float
    upper: float
    max_velocity: float
    max_acceleration: float
    home: float = 0.0


@dataclass(frozen=True)
class ServoSpec:
    """Position-servo model for the twin (defaults are an STS3215 at 12 V)."""

    kp: float = 8.0
    kv: float = 0.4
    force_limit: float = 2.9
    armature: float = 0.01
    damping: float = 0.1
    frictionloss: float = 0.02


@dataclass(frozen=True)
class GripperSpec:
    joint: str
    open: float
    closed: float
    kp: float = 6.0
    force_limit: float = 2.9


@dataclass(frozen=True)
class CameraSpec:
    """A camera attached to ``parent`` ('world' or a URDF link).

    The pose is ``pos`` plus exactly one of ``look_at`` (a point in the parent
    frame, with ``up``) or ``quat`` (w, x, y, z; MuJoCo's camera looks down -z).
    """

    config_error: ClassVar[type[ConfigError]] = CameraPoseError

    name: str
    parent: str
    pos: list[float]
    width: int
    height: int
    fps: float
    fovy: float = 60.0
    look_at: list[float] | None = None
    up: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    quat: list[float] | None = None

    def __post_init__(self) -> None:
        where = f"camera '{self.name}'"
        _vector(self.pos, 3, f"{where}.pos")
        if (self.look_at is None) == (self.quat is None):
            raise CameraPoseError(f"{where}: give exactly one of 'look_at' or 'quat'")
        if self.look_at is not None:
            target = _vector(self.look_at, 3, f"{where}.look_at")
            if np.linalg.norm(target - np.asarray(self.pos, float)) < 1e-9:
                raise CameraPoseError(f"{where}: look_at equals pos")
            _vector(self.up, 3, f"{where}.up")
        if self.quat is not None:
            q = _vector(self.quat, 4, f"{where}.quat")
            if abs(np.linalg.norm(q) - 1.0) > 1e-3:
                raise CameraPoseError(f"{where}.quat: not a unit quaternion (norm {np.linalg.norm(q):.4f})")
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise CameraPoseError(f"{where}: width, height and fps must be positive")

    def orientation(self) -> np.ndarray:
        """Unit quaternion (w, x, y, z) of the camera frame in its parent."""
        if self.quat is not None:
            return np.asarray(self.quat, float) / np.linalg.norm(self.quat)
        assert self.look_at is not None
        forward = np.asarray(self.look_at, float) - np.asarray(self.pos, float)
        z = -forward / np.linalg.norm(forward)
        x = np.cross(np.asarray(self.up, float), z)
        if np.linalg.norm(x) < 1e-9:
            raise CameraPoseError(f"camera '{self.name}': 'up' is parallel to the view direction")
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        return _matrix_to_quat(np.column_stack([x, y, z]))


@dataclass(frozen=True)
class ChunkLimits:
    """What the gate accepts from an action source; a chunk is one JointTrajectory.

    Each bound turns a malformed or hostile stream into refusals with a reason, never into
    work that starves the command stream: a chunk's length and duration bound what one chunk
    costs, the stamp bounds refuse actions computed from stale (or future) observations, and the
    rate bound drops a flood per source before it is even decoded.
    """

    max_points: int = 200  # an ACT chunk is 100 points at 30 Hz, a diffusion horizon 16
    max_duration: float = 10.0  # s from the stamp to the last point
    max_age: float = 0.5  # s the stamp (the observation's capture time) may lie in the past
    max_lead: float = 0.5  # s it may lie in the future
    max_rate_hz: float = 100.0  # chunks a second from one source (sources send 10-30; a flood is cut here)

    def __post_init__(self) -> None:
        for name in ("max_points", "max_duration", "max_age", "max_lead", "max_rate_hz"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"chunks.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class RobotProfile:
    name: str
    urdf: str
    ee_frame: str
    joints: list[JointSpec]
    command_topic: str
    cameras: list[CameraSpec] = field(default_factory=list)
    gripper: GripperSpec | None = None
    servo: ServoSpec = field(default_factory=ServoSpec)
    base_pos: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    joint_states_topic: str = "joint_states"
    chunks: ChunkLimits = field(default_factory=ChunkLimits)
    source_path: str = ""

    @cached_property
    def joint_names(self) -> list[str]:
        # Cached: the gate and the twin read it for every message (a new list each time cost them
        # a third of their chunk validation).
        return [j.name for j in self.joints]

    @property
    def arm_joint_names(self) -> list[str]:
        grip = self.gripper.joint if self.gripper else None
        return [j.name for j in self.joints if j.name != grip]

    @cached_property
    def lower(self) -> np.ndarray:
        return _frozen([j.lower for j in self.joints])

    @cached_property
    def upper(self) -> np.ndarray:
        return _frozen([j.upper for j in self.joints])

    @cached_property
    def max_velocity(self) -> np.ndarray:
        return _frozen([j.max_velocity for j in self.joints])

    @cached_property
    def max_acceleration(self) -> np.ndarray:
        return _frozen([j.max_acceleration for j in self.joints])

    @cached_property
    def home(self) -> np.ndarray:
        return _frozen([j.home for j in self.joints])

    def joint_index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise UnknownJointError(f"robot '{self.name}'", name, self.joint_names) from None

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise UnknownCameraError(name, [c.name for c in self.cameras])

    @cached_property
    def urdf_path(self) -> Path:
        return resolve_urdf(self.urdf)

    def urdf_text(self) -> str:
        """URDF with ``package://`` mesh URIs rewritten to absolute paths."""
        return rewrite_package_uris(self.urdf_path.read_text())


def _frozen(values: list[float]) -> np.ndarray:
    """A read-only array: cached on the profile, so nobody may change it in place."""
    arr = np.array(values, dtype=float)
    arr.setflags(write=False)
    return arr


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> RobotProfile:
    """Load a profile by name (``so101``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ProfileNotFoundError(str(name_or_path), available_profiles())
    elif not path.exists():
        raise ConfigError(f"profile file {path} does not exist")
    data = load_yaml(path)
    data.setdefault("source_path", str(path))
    try:
        profile = from_dict(RobotProfile, data, path.name)
    except TypeError as exc:
        raise ConfigError(f"{path.name}: {exc}") from exc
    _check_against_urdf(profile)
    return profile


def _check_against_urdf(profile: RobotProfile) -> None:
    where = f"{profile.name}.yaml"
    urdf_joints = urdf_joint_names(profile.urdf_path)
    for joint in profile.joints:
        if joint.name not in urdf_joints:
            raise MissingJointError(where, joint.name, urdf_joints)
        if not joint.lower < joint.upper:
            raise ConfigError(f"{where}: joint '{joint.name}' has lower {joint.lower} >= upper {joint.upper}")
        if not joint.lower <= joint.home <= joint.upper:
            raise ConfigError(f"{where}: joint '{joint.name}' home {joint.home} outside [{joint.lower}, {joint.upper}]")
    if profile.gripper and profile.gripper.joint not in profile.joint_names:
        raise UnknownJointError(f"{where}: gripper", profile.gripper.joint, profile.joint_names)
    links = urdf_link_names(profile.urdf_path)
    for cam in profile.cameras:
        if cam.parent != "world" and cam.parent not in links:
            raise CameraPoseError(f"{where}: camera '{cam.name}' parent '{cam.parent}' is not 'world' or a URDF link")
    if profile.ee_frame not in links:
        raise ConfigError(f"{where}: ee_frame '{profile.ee_frame}' is not a URDF link")


def urdf_joint_names(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [j.get("name", "") for j in root.findall("joint") if j.get("type") != "fixed"]


def urdf_link_names(path: Path) -> list[str]:
    return [link.get("name", "") for link in ET.parse(path).getroot().findall("link")]


def package_share_dirs(package: str) -> list[Path]:
    """Where an installed package's share/ folder may live: cmeel wheels, then ROS prefixes."""
    candidates = [Path(p) / "cmeel.prefix" / "share" / package for p in sys.path if p]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / package)
    seen: list[Path] = []
    for c in candidates:
        if c not in seen:
            seen.append(c)
    return seen


def resolve_urdf(source: str) -> Path:
    """Resolve ``<package>:<path inside share/package>`` or a file path to an existing URDF."""
    searched: list[str] = []
    if ":" in source and not source.startswith("/"):
        package, rel = source.split(":", 1)
        for share in package_share_dirs(package):
            candidate = share / rel
            searched.append(str(candidate))
            if candidate.is_file():
                return candidate
        raise URDFNotFoundError(source, searched)
    path = Path(source)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if path.is_file():
        return path
    raise URDFNotFoundError(source, [str(path)])


_PACKAGE_URI = re.compile(r"package://([^/\"']+)/")


def rewrite_package_uris(urdf: str) -> str:
    def replace(match: re.Match[str]) -> str:
        package = match.group(1)
        for share in package_share_dirs(package):
            if share.is_dir():
                return f"{share}/"
        raise URDFNotFoundError(f"package://{package}", [str(s) for s in package_share_dirs(package)])

    return _PACKAGE_URI.sub(replace, urdf)


def _vector(value: object, n: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise CameraPoseError(f"{where}: expected {n} numbers, got {value!r}") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise CameraPoseError(f"{where}: expected {n} finite numbers, got {value!r}")
    return arr


def _matrix_to_quat(r: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)
