"""Teleoperation devices: the keyboard through a real pty; gamepad and SpaceMouse mappings on the
events their drivers send (and through a uinput virtual pad where /dev/uinput exists); the leader
arm mapping; replay of a recorded episode and the scripted expert."""

from __future__ import annotations

import os
import struct
import termios

import numpy as np
import pytest

from tether.errors import (
    DeviceError,
    DeviceNotConnectedError,
    DeviceNotFoundError,
    LeaderJointError,
    ReplayError,
    UnknownJointError,
    UnknownKeyError,
)
from tether.teleop import gamepad as gp
from tether.teleop.devices import BUTTON_NAMES, Buttons, TeleopCommand
from tether.teleop.gamepad import AxisRange, Gamepad, PadState
from tether.teleop.keyboard import Keyboard
from tether.teleop.leader import JointMap, LeaderArm
from tether.teleop.replay import ExpertTeleop, Replay
from tether.teleop.spacemouse import SpaceMouse, SpaceMouseState, is_spacemouse


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


# ---------------------------------------------------------------- common interface

def test_features_are_known_before_connecting(so101) -> None:
    keys = Keyboard(fd=-1)  # an fd that could never open: features need no device
    assert not keys.is_connected
    assert {"twist.vx", "twist.yaw_rate", "gripper", "button.takeover"} <= set(keys.action_features)
    leader = LeaderArm(so101)
    assert list(leader.action_features)[:6] == [f"{name}.pos" for name in so101.joint_names]
    assert {f"button.{name}" for name in BUTTON_NAMES} <= set(leader.action_features)


def test_read_before_connect_is_a_typed_error() -> None:
    with pytest.raises(DeviceNotConnectedError, match="keyboard: not connected"):
        Keyboard(fd=0).read()


def test_command_holds_joints_or_twist_not_both() -> None:
    with pytest.raises(ValueError):
        TeleopCommand(stamp=0.0, joints=np.zeros(6), twist=np.zeros(4))
    assert Buttons.pressed({"success"}).names() == ["success"]


# ---------------------------------------------------------------- keyboard (real pty)

def test_keyboard_jogs_from_a_terminal(pty_pair) -> None:
    master, slave = pty_pair
    clock = FakeClock()
    before = termios.tcgetattr(slave)
    with Keyboard(fd=slave, hold_s=0.3, clock=clock) as keys:
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # keys arrive one at a time
        assert keys.read().twist.tolist() == [0, 0, 0, 0] and keys.activity() == 0.0

        os.write(master, b"wq")  # forward and yaw left
        cmd = keys.read()
        assert cmd.twist.tolist() == [1.0, 0.0, 0.0, 1.0]
        assert keys.activity() == 1.0

        clock.t += 0.2  # the terminal's key repeat keeps an axis alive ...
        os.write(master, b"w")
        clock.t += 0.2
        assert keys.read().twist[0] == 1.0 and keys.read().twist[3] == 0.0  # ... a released key stops
        clock.t += 0.31
        assert keys.read().twist[0] == 0.0

        os.write(master, b"rd ")  # up and right, then space: stop now
        assert keys.read().twist.tolist() == [0, 0, 0, 0]
    assert termios.tcgetattr(slave) == before  # the terminal is given back as it was


def test_keyboard_gripper_and_buttons(pty_pair) -> None:
    master, slave = pty_pair
    with Keyboard(fd=slave, gripper_step=0.25) as keys:
        assert keys.read().gripper == 1.0  # starts open
        os.write(master, b"cc")
        assert keys.read().gripper == 0.5
        os.write(master, b"tym")
        assert set(keys.read().buttons.names()) == {"takeover", "success", "mark_recovery"}
        assert not keys.read().buttons.any()  # a press is reported once
        os.write(master, b"gnxb")
        assert set(keys.read().buttons.names()) == {"handback", "failure", "discard", "rerecord"}


def test_keyboard_reports_a_hung_up_terminal() -> None:
    master, slave = os.openpty()
    keys = Keyboard(fd=slave)
    keys.connect()
    os.close(master)  # the operator's terminal goes away
    with pytest.raises(DeviceNotFoundError, match="keyboard: the terminal hung up"):
        keys.read()
    keys.disconnect()  # nothing to restore, and no error
    os.close(slave)


def test_keyboard_without_a_terminal_says_so() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(DeviceNotFoundError, match=f"keyboard: file descriptor {read_end} is not a terminal"):
            Keyboard(fd=read_end).connect()
    finally:
        os.close(read_end)
        os.close(write_end)


# ---------------------------------------------------------------- gamepad

def test_event_codes_match_evdev() -> None:
    ecodes = pytest.importorskip("evdev").ecodes
    for name in ("EV_KEY", "EV_ABS", "ABS_X", "ABS_Y", "ABS_RX", "ABS_RY", "ABS_RZ", "BTN_SOUTH", "BTN_EAST",
                 "BTN_NORTH", "BTN_WEST", "BTN_TL", "BTN_TR", "BTN_SELECT"):
        assert getattr(gp, name) == getattr(ecodes, name), name


def test_stick_dead_zone_and_scaling() -> None:
    stick = AxisRange(-32768, 32767, flat=4000)
    assert stick.normalise(-1, centred=True) == 0.0 and stick.normalise(3000, centred=True) == 0.0
    assert stick.normalise(32767, centred=True) == pytest.approx(1.0)
    assert stick.normalise(-32768, centred=True) == pytest.approx(-1.0)
    assert 0.0 < stick.normalise(5000, centred=True) < 0.05  # no jump just past the dead zone
    assert AxisRange(0, 1023).normalise(1023, centred=False) == 1.0


def test_pad_maps_sticks_trigger_and_buttons() -> None:
    pad = PadState()
    pad.feed(gp.EV_ABS, gp.ABS_Y, -32768)  # left stick pushed away from the user
    pad.feed(gp.EV_ABS, gp.ABS_X, 32767)  # ... and right
    pad.feed(gp.EV_ABS, gp.ABS_RY, -32768)  # right stick up
    pad.feed(gp.EV_ABS, gp.ABS_RZ, 1023)  # right trigger squeezed fully
    np.testing.assert_allclose(pad.twist(), [1.0, -1.0, 1.0, 0.0], atol=1e-4)
    assert pad.gripper() == 0.0
    pad.feed(gp.EV_KEY, gp.BTN_TR, 1)
    pad.feed(gp.EV_KEY, gp.BTN_TR, 0)  # release: no second press
    pad.feed(gp.EV_KEY, gp.BTN_SOUTH, 2)  # autorepeat: not a press
    assert pad.take_buttons().names() == ["takeover"]
    assert not pad.take_buttons().any()


def test_gamepad_absent_is_a_clear_error() -> None:
    # evdev installed: no pad under /dev/input; not installed: which package to install.
    with pytest.raises(DeviceError, match=r"^gamepad: .*(no evdev gamepad found|pip install 'evdev')"):
        Gamepad().connect()


def _uinput_usable() -> bool:
    try:
        os.close(os.open("/dev/uinput", os.O_WRONLY))  # no O_CREAT: a missing node stays missing
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _uinput_usable(), reason="/dev/uinput is missing or not writable: no virtual pad")
def test_gamepad_reads_a_uinput_virtual_pad() -> None:
    evdev = pytest.importorskip("evdev")
    e = evdev.ecodes
    stick = evdev.AbsInfo(value=0, min=-32768, max=32767, fuzz=0, flat=4000, resolution=0)
    trigger = evdev.AbsInfo(value=0, min=0, max=1023, fuzz=0, flat=0, resolution=0)
    caps = {e.EV_KEY: [e.BTN_SOUTH, e.BTN_TR, e.BTN_TL],
            e.EV_ABS: [(e.ABS_X, stick), (e.ABS_Y, stick), (e.ABS_RX, stick), (e.ABS_RY, stick),
                       (e.ABS_RZ, trigger)]}
    with evdev.UInput(caps, name="tether-test-pad") as ui:
        with Gamepad(path=ui.device.path) as pad:
            ui.write(e.EV_ABS, e.ABS_Y, -32768)
            ui.write(e.EV_KEY, e.BTN_TR, 1)
            ui.syn()
            import time
            time.sleep(0.05)
            cmd = pad.read()
            assert cmd.twist[0] == pytest.approx(1.0, abs=1e-3)
            assert cmd.buttons.takeover


# ---------------------------------------------------------------- SpaceMouse

def _report(report_id: int, *values: int) -> bytes:
    return bytes([report_id]) + struct.pack(f"<{len(values)}h", *values)


def test_spacemouse_reports_to_robot_twist() -> None:
    mouse = SpaceMouseState(full_scale=350)
    mouse.feed(_report(1, 0, -350, 0))  # pushed forward (raw y points at the user)
    mouse.feed(_report(2, 0, 0, -175))  # twisted counter-clockwise, half way
    np.testing.assert_allclose(mouse.twist(), [1.0, 0.0, 0.0, 0.5])
    mouse.feed(_report(1, 350, 0, -350, 0, 0, 10))  # single-report models: right, lifted; tiny twist
    np.testing.assert_allclose(mouse.twist(), [0.0, -1.0, 1.0, 0.0])  # 10/350 is in the dead zone


def test_spacemouse_buttons_toggle_gripper_and_take_over() -> None:
    mouse = SpaceMouseState()
    mouse.feed(bytes([3, 0b01, 0]))  # left button
    assert mouse.gripper == 0.0
    mouse.feed(bytes([3, 0b01, 0]))  # still held: no second toggle
    mouse.feed(bytes([3, 0b00, 0]))
    mouse.feed(bytes([3, 0b11, 0]))  # both
    assert mouse.gripper == 1.0 and mouse.take_buttons().names() == ["takeover"]


def test_spacemouse_vendor_ids() -> None:
    assert is_spacemouse(0x256F, 0xC635)  # SpaceMouse Compact
    assert is_spacemouse(0x046D, 0xC626)  # SpaceNavigator
    assert not is_spacemouse(0x046D, 0xC52B)  # a Logitech receiver


def test_spacemouse_absent_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match=r"^spacemouse: .*(no 3Dconnexion HID device|pip install 'hidapi')"):
        SpaceMouse().connect()


# ---------------------------------------------------------------- leader arm

def test_leader_maps_names_offsets_and_scales(so101) -> None:
    clock = FakeClock()
    config = {"joints": {"gripper": {"leader": "jaw", "offset": 0.1, "scale": -1.0}}}
    leader = LeaderArm.from_config(so101, config)
    leader._clock = clock
    with leader:
        assert leader.read().joints is None  # nothing heard yet
        names = ["jaw", *so101.arm_joint_names[::-1]]  # any order, extra names ignored
        positions = [-0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
        target = leader.update([*names, "unused"], [*positions, 9.0], stamp=1.0)
        np.testing.assert_allclose(target, [0.05, 0.1, 0.2, 0.3, 0.4, 0.6])
        np.testing.assert_allclose(leader.read().joints, target)
        assert leader.activity() == 0.0  # one state: no speed yet
        leader.update(names, [-0.5, 0.4, 0.3, 0.2, 0.1, 0.15], stamp=1.1)  # pan moved 0.1 rad in 0.1 s
        assert leader.activity() == pytest.approx(1.0)


def test_leader_clips_to_follower_limits(so101) -> None:
    leader = LeaderArm(so101, {"shoulder_pan": JointMap("shoulder_pan", scale=10.0)})
    target = leader.update(so101.joint_names, [1.0] * 6, stamp=0.0)
    assert target[0] == so101.upper[0]


def test_leader_errors_name_the_joints(so101) -> None:
    with pytest.raises(UnknownJointError, match="unknown joint 'elbow'; valid joints: shoulder_pan"):
        LeaderArm(so101, {"elbow": JointMap("elbow")})
    with pytest.raises(UnknownKeyError, match="unknown key 'gain'"):
        LeaderArm.from_config(so101, {"joints": {"gripper": {"gain": 2}}})
    leader = LeaderArm(so101)
    with pytest.raises(LeaderJointError, match="lacks shoulder_lift, elbow_flex, wrist_flex, wrist_roll; it has: gripper, shoulder_pan"):
        leader.update(["shoulder_pan", "gripper"], [0.0, 0.0])


# ---------------------------------------------------------------- replay and expert

def test_replay_plays_an_episode_in_time(so101) -> None:
    clock = FakeClock()
    actions = np.outer([0.0, 1.0, 1.0], np.ones(6)) * 0.5
    replay = Replay([10.0, 11.0, 12.0], actions, so101.joint_names, end_button="success", clock=clock)
    with replay:
        np.testing.assert_allclose(replay.read().joints, 0.0)
        clock.t += 0.5
        cmd = replay.read()
        np.testing.assert_allclose(cmd.joints, 0.25)
        assert replay.activity() == pytest.approx(0.5) and not cmd.buttons.any()
        clock.t += 5.0
        end = replay.read()
        np.testing.assert_allclose(end.joints, 0.5)  # holds the last target
        assert end.buttons.success and not replay.read().buttons.any()


def test_replay_from_parquet(tmp_path, so101) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"timestamp": [0.0, 0.1, 0.0, 0.1], "episode_index": [0, 0, 1, 1],
                      "action": [[0.0] * 6, [0.1] * 6, [0.2] * 6, [0.3] * 6]})
    pq.write_table(table, tmp_path / "file-000.parquet")
    replay = Replay.from_parquet(tmp_path / "file-000.parquet", so101.joint_names, episode_index=1)
    np.testing.assert_allclose(replay.sample(0.05), 0.25)
    pq.write_table(table.drop(["action"]), tmp_path / "bad.parquet")
    with pytest.raises(ReplayError, match="no 'action' column; columns: timestamp, episode_index"):
        Replay.from_parquet(tmp_path / "bad.parquet", so101.joint_names)


def test_replay_rejects_bad_episodes(so101) -> None:
    with pytest.raises(ReplayError, match=r"expected \(2, 6\)"):
        Replay([0.0, 1.0], np.zeros((2, 5)), so101.joint_names)
    with pytest.raises(ReplayError, match="strictly increasing"):
        Replay([0.0, 0.0], np.zeros((2, 6)), so101.joint_names)
    with pytest.raises(ValueError, match="unknown button.* sucess; buttons: takeover, handback, success"):
        Replay([0.0], np.zeros((1, 6)), so101.joint_names, end_button="sucess")


def test_expert_as_a_device_starts_where_the_arm_is(so101) -> None:
    q = so101.home.copy()
    clock = FakeClock()

    def observe():
        return q, np.array([0.22, 0.05, 0.014]), np.array([1.0, 0, 0, 0]), np.array([0.2, -0.1, 0.0]), clock.t

    with ExpertTeleop(so101, observe) as expert:
        first = expert.read().joints
        np.testing.assert_allclose(first, q, atol=0.05)
        for _ in range(10):
            clock.t += 1 / 30
            cmd = expert.read()
        assert np.all(cmd.joints >= so101.lower) and np.all(cmd.joints <= so101.upper)
        assert expert.activity() > 0.0  # it is moving toward the cube
