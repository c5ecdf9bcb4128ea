"""The human at a device, as the teleop node sees it: takeover, handback, joint targets and events.

No ROS here: the node feeds the measured joints in at its control rate and turns the returned
:class:`OperatorStep` into service calls and messages.

    op = Operator(Keyboard(), profile)
    with op.device:
        while ...:
            step = op.step(q_measured, dt)
            if step.takeover: ...           # ask the gate for control
            if step.target is not None: ... # publish the joint targets

Takeover: the device's ``activity()`` above ``threshold`` or its takeover button. Handback: the
handback button. The handover never jumps: Cartesian devices (keyboard, gamepad, SpaceMouse) go
through :class:`~tether.teleop.cartesian.CartesianJog`, re-``reset`` to the measured joints at each
takeover, and for every device the first target after a takeover is the measured state. The
episode buttons become events (``success``, ``failure``, ``discard``, ``rerecord``, whether or not
the human drives) and ``mark_recovery`` toggles a recovery segment on and off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tether.errors import ConfigError, TetherError
from tether.kinematics import Kinematics
from tether.robot_profile import RobotProfile
from tether.teleop.cartesian import CartesianJog, JogConfig
from tether.teleop.devices import Teleoperator

EVENTS = ("success", "failure", "discard", "rerecord")
HUMAN_DEVICES = ("keyboard", "gamepad", "spacemouse", "leader")


def make_device(device: str, profile: RobotProfile, path: str = "", leader_map: str = "", *,
                keyboard_fd: int | None = None) -> Teleoperator:
    """The named device, not yet connected. ``path``: the gamepad's evdev node or the SpaceMouse's
    hidraw path (default: the first found); ``leader_map``: a YAML file for
    :meth:`LeaderArm.from_config` (default: follower joints take the leader joints of the same name);
    ``keyboard_fd``: the terminal to read (default: stdin)."""
    if device == "keyboard":
        from tether.teleop.keyboard import Keyboard

        return Keyboard(keyboard_fd)
    if device == "gamepad":
        from tether.teleop.gamepad import Gamepad

        return Gamepad(path or None)
    if device == "spacemouse":
        from tether.teleop.spacemouse import SpaceMouse

        return SpaceMouse(path.encode() if path else None)
    if device == "leader":
        from tether.teleop.leader import LeaderArm

        if not leader_map:
            return LeaderArm(profile)
        import yaml

        try:
            config = yaml.safe_load(Path(leader_map).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"leader_map {leader_map}: {err.strerror}") from None
        return LeaderArm.from_config(profile, config)
    raise TetherError(f"unknown teleop device '{device}'; devices: {', '.join(HUMAN_DEVICES)}")


@dataclass(frozen=True)
class OperatorStep:
    target: np.ndarray | None = None  # joint targets (profile order) while the human drives
    takeover: bool = False  # the human took control in this step
    handback: bool = False  # ... or gave it back
    events: list[str] = field(default_factory=list)  # episode events, in EVENTS
    mark_recovery: bool | None = None  # the recovery segment's new state when toggled in this step


class Operator:
    """Arbitration and targets for one device; see the module docstring."""

    def __init__(self, device: Teleoperator, profile: RobotProfile, kinematics: Kinematics | None = None, *,
                 threshold: float = 0.2, jog_config: JogConfig | None = None) -> None:
        if not threshold > 0:
            raise ValueError(f"takeover threshold must be positive, got {threshold}")
        self.device = device
        self.profile = profile
        self.threshold = threshold
        self.jog = CartesianJog(profile, kinematics, jog_config) if device.kind == "twist" else None
        self.driving = False
        self.recovery = False
        self._fresh = False

    def reset(self) -> None:
        """A new episode: the gate is autonomous again, no recovery segment is open."""
        self.driving = False
        self.recovery = False
        self._fresh = False

    def step(self, q_measured: np.ndarray, dt: float) -> OperatorStep:
        """Read the device once; ``q_measured`` in the profile's joint order."""
        q = np.asarray(q_measured, dtype=float)
        cmd = self.device.read()
        buttons = cmd.buttons
        takeover = handback = False
        if not self.driving and (buttons.takeover or self.device.activity() > self.threshold):
            self.driving = takeover = True
            self._fresh = True
            if self.jog is not None:
                self.jog.reset(q)
        elif self.driving and buttons.handback:
            self.driving, handback = False, True
        recovery = None
        if buttons.mark_recovery:
            self.recovery = recovery = not self.recovery
        events = [name for name in EVENTS if getattr(buttons, name)]
        target = None
        if self.driving:
            if self.jog is not None:
                target = self.jog.step(cmd, dt)  # the first step after reset is the measured state
            elif self._fresh or cmd.joints is None:
                target = np.clip(q, self.profile.lower, self.profile.upper)
            else:
                target = np.clip(cmd.joints, self.profile.lower, self.profile.upper)
            self._fresh = False
        return OperatorStep(target, takeover, handback, events, recovery)
