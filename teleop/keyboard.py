"""Keyboard teleoperation in a terminal: no X server, just the tty.

The terminal is put in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still interrupts)
and polled with ``select``. A terminal sends no key-release events, only repeats of a held key,
so a motion key drives its axis for ``hold_s`` after its last repeat; space stops at once.

    w/s  +x/-x (forward/back)     a/d  +y/-y (left/right)     r/f  +z/-z (up/down)
    q/e  yaw left/right           o/c  gripper open/close (a step per press)   space  stop
    t takeover   g handback (give back)   y success   n failure   x discard   b rerecord
    m mark recovery
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Mapping

import numpy as np

from tether.errors import DeviceNotFoundError
from tether.teleop.devices import TWIST_AXES, Buttons, TeleopCommand, TwistTeleoperator

# key -> (twist axis index, direction)
MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),
    "a": (1, 1.0), "d": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0),
    "q": (3, 1.0), "e": (3, -1.0),
}
BUTTON_KEYS: dict[str, str] = {
    "t": "takeover", "g": "handback", "y": "success", "n": "failure",
    "x": "discard", "b": "rerecord", "m": "mark_recovery",
}
GRIPPER_KEYS: dict[str, float] = {"o": 1.0, "c": -1.0}
STOP_KEY = " "


class KeyState:
    """Turns key presses into a twist, a gripper opening and button edges. No I/O: testable alone."""

    def __init__(self, hold_s: float = 0.3, gripper_step: float = 0.25, gripper: float = 1.0,
                 motion_keys: Mapping[str, tuple[int, float]] = MOTION_KEYS,
                 button_keys: Mapping[str, str] = BUTTON_KEYS) -> None:
        self.hold_s, self.gripper_step = hold_s, gripper_step
        self.gripper = gripper
        self.motion_keys, self.button_keys = motion_keys, button_keys
        self._direction = np.zeros(len(TWIST_AXES))
        self._until = np.full(len(TWIST_AXES), -np.inf)  # each axis moves until this time
        self._pressed: set[str] = set()

    def press(self, key: str, now: float) -> None:
        if key in self.motion_keys:
            axis, sign = self.motion_keys[key]
            self._direction[axis], self._until[axis] = sign, now + self.hold_s
        elif key in GRIPPER_KEYS:
            self.gripper = float(np.clip(self.gripper + GRIPPER_KEYS[key] * self.gripper_step, 0.0, 1.0))
        elif key in self.button_keys:
            self._pressed.add(self.button_keys[key])
        elif key == STOP_KEY:
            self._until[:] = -np.inf

    def twist(self, now: float) -> np.ndarray:
        return np.where(now < self._until, self._direction, 0.0)

    def take_buttons(self) -> Buttons:
        """The buttons pressed since the last call (each reported once)."""
        buttons, self._pressed = Buttons.pressed(frozenset(self._pressed)), set()
        return buttons


class Keyboard(TwistTeleoperator):
    """Keys from a terminal file descriptor (default: stdin). A pty's slave end works too."""

    name = "keyboard"

    def __init__(self, fd: int | None = None, *, hold_s: float = 0.3, gripper_step: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._fd = fd
        self._clock = clock
        self.keys = KeyState(hold_s, gripper_step)
        self._saved: list | None = None  # terminal attributes to restore

    def _open(self) -> None:
        fd = sys.stdin.fileno() if self._fd is None else self._fd
        if not os.isatty(fd):
            raise DeviceNotFoundError(
                "keyboard", f"file descriptor {fd} is not a terminal",
                "run in an interactive terminal (not under a pipe, a service or ros2 launch) or pick another device")
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
        self._fd = fd

    def _close(self) -> None:
        if self._saved is not None and self._fd is not None:
            # Always restore: a terminal left in cbreak mode does not echo what the user types.
            with contextlib.suppress(termios.error):  # unless it has hung up: nothing left to restore
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _read(self) -> TeleopCommand:
        now = self._clock()
        for key in self._pending_keys():
            self.keys.press(key, now)
        self._last = self.keys.twist(now)
        return TeleopCommand(stamp=now, twist=self._last.copy(), gripper=self.keys.gripper,
                             buttons=self.keys.take_buttons())

    def _pending_keys(self) -> str:
        assert self._fd is not None
        chunks = []
        while select.select([self._fd], [], [], 0.0)[0]:
            try:
                data = os.read(self._fd, 256)
            except OSError:
                data = b""
            if not data:  # EOF or EIO: in cbreak mode only a hung-up terminal reads so
                raise DeviceNotFoundError("keyboard", "the terminal hung up (the operator lost control)",
                                          "restart teleoperation in a terminal")
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", errors="ignore")
