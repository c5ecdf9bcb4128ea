"""Gamepad teleoperation through Linux evdev (``/dev/input/event*``); no display needed.

Default mapping (an Xbox-style pad as the kernel's xpad / hid drivers report it):

    left stick    forward/back -> +x/-x, left/right -> +y/-y
    right stick   up/down -> +z/-z, left/right -> yaw left/right
    right trigger squeeze to close the gripper (released: open)
    RB takeover   LB handback   A success   B failure   X discard   Y rerecord   Back/Select mark recovery

:class:`PadState` is the mapping alone (events in, command out): it needs no device and no evdev.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.errors import DeviceDependencyError, DeviceNotFoundError
from tether.teleop.devices import Buttons, TeleopCommand, TwistTeleoperator

# Event types and codes from linux/input-event-codes.h (what evdev.ecodes also exports).
EV_SYN, EV_KEY, EV_ABS = 0x00, 0x01, 0x03
ABS_X, ABS_Y, ABS_Z, ABS_RX, ABS_RY, ABS_RZ = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
BTN_SOUTH, BTN_EAST, BTN_NORTH, BTN_WEST = 0x130, 0x131, 0x133, 0x134
BTN_TL, BTN_TR, BTN_SELECT, BTN_START = 0x136, 0x137, 0x13A, 0x13B


@dataclass(frozen=True)
class AxisRange:
    """An absolute axis' raw range and dead zone (evdev's AbsInfo min, max, flat)."""

    min: int
    max: int
    flat: int = 0

    def normalise(self, value: int, centred: bool) -> float:
        """Sticks to [-1, 1] (dead zone around the centre), triggers to [0, 1]."""
        if not centred:
            return float(np.clip((value - self.min) / (self.max - self.min), 0.0, 1.0))
        centre, half = (self.max + self.min) / 2.0, (self.max - self.min) / 2.0
        offset = value - centre
        if abs(offset) <= self.flat:
            return 0.0
        # Rescale past the dead zone so a small push beyond it starts from 0, not from a jump.
        scaled = (abs(offset) - self.flat) / (half - self.flat)
        return float(np.sign(offset) * min(scaled, 1.0))


# twist axis index -> (ABS code, sign): the kernel's stick y axes grow downward/backward.
STICKS: dict[int, tuple[int, float]] = {0: (ABS_Y, -1.0), 1: (ABS_X, -1.0), 2: (ABS_RY, -1.0), 3: (ABS_RX, -1.0)}
GRIPPER_TRIGGER = ABS_RZ
BUTTON_CODES: dict[int, str] = {
    BTN_TR: "takeover", BTN_TL: "handback", BTN_SOUTH: "success", BTN_EAST: "failure",
    BTN_NORTH: "discard", BTN_WEST: "rerecord", BTN_SELECT: "mark_recovery",
}
DEFAULT_RANGES: dict[int, AxisRange] = {  # an Xbox pad's ranges, used when the device gives none
    **{code: AxisRange(-32768, 32767, 4000) for code in (ABS_X, ABS_Y, ABS_RX, ABS_RY)},
    ABS_Z: AxisRange(0, 1023), ABS_RZ: AxisRange(0, 1023),
}


class PadState:
    """Folds evdev events (type, code, value) into a twist, a gripper opening and button edges."""

    def __init__(self, ranges: Mapping[int, AxisRange] | None = None,
                 sticks: Mapping[int, tuple[int, float]] = STICKS,
                 buttons: Mapping[int, str] = BUTTON_CODES, gripper_trigger: int = GRIPPER_TRIGGER) -> None:
        self.ranges = {**DEFAULT_RANGES, **(ranges or {})}
        self.sticks, self.button_codes, self.trigger = sticks, buttons, gripper_trigger
        self._raw: dict[int, int] = {}
        self._pressed: set[str] = set()

    def feed(self, ev_type: int, code: int, value: int) -> None:
        if ev_type == EV_ABS:
            self._raw[code] = value
        elif ev_type == EV_KEY and value == 1 and code in self.button_codes:  # 1 press, 0 release, 2 repeat
            self._pressed.add(self.button_codes[code])

    def twist(self) -> np.ndarray:
        out = np.zeros(4)
        for axis, (code, sign) in self.sticks.items():
            if code in self._raw:
                out[axis] = sign * self.ranges[code].normalise(self._raw[code], centred=True)
        return out

    def gripper(self) -> float:
        squeeze = self.ranges[self.trigger].normalise(self._raw.get(self.trigger, self.ranges[self.trigger].min),
                                                      centred=False)
        return 1.0 - squeeze

    def take_buttons(self) -> Buttons:
        buttons, self._pressed = Buttons.pressed(frozenset(self._pressed)), set()
        return buttons


class Gamepad(TwistTeleoperator):
    """The first evdev device with sticks and a south button, or the one at ``path``."""

    name = "gamepad"

    def __init__(self, path: str | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.path = path
        self._clock = clock
        self._device: Any = None
        self.state = PadState()

    def _open(self) -> None:
        evdev = _import_evdev()
        device = evdev.InputDevice(self.path) if self.path else _find_pad(evdev)
        ranges = {code: AxisRange(info.min, info.max, info.flat)
                  for code, info in device.capabilities().get(EV_ABS, [])}
        self.state = PadState(ranges)
        self._device = device

    def _close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None

    def _read(self) -> TeleopCommand:
        try:
            for event in self._device.read():
                self.state.feed(event.type, event.code, event.value)
        except BlockingIOError:  # no events since the last read
            pass
        self._last = self.state.twist()
        return TeleopCommand(stamp=self._clock(), twist=self._last.copy(), gripper=self.state.gripper(),
                             buttons=self.state.take_buttons())


def is_gamepad(capabilities: Mapping[int, list[Any]]) -> bool:
    """Sticks (ABS_X, ABS_Y) and a face button: keyboards, mice and touchpads fail this."""
    abs_codes = {item[0] if isinstance(item, tuple) else item for item in capabilities.get(EV_ABS, [])}
    return {ABS_X, ABS_Y} <= abs_codes and BTN_SOUTH in capabilities.get(EV_KEY, [])


def _find_pad(evdev: Any) -> Any:
    paths = evdev.list_devices()
    for path in paths:
        device = evdev.InputDevice(path)
        if is_gamepad(device.capabilities()):
            return device
        device.close()
    seen = f"{len(paths)} other input device(s)" if paths else "no readable /dev/input/event* nodes"
    raise DeviceNotFoundError(
        "gamepad", f"no evdev gamepad found ({seen})",
        "plug one in, and make /dev/input/event* readable (add the user to the 'input' group)")


def _import_evdev() -> Any:
    try:
        import evdev
    except ImportError:
        raise DeviceDependencyError("gamepad", "evdev") from None
    return evdev
