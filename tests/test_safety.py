"""The safety filter: malformed chunks are refused, limits are enforced."""

import math

import numpy as np
import pytest

from tether.safety import ChunkRejected, SafetyFilter, SafetyLimits, validate_chunk


def _valid(so101, **over):
    args = dict(joint_names=so101.joint_names, start=0.0, times=[0.1, 0.2], positions=[so101.home, so101.home])
    args.update(over)
    return validate_chunk(so101, **args)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        (dict(joint_names=["shoulder_pan", "elbow", "x", "y", "z", "w"]), "unknown_joint"),
        (dict(joint_names=["shoulder_pan"]), "joint_set"),
        (dict(positions=[[0.0] * 5, [0.0] * 6]), "point_size"),
        (dict(positions=[[math.nan] * 6, [0.0] * 6]), "non_finite"),
        (dict(positions=[[math.inf] * 6, [0.0] * 6]), "non_finite"),
        (dict(times=[0.2, 0.2]), "time_order"),
        (dict(times=[0.3, 0.1]), "time_order"),
        (dict(times=[], positions=[]), "empty"),
    ],
)
def test_malformed_chunks_are_refused_with_a_reason(so101, override, reason) -> None:
    with pytest.raises(ChunkRejected) as info:
        _valid(so101, **override)
    assert info.value.reason == reason


def test_unknown_joint_message_lists_valid_joints(so101) -> None:
    with pytest.raises(ChunkRejected, match="valid joints: shoulder_pan, shoulder_lift"):
        _valid(so101, joint_names=["nope"] + so101.joint_names[1:])


def test_joint_order_is_mapped_to_the_profile(so101) -> None:
    names = list(reversed(so101.joint_names))
    q = np.arange(6) * 0.1
    chunk, clamped = _valid(so101, joint_names=names, times=[0.1], positions=[q])
    np.testing.assert_allclose(chunk.positions[0], q[::-1])
    assert clamped == 0


def test_targets_beyond_limits_are_clamped(so101) -> None:
    q = so101.upper + 1.0
    chunk, clamped = _valid(so101, times=[0.1], positions=[q])
    np.testing.assert_allclose(chunk.positions[0], so101.upper)
    assert clamped == 6


def test_filter_bounds_velocity_acceleration_and_step(so101) -> None:
    limits = SafetyLimits.from_profile(so101, max_step=1.0)
    f = SafetyFilter(limits)
    dt = 0.005
    q = so101.home.copy()
    f.reset(q)
    velocities, prev_v = [], np.zeros(6)
    for _ in range(400):
        out = f(so101.upper, measured=q, dt=dt)
        assert np.all(np.abs(out - q) <= 1.0 + 1e-9)  # max step from measured
        v = (out - q) / dt
        assert np.all(np.abs(v) <= limits.max_velocity + 1e-9)
        cruising = np.abs(out - so101.upper) > 1e-9  # the arrival step may stop short of a full brake
        assert np.all((np.abs(v - prev_v) <= 1.1 * limits.max_acceleration * dt) | ~cruising)
        velocities.append(v)
        prev_v, q = v, out  # a perfect robot follows the command
    np.testing.assert_allclose(q, so101.upper, atol=1e-6)  # and it still gets there
    assert np.max(np.abs(velocities), axis=0)[0] == pytest.approx(limits.max_velocity[0])  # long moves cruise at the limit


def test_filter_does_not_overshoot(so101) -> None:
    f = SafetyFilter(SafetyLimits.from_profile(so101, max_step=10.0))
    q = so101.home.copy()
    f.reset(q)
    target = so101.home + 0.5
    for _ in range(400):
        q = f(target, q, 0.005)
        assert np.all(q <= target + 1e-9)
    np.testing.assert_allclose(q, np.minimum(target, so101.upper), atol=1e-6)


def test_filter_tracks_a_smooth_moving_target_without_lag(so101) -> None:
    f = SafetyFilter(SafetyLimits.from_profile(so101, max_step=0.35))
    dt, q = 0.005, so101.home.copy()
    f.reset(q)
    errors = []
    for k in range(400):  # 1 rad/s ramp on shoulder_pan, well inside the limits
        target = so101.home.copy()
        target[0] = min(1.0 * k * dt, 1.5)
        q = f(target, q, dt)
        errors.append(abs(q[0] - target[0]))
    assert max(errors[40:295]) < 1e-3  # after the acceleration phase it rides on the ramp
    assert max(errors[295:]) < 0.03 and errors[-1] < 1e-6  # an instant stop is braked, then reached
    # 0.1 s to reach 1 rad/s and close the gap, 0.1 s to brake the instant stop and come back: both within limits.
    assert f.limited_count <= 40


def test_a_robot_pushed_beyond_max_step_is_followed_within_the_limits(so101) -> None:
    """A push (or a collision) moves the arm 0.6 rad from a standing command: the command must not
    stay put, pressing the servo against it, but come back within max_step as fast as the limits allow."""
    f = SafetyFilter(SafetyLimits.from_profile(so101, max_step=0.35))
    dt, q = 0.005, so101.home.copy()
    f.reset(q)
    pushed = q.copy()
    pushed[1] += 0.6
    out, velocities = [], []
    for _ in range(60):
        out.append(f.stop(pushed, dt))
        velocities.append(f.velocity[1])
    lead = np.abs(np.array(out)[:, 1] - pushed[1])
    assert f.step_exceeded > 0 and lead[-1] <= 0.35 + 1e-9  # counted, then back inside the band
    assert np.all(np.abs(np.diff([0.0, *velocities])) / dt <= so101.max_acceleration[1] * (1 + 1e-9))
