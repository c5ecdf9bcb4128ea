"""Typed exceptions. Every tether error derives from :class:`TetherError`."""

from __future__ import annotations

from collections.abc import Iterable


class TetherError(Exception):
    """Root of all tether errors."""


def _choices(valid: Iterable[str]) -> str:
    return ", ".join(sorted(valid)) or "(none)"


class ConfigError(TetherError):
    """A config or profile file is malformed."""


class UnknownKeyError(ConfigError):
    def __init__(self, where: str, key: str, valid: Iterable[str]) -> None:
        super().__init__(f"{where}: unknown key '{key}'; valid keys: {_choices(valid)}")
        self.key = key


class MissingKeyError(ConfigError):
    def __init__(self, where: str, key: str) -> None:
        super().__init__(f"{where}: missing required key '{key}'")
        self.key = key


class ProfileNotFoundError(ConfigError):
    def __init__(self, name: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown robot profile '{name}'; available: {_choices(valid)}")


class UnknownJointError(TetherError):
    def __init__(self, where: str, joint: str, valid: Iterable[str]) -> None:
        super().__init__(f"{where}: unknown joint '{joint}'; valid joints: {', '.join(valid)}")
        self.joint = joint


class MissingJointError(ConfigError):
    def __init__(self, where: str, joint: str, valid: Iterable[str]) -> None:
        super().__init__(f"{where}: joint '{joint}' is not in the URDF; URDF joints: {', '.join(valid)}")
        self.joint = joint


class URDFNotFoundError(ConfigError):
    def __init__(self, source: str, searched: Iterable[str]) -> None:
        places = "\n  ".join(searched) or "(nowhere)"
        super().__init__(f"URDF '{source}' not found; searched:\n  {places}")


class CameraPoseError(ConfigError):
    """A camera pose in a profile does not parse."""


class UnknownCameraError(TetherError):
    def __init__(self, camera: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown camera '{camera}'; cameras: {_choices(valid)}")


class UnknownTaskError(TetherError):
    def __init__(self, task: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown task '{task}'; tasks: {_choices(valid)}")


class RenderingUnavailableError(TetherError):
    """No offscreen OpenGL context (EGL or OSMesa) could be created."""


class IKError(TetherError):
    """Inverse kinematics did not converge."""


class UnknownFrameError(TetherError):
    def __init__(self, robot: str, frame: str, valid: Iterable[str]) -> None:
        super().__init__(f"robot '{robot}': unknown frame '{frame}'; valid frames: {', '.join(valid)}")
        self.frame = frame


class JointVectorError(TetherError, ValueError):
    """A joint vector has the wrong length for the robot."""

    def __init__(self, robot: str, shape: tuple[int, ...], joints: list[str]) -> None:
        super().__init__(
            f"robot '{robot}': expected a joint vector of {len(joints)} values "
            f"({', '.join(joints)}), got shape {shape}"
        )


class NoTaskError(TetherError):
    """Task-only information (object pose, target) was asked of a twin built with task=None."""

    def __init__(self, valid: Iterable[str]) -> None:
        super().__init__(f"this twin has no task (task=None), so it has no object or target; tasks: {_choices(valid)}")


class DatasetError(TetherError):
    """A dataset on disk or a call to the dataset writer is not usable as given."""


class DatasetFrameError(DatasetError, ValueError):
    """A frame handed to the dataset writer is malformed; nothing was written."""

    def __init__(self, field: str, got: object, expected: str) -> None:
        super().__init__(f"frame field '{field}': got {got}; expected {expected}")
        self.field = field


class EpisodeStateError(DatasetError):
    """A writer call came in the wrong order (e.g. add_frame with no episode begun)."""

    def __init__(self, call: str, state: str, needed: str) -> None:
        super().__init__(f"{call}: the writer is {state}; {needed}")


class DatasetLayoutError(DatasetError):
    """A dataset folder is missing, already exists, or is not a LeRobot v3.0 dataset."""


class DeviceError(TetherError):
    """A teleoperation input device cannot be used as asked."""


class DeviceNotFoundError(DeviceError):
    """The device (or the library that drives it) is not there; the message says how to fix it."""

    def __init__(self, device: str, missing: str, fix: str) -> None:
        super().__init__(f"{device}: {missing}; {fix}")
        self.device = device


class DeviceDependencyError(DeviceNotFoundError):
    """The Python package that drives the device is not installed."""

    def __init__(self, device: str, package: str) -> None:
        super().__init__(device, f"the Python package '{package}' is not installed",
                         f"pip install '{package}' (or: pip install -e '.[hardware]')")
        self.package = package


class DeviceNotConnectedError(DeviceError):
    def __init__(self, device: str) -> None:
        super().__init__(f"{device}: not connected; call connect() first (or use it as a context manager)")


class LeaderJointError(DeviceError):
    """A leader arm's joint state lacks a joint the mapping needs."""

    def __init__(self, missing: list[str], got: Iterable[str]) -> None:
        super().__init__(f"leader joint state lacks {', '.join(missing)}; it has: {_choices(got)}")
        self.missing = missing


class ReplayError(TetherError):
    """A recorded episode cannot be replayed (missing columns, empty, bad shapes)."""


class McapLogError(TetherError):
    """A raw MCAP log call was not possible (unknown topic or type, log closed, path taken)."""


class PolicyError(TetherError):
    """A policy model (manifest, ONNX graph or its output) cannot be used as given."""


class ManifestError(PolicyError):
    """A model folder's manifest is missing, malformed, or does not match its files."""


class ModelMismatchError(PolicyError):
    """A model was trained for other joints or cameras than the robot profile has."""


class PolicyOutputError(PolicyError):
    """The model produced an action that must not reach the robot (NaN, inf, wrong shape)."""


class WriterProcessError(DatasetError):
    """The dataset writer's worker process died, failed or stopped answering; recording cannot go on."""


class DiskFullError(DatasetError):
    """The disk holding a dataset filled up; what was flushed before it stays for ``tether dataset recover``."""

    def __init__(self, root: object, doing: str, reason: str = "No space left on device") -> None:
        super().__init__(f"the disk holding {root} is full ({reason}) while {doing}; free space, then run "
                         f"`tether dataset recover {root}`")
        self.root, self.doing, self.reason = root, doing, reason

    def __reduce__(self) -> tuple[type, tuple[object, str, str]]:  # crosses the writer process's pipe
        return type(self), (self.root, self.doing, self.reason)


class WriterDiskFullError(DiskFullError, WriterProcessError):
    """The dataset writer process stopped because the disk holding the dataset is full."""
