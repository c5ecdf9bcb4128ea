"""3Dconnexion SpaceMouse through hidapi (``/dev/hidraw*``); no spacenavd, no display.

The device sends HID input reports: id 1 translation (x, y, z as little-endian int16; newer
models append the rotation to it), id 2 rotation (rx, ry, rz), id 3 the button bitmask. Raw HID
axes are x right, y toward the user, z down; they are turned into the robot's base frame
(x forward, y left, z up; yaw counter-clockwise seen from above).

    push forward/back -> +x/-x    push left/right -> +y/-y    lift/press -> +z/-z    twist -> yaw
    left button: toggle the gripper (open <-> closed)    right button: takeover

:class:`SpaceMouseState` is the report decoding alone: it needs no device and no hidapi.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tether.errors import DeviceDependencyError, DeviceNotFoundError
from tether.teleop.devices import Buttons, TeleopCommand, TwistTeleoperator

LOGITECH, THREEDCONNEXION = 0x046D, 0x256F
# Logitech-era product ids (SpaceNavigator, SpaceExplorer, SpacePilot Pro, SpaceMouse Pro, ...);
# every 3Dconnexion-vendor device is accepted.
LOGITECH_SPACEMICE = {0xC603, 0xC605, 0xC606, 0xC621, 0xC623, 0xC625, 0xC626, 0xC627, 0xC628, 0xC629, 0xC62B}
FULL_SCALE = 350.0  # raw counts at full deflection on most models
GRIPPER_TOGGLE = "gripper_toggle"
DEFAULT_BUTTONS: dict[int, str] = {0: GRIPPER_TOGGLE, 1: "takeover"}


def is_spacemouse(vendor_id: int, product_id: int) -> bool:
    return vendor_id == THREEDCONNEXION or (vendor_id == LOGITECH and product_id in LOGITECH_SPACEMICE)


class SpaceMouseState:
    """Decodes HID reports into a twist in the robot frame, a gripper opening and button edges."""

    def __init__(self, full_scale: float = FULL_SCALE, dead_zone: float = 0.05,
                 buttons: Mapping[int, str] = DEFAULT_BUTTONS) -> None:
        self.full_scale, self.dead_zone = full_scale, dead_zone
        self.button_names = buttons
        self.translation = np.zeros(3)  # raw HID x, y, z
        self.rotation = np.zeros(3)
        self.gripper = 1.0
        self._held = 0
        self._pressed: set[str] = set()

    def feed(self, report: bytes) -> None:
        if not report:
            return
        report_id, body = report[0], bytes(report[1:])
        if report_id == 1 and len(body) >= 6:
            self.translation = _int16s(body[:6])
            if len(body) >= 12:  # single-report models carry the rotation too
                self.rotation = _int16s(body[6:12])
        elif report_id == 2 and len(body) >= 6:
            self.rotation = _int16s(body[:6])
        elif report_id == 3 and body:
            self._buttons(int.from_bytes(body[:4], "little"))

    def twist(self) -> np.ndarray:
        x, y, z = self.translation / self.full_scale
        rz = self.rotation[2] / self.full_scale
        out = np.clip(np.array([-y, -x, -z, -rz]), -1.0, 1.0)
        return np.where(np.abs(out) < self.dead_zone, 0.0, out)

    def take_buttons(self) -> Buttons:
        buttons, self._pressed = Buttons.pressed(frozenset(self._pressed)), set()
        return buttons

    def _buttons(self, mask: int) -> None:
        new = mask & ~self._held  # edges only: a held button is one press
        self._held = mask
        for bit, name in self.button_names.items():
            if not new >> bit & 1:
                continue
            if name == GRIPPER_TOGGLE:
                self.gripper = 0.0 if self.gripper > 0.5 else 1.0
            else:
                self._pressed.add(name)


class SpaceMouse(TwistTeleoperator):
    name = "spacemouse"

    def __init__(self, path: bytes | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.path = path
        self._clock = clock
        self._device: Any = None
        self.state = SpaceMouseState()

    def _open(self) -> None:
        hid = _import_hid()
        path = self.path or _find_path(hid)
        device = hid.device()
        try:
            device.open_path(path)
        except OSError as err:
            raise DeviceNotFoundError("spacemouse", f"cannot open {path!r} ({err})",
                                      "make /dev/hidraw* readable for this user (a udev rule)") from None
        device.set_nonblocking(1)
        self._device = device

    def _close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None

    def _read(self) -> TeleopCommand:
        while report := self._device.read(64):  # non-blocking: empty when drained
            self.state.feed(bytes(report))
        self._last = self.state.twist()
        return TeleopCommand(stamp=self._clock(), twist=self._last.copy(), gripper=self.state.gripper,
                             buttons=self.state.take_buttons())


def _int16s(data: bytes) -> np.ndarray:
    return np.array(struct.unpack("<3h", data), dtype=float)


def _find_path(hid: Any) -> bytes:
    for info in hid.enumerate():
        if is_spacemouse(info["vendor_id"], info["product_id"]):
            return info["path"]
    raise DeviceNotFoundError(
        "spacemouse", "no 3Dconnexion HID device found (USB vendor 046d or 256f)",
        "plug it in, and make /dev/hidraw* readable for this user (a udev rule)")


def _import_hid() -> Any:
    try:
        import hid
    except ImportError:
        raise DeviceDependencyError("spacemouse", "hidapi") from None
    return hid
