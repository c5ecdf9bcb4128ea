"""The gate core: holds, source timeout, e-stop latch, latency bookkeeping."""

import numpy as np
import pytest

from tether.errors import ConfigError, UnknownJointError
from tether.gate import Gate, GateConfig
from tether.safety import ChunkRejected


@pytest.fixture
def gate(so101) -> Gate:
    g = Gate(so101, GateConfig(rate_hz=100, state_timeout=0.1, source_timeout=0.3))
    g.on_joint_state(so101.joint_names, so101.home, stamp=0.0)
    return g


def send(gate: Gate, so101, now: float, q=None, source="expert") -> bool:
    q = so101.home + 0.05 if q is None else q
    return gate.on_chunk(source, so101.joint_names, now, [0.05], [q], now=now)


def test_no_command_before_joint_states(so101) -> None:
    assert Gate(so101).tick(0.0) is None


def test_a_chunk_before_any_joint_state_is_refused(so101) -> None:
    g = Gate(so101)
    with pytest.raises(ChunkRejected) as info:
        send(g, so101, now=0.0)
    assert info.value.reason == "no_joint_state" and g.counters["rejected_no_joint_state"] == 1
    assert g.tick(0.01) is None  # still nothing to command
    g.on_joint_state(so101.joint_names, so101.home, stamp=0.02)
    assert send(g, so101, now=0.03)


def test_holds_until_a_source_speaks_then_tracks(gate, so101) -> None:
    cmd = gate.tick(0.0)
    assert cmd.hold and cmd.reason == "source_silent"
    np.testing.assert_allclose(cmd.positions, so101.home)
    send(gate, so101, now=0.01)
    cmd = gate.tick(0.02)
    assert not cmd.hold and cmd.reason == "tracking"
    assert np.all(cmd.positions >= so101.home - 1e-12)


def test_stale_joint_states_make_the_gate_hold(gate, so101) -> None:
    send(gate, so101, now=0.05)
    assert not gate.tick(0.06).hold
    held = gate.tick(0.2)  # last joint state at t=0, timeout 0.1
    assert held.hold and held.reason == "stale_joint_states"
    gate.on_joint_state(so101.joint_names, so101.home, stamp=0.21)
    send(gate, so101, now=0.21)
    assert not gate.tick(0.22).hold


def test_silent_source_times_out(gate, so101) -> None:
    send(gate, so101, now=0.0)
    gate.on_joint_state(so101.joint_names, so101.home, stamp=0.25)
    assert not gate.tick(0.25).hold
    gate.on_joint_state(so101.joint_names, so101.home, stamp=0.35)
    cmd = gate.tick(0.35)
    assert cmd.hold and cmd.reason == "source_silent"
    assert gate.diagnostics()["hold_source_silent"] >= 1


def test_estop_latches_until_cleared(gate, so101) -> None:
    send(gate, so101, now=0.0)
    gate.estop()
    for t in (0.01, 0.02):
        send(gate, so101, now=t)
        gate.on_joint_state(so101.joint_names, so101.home, stamp=t)
        cmd = gate.tick(t)
        assert cmd.hold and cmd.reason == "estop"
        np.testing.assert_allclose(cmd.positions, so101.home)
    gate.clear_estop()
    send(gate, so101, now=0.03)
    assert not gate.tick(0.03).hold
    assert gate.diagnostics()["estops"] == 1


def test_commands_stay_within_limits(gate, so101) -> None:
    for i in range(50):
        t = i * 0.01
        gate.on_joint_state(so101.joint_names, so101.home, stamp=t)
        send(gate, so101, now=t, q=so101.upper + 2.0)
        cmd = gate.tick(t)
        assert np.all(cmd.positions <= so101.upper + 1e-12)
        assert np.all(np.abs(cmd.positions - so101.home) <= gate.config.max_step + 1e-9)
    assert gate.diagnostics()["clamped_values"] == 50 * 6


def test_rejections_are_counted_and_never_reach_the_output(gate, so101) -> None:
    send(gate, so101, now=0.0)
    before = gate.tick(0.01).positions
    with pytest.raises(ChunkRejected):
        gate.on_chunk("expert", so101.joint_names, 0.01, [0.05], [[np.nan] * 6], now=0.01)
    after = gate.tick(0.02).positions
    assert np.all(np.isfinite(after))
    assert np.linalg.norm(after - before) < 0.05
    assert gate.diagnostics()["rejected_non_finite"] == 1


def test_inactive_source_is_ignored(gate, so101) -> None:
    assert send(gate, so101, now=0.0, source="policy") is False
    assert gate.tick(0.01).hold
    with pytest.raises(ChunkRejected, match="unknown source"):
        send(gate, so101, now=0.0, source="ghost")


def test_joint_states_missing_a_joint_are_refused(gate, so101) -> None:
    with pytest.raises(UnknownJointError):
        gate.on_joint_state(so101.joint_names[:-1], so101.home[:-1], stamp=0.0)


def test_latency_is_measured_from_the_chunk_stamp(gate, so101) -> None:
    gate.on_chunk("expert", so101.joint_names, 0.100, [0.05], [so101.home], now=0.104)
    gate.on_joint_state(so101.joint_names, so101.home, stamp=0.1)
    gate.tick(0.107)
    assert gate.diagnostics()["latency_p50_ms"] == pytest.approx(7.0)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="sources"):
        GateConfig(active_source="nobody")


def test_human_takeover_switches_source_without_a_jump(gate, so101) -> None:
    for i in range(20):  # the policy moves the arm along
        t = i * 0.01
        gate.on_joint_state(so101.joint_names, so101.home, stamp=t)
        send(gate, so101, now=t, q=so101.home + 0.3)
        last = gate.tick(t).positions
    assert gate.set_mode("human") and gate.intervention and gate.active_source == "teleop"
    assert send(gate, so101, now=0.2, q=so101.home + 0.3) is False  # the policy no longer drives
    # The human's first chunk starts where the robot is; the output continues from the last command.
    send(gate, so101, now=0.2, source="teleop", q=last)
    gate.on_joint_state(so101.joint_names, so101.home, stamp=0.2)
    first = gate.tick(0.2).positions
    assert np.max(np.abs(first - last)) <= np.max(so101.max_velocity) * gate.period + 1e-9
    assert gate.diagnostics()["mode"] == "human"


def test_handback_and_pause(gate, so101) -> None:
    gate.set_mode("human")
    gate.set_mode("autonomous")
    assert not gate.intervention and gate.active_source == "expert"
    gate.set_mode("paused")
    send(gate, so101, now=0.0)
    cmd = gate.tick(0.01)
    assert cmd.hold and cmd.reason == "paused"
    with pytest.raises(ConfigError, match="modes: autonomous, human, paused"):
        gate.set_mode("sleepy")


@pytest.mark.parametrize(("start", "times", "reason"), [
    (0.0, list(np.arange(1, 202) * 0.01), "too_many_points"),  # the profile allows 200
    (0.0, [5.0, 10.5], "too_long"),  # 10 s at most
    (-0.6, [0.05], "stale_stamp"),  # an observation more than 0.5 s old
    (0.6, [0.05], "future_stamp"),  # or stamped more than 0.5 s ahead
])
def test_chunks_beyond_the_profiles_bounds_are_refused_with_a_reason(gate, so101, start, times, reason) -> None:
    points = [so101.home] * len(times)
    with pytest.raises(ChunkRejected) as info:
        gate.on_chunk("expert", so101.joint_names, start, times, points, now=0.0)
    assert info.value.reason == reason and "chunks." in str(info.value)  # names the profile's setting
    assert gate.counters[f"rejected_{reason}"] == 1


def test_a_chunk_flood_is_cut_to_the_profiles_rate(gate, so101) -> None:
    accepted = refused = 0
    for k in range(2000):  # 1 s of chunks at 2 kHz
        now = k * 0.0005
        if gate.flooded("expert", now):  # what a node checks before decoding
            refused += 1
            continue
        send(gate, so101, now=now)
        accepted += 1
    rate = so101.chunks.max_rate_hz
    assert rate <= accepted <= rate * 1.1  # the profile's rate for a second, plus the burst allowance
    assert gate.counters["rejected_rate_limited"] == refused == 2000 - accepted
    assert not gate.flooded("teleop", 1.0)  # each source has its own budget


def test_a_chunk_too_large_to_hold_max_points_is_refused_by_its_size_before_decoding(gate, so101) -> None:
    from rclpy.serialization import serialize_message

    from tether.attack import ChunkAttack
    from tether.safety import max_chunk_bytes

    names, start, times, q = ChunkAttack(so101).chunk("too_many_points", 0.0)
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory(joint_names=names, points=[JointTrajectoryPoint(positions=p) for p in q[:so101.chunks.max_points]])
    for p in msg.points:  # the largest legal chunk: every field of every point filled
        p.velocities = p.accelerations = p.effort = list(p.positions)
    assert len(serialize_message(msg)) <= max_chunk_bytes(so101.chunks, 6)
    gate.check_bytes("expert", len(serialize_message(msg)))  # passes
    with pytest.raises(ChunkRejected) as info:
        gate.check_bytes("expert", max_chunk_bytes(so101.chunks, 6) + 1)
    assert info.value.reason == "too_many_points" and gate.counters["rejected_too_many_points"] == 1
