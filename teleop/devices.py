"""The common interface of teleoperation input devices.

Every device is a :class:`Teleoperator`: it can say what it produces (``action_features``) before
it is connected, is opened with ``connect()`` (or ``with device:``), and each ``read()`` returns a
:class:`TeleopCommand`. A command carries either absolute joint targets (leader arm, replay) or a
normalised Cartesian twist plus a gripper opening (keyboard, gamepad, SpaceMouse), and the
episode buttons. ``activity()`` is how hard the human is driving right now; the gate uses it to
notice a takeover.

    with Keyboard() as keys:
        while True:
            cmd = keys.read()
            q_target = jog.step(cmd, dt)        # tether.teleop.cartesian.CartesianJog
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Literal

import numpy as np

from tether.errors import DeviceNotConnectedError

BUTTON_NAMES = ("takeover", "handback", "success", "failure", "discard", "rerecord", "mark_recovery")
TWIST_AXES = ("vx", "vy", "vz", "yaw_rate")


@dataclass(frozen=True)
class Buttons:
    """Edge-triggered episode buttons: True in exactly one read() after the press."""

    takeover: bool = False
    handback: bool = False
    success: bool = False
    failure: bool = False
    discard: bool = False
    rerecord: bool = False
    mark_recovery: bool = False

    @classmethod
    def pressed(cls, names: set[str] | frozenset[str]) -> Buttons:
        unknown = sorted(set(names) - set(BUTTON_NAMES))
        if unknown:
            raise ValueError(f"unknown button(s) {', '.join(unknown)}; buttons: {', '.join(BUTTON_NAMES)}")
        return cls(**{name: True for name in names})

    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class TeleopCommand:
    """One read of a device.

    ``twist`` is (vx, vy, vz, yaw_rate) in the robot base frame, each normalised to [-1, 1]
    (full deflection); the Cartesian jog scales it to m/s and rad/s. ``gripper`` is the wanted
    opening in [0, 1] (0 closed, 1 open), None to leave the gripper where it is. ``joints`` is a
    full joint-target vector in the profile's order (gripper included). ``stamp`` is the device
    clock in seconds.
    """

    stamp: float
    joints: np.ndarray | None = None
    twist: np.ndarray | None = None
    gripper: float | None = None
    buttons: Buttons = field(default_factory=Buttons)

    def __post_init__(self) -> None:
        if self.joints is not None and self.twist is not None:
            raise ValueError("a command carries joint targets or a twist, not both")


def twist_features() -> dict[str, type]:
    return {**{f"twist.{axis}": float for axis in TWIST_AXES}, "gripper": float, **_button_features()}


def joint_features(joint_names: list[str]) -> dict[str, type]:
    return {**{f"{name}.pos": float for name in joint_names}, **_button_features()}


def _button_features() -> dict[str, type]:
    return {f"button.{name}": bool for name in BUTTON_NAMES}


class Teleoperator(ABC):
    """A human input device (or a stand-in for one: replay, scripted expert)."""

    name: str = "device"
    kind: Literal["twist", "joints"] = "twist"

    def __init__(self) -> None:
        self._connected = False

    @property
    @abstractmethod
    def action_features(self) -> dict[str, type]:
        """What ``read()`` produces, by name; available without connecting."""

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        """Open the device; raises :class:`~tether.errors.DeviceNotFoundError` when it is absent."""
        if not self._connected:
            self._open()
            self._connected = True

    def disconnect(self) -> None:
        """Release the device; safe to call twice."""
        if self._connected:
            self._connected = False
            self._close()

    def read(self) -> TeleopCommand:
        if not self._connected:
            raise DeviceNotConnectedError(self.name)
        return self._read()

    @abstractmethod
    def activity(self) -> float:
        """How hard the human drives now: 0 idle, about 1 at full deflection (unbounded above)."""

    def __enter__(self) -> Teleoperator:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _read(self) -> TeleopCommand: ...


def twist_activity(twist: np.ndarray | None) -> float:
    """Largest normalised axis deflection."""
    return 0.0 if twist is None else float(np.max(np.abs(twist)))


class TwistTeleoperator(Teleoperator):
    """A device that commands a Cartesian twist; subclasses keep the latest one in ``_last``."""

    kind: Literal["twist", "joints"] = "twist"

    def __init__(self) -> None:
        super().__init__()
        self._last = np.zeros(4)

    @property
    def action_features(self) -> dict[str, type]:
        return twist_features()

    def activity(self) -> float:
        return twist_activity(self._last)
