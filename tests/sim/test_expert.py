"""The scripted expert in the twin: it picks and places, stays smooth and in limits, re-plans."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import mujoco
import numpy as np
import pytest

from tether.cli import main
from tether.gate import Gate
from tether.report import outcome_summary
from tether.robot_profile import RobotProfile
from tether.sim.evaluate import record_expert_video, run_episode, run_expert_episodes
from tether.sim.expert import PickPlaceExpert, cube_yaw
from tether.sim.tasks import PickPlace
from tether.sim.twin import Twin

TASK = PickPlace()


@pytest.fixture(scope="module")
def twin(so101: RobotProfile) -> Iterator[Twin]:
    with Twin(so101, "pick_place") as t:
        yield t


@pytest.fixture(scope="module")
def expert(so101: RobotProfile) -> PickPlaceExpert:
    return PickPlaceExpert(so101)


def act(twin: Twin, expert: PickPlaceExpert) -> np.ndarray:
    cube, quat = twin.object_pose()
    return expert.act(twin.joint_positions(), cube, quat, twin.target_position(), twin.time)


def run_until(twin: Twin, expert: PickPlaceExpert, done: Callable[[Twin, PickPlaceExpert], bool],
              timeout_s: float = 20.0) -> list[np.ndarray]:
    """Drive the twin with the expert until ``done(twin, expert)``; returns every command sent."""
    sent = []
    while twin.time < timeout_s and not done(twin, expert):
        sent.append(act(twin, expert))
        twin.set_targets(sent[-1])
        twin.step(1000.0 / expert.control_hz)
    return sent


def phases_until_placed(twin: Twin, expert: PickPlaceExpert, timeout_s: float) -> list[str]:
    """Drive until the cube is on the target; the expert's phase before each act()."""
    phases: list[str] = []

    def placed(tw: Twin, ex: PickPlaceExpert) -> bool:
        phases.append(ex.phase)
        return tw.success()

    run_until(twin, expert, placed, timeout_s)
    return phases


def teleport_cube(twin: Twin, xy: tuple[float, float], yaw: float) -> None:
    body = twin.model.joint("cube_free")
    adr, dof = twin.model.jnt_qposadr[body.id], twin.model.jnt_dofadr[body.id]
    twin.data.qpos[adr:adr + 7] = [*xy, TASK.cube_half, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
    twin.data.qvel[dof:dof + 6] = 0.0
    mujoco.mj_forward(twin.model, twin.data)


def far_from_target(twin: Twin) -> tuple[float, float]:
    """The corner of the cube spawn region farthest from the target."""
    base = twin.profile.base_pos
    corners = [(base[0] + x, base[1] + y) for x in TASK.cube_region.x for y in TASK.cube_region.y]
    target = twin.target_position()[:2]
    return max(corners, key=lambda c: float(np.linalg.norm(np.subtract(c, target))))


# -- episodes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_expert_places_the_cube_on_the_target(twin: Twin, expert: PickPlaceExpert, seed: int) -> None:
    success, duration = run_episode(twin, expert, seed)
    assert success, f"seed {seed}: cube at {twin.object_pose()[0]}, target {twin.target_position()}"
    assert 2.0 < duration < 10.0
    cube, _ = twin.object_pose()
    assert np.linalg.norm(cube[:2] - twin.target_position()[:2]) < TASK.target_radius / 2


def test_run_expert_episodes_reports_each_seed(so101: RobotProfile) -> None:
    results = run_expert_episodes(so101, "pick_place", episodes=3, seed=40)
    assert [r.seed for r in results] == [40, 41, 42]
    assert [r.index for r in results] == [0, 1, 2]
    assert all(r.success for r in results)
    assert all(r.missed == () and r.distance_m <= 0.04 for r in results)  # placed inside the 4 cm disc
    assert outcome_summary(results)["success_rate"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1000, 12345])
def test_fifty_episodes_succeed_at_least_95_percent(so101: RobotProfile, seed: int) -> None:
    summary = outcome_summary(run_expert_episodes(so101, "pick_place", episodes=50, seed=seed))
    assert summary["success_rate"] >= 0.95, summary


# -- commands -----------------------------------------------------------------------------------
def test_commands_are_finite_within_limits_and_smooth(twin: Twin, expert: PickPlaceExpert) -> None:
    profile = expert.profile
    twin.reset(5)
    expert.reset()
    sent = np.array(run_until(twin, expert, lambda tw, _: tw.success()))
    assert twin.success()
    assert sent.shape[1] == len(profile.joint_names)
    assert np.all(np.isfinite(sent))
    assert np.all(sent >= profile.lower) and np.all(sent <= profile.upper)
    # The ROS gate passes up to max_velocity and max_acceleration; the expert stays inside both,
    # the arm joints at the speed it plans with.
    speed = np.abs(np.diff(sent, axis=0)) * expert.control_hz
    accel = np.abs(np.diff(sent, n=2, axis=0)) * expert.control_hz**2
    arm = [profile.joint_index(n) for n in profile.arm_joint_names]
    assert np.all(speed <= profile.max_velocity), speed.max(axis=0)
    assert np.all(speed[:, arm] <= 1.05 * expert.config.joint_speed), speed.max(axis=0)
    assert np.all(accel <= profile.max_acceleration), accel.max(axis=0)


def test_commands_never_lead_the_measured_joints_by_more_than_the_gate_allows(
        twin: Twin, expert: PickPlaceExpert) -> None:
    twin.reset(6)
    expert.reset()
    worst = 0.0
    while twin.time < 8.0 and not twin.success():
        q = twin.joint_positions()
        command = act(twin, expert)
        worst = max(worst, float(np.max(np.abs(command - q))))
        twin.set_targets(command)
        twin.step(1000.0 / expert.control_hz)
    assert twin.success()
    assert worst <= 0.35  # GateConfig.max_step


def test_act_is_cheap(twin: Twin, expert: PickPlaceExpert) -> None:
    twin.reset(7)
    expert.reset()
    times = []
    for _ in range(120):  # approach, descent and grasp: IK every tick
        start = time.perf_counter()
        command = act(twin, expert)
        times.append(time.perf_counter() - start)
        twin.set_targets(command)
        twin.step(1000.0 / expert.control_hz)
    assert np.median(times) < 0.002, f"median act() {np.median(times) * 1e3:.2f} ms"


def test_jaws_close_across_a_pair_of_cube_faces(twin: Twin, expert: PickPlaceExpert) -> None:
    twin.reset(8)
    expert.reset()
    teleport_cube(twin, far_from_target(twin), yaw=np.deg2rad(40))  # nearly a half-way yaw
    run_until(twin, expert, lambda _, ex: ex.phase == "close")
    closing_axis = twin.ee_pose()[1][:, 0]
    faces = cube_yaw(twin.object_pose()[1])
    misalignment = (np.arctan2(closing_axis[1], closing_axis[0]) - faces + np.pi / 4) % (np.pi / 2) - np.pi / 4
    assert abs(np.rad2deg(misalignment)) < 3.0
    assert abs(closing_axis[2]) < 0.05  # straight down: the closing axis is horizontal


# -- closed loop --------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["descend", "carry"])
def test_expert_picks_again_after_the_cube_is_knocked_away(
        twin: Twin, expert: PickPlaceExpert, phase: str) -> None:
    twin.reset(9)
    expert.reset()
    run_until(twin, expert, lambda _, ex: ex.phase == phase)
    stop = twin.time + 0.2  # well into the phase
    run_until(twin, expert, lambda tw, _: tw.time >= stop)
    assert expert.phase == phase
    teleport_cube(twin, far_from_target(twin), yaw=0.5)  # out of the hand, elsewhere on the table
    phases = phases_until_placed(twin, expert, timeout_s=20.0)
    assert "approach" in phases, "the expert did not notice the cube was gone"
    assert twin.success(), f"phases after the knock: {sorted(set(phases))}"


def test_expert_runs_through_the_ros_gate_at_20_and_50_hz(so101: RobotProfile, twin: Twin) -> None:
    """As in the ROS graph: commands arrive late as one-point trajectories and pass the gate."""
    for hz in (20.0, 50.0):
        expert = PickPlaceExpert(so101)
        expert.control_hz = hz
        assert gated_episode(twin, expert, Gate(so101), seed=11, latency_s=0.006), f"{hz} Hz"


def gated_episode(twin: Twin, expert: PickPlaceExpert, gate: Gate, seed: int, latency_s: float,
                  timeout_s: float = 15.0) -> bool:
    names, period = twin.joint_names, 1.0 / expert.control_hz
    twin.reset(seed)
    expert.reset()
    in_flight: list[tuple[float, float, list[float]]] = []  # (arrival, stamp, positions)
    next_act = 0.0
    while twin.time < timeout_s:
        now = twin.time
        gate.on_joint_state(names, twin.joint_positions().tolist(), now)
        if now + 1e-9 >= next_act:
            in_flight.append((now + latency_s, now, act(twin, expert).tolist()))
            next_act += period
        while in_flight and in_flight[0][0] <= now + 1e-9:
            _, stamp, positions = in_flight.pop(0)
            gate.on_chunk("expert", names, stamp, [period], [positions], now=now)
        command = gate.tick(now)
        if command is not None:
            twin.set_targets(command.positions)
        twin.step(1000.0 / gate.config.rate_hz)
        if twin.success():
            return True
    return False


# -- command line and video ---------------------------------------------------------------------
def test_cli_writes_the_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "expert.json"
    assert main(["sim", "expert", "--episodes", "2", "--seed", "0", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert set(summary) == {"episodes", "successes", "success_rate", "ci95", "mean_duration_s", "failures"}
    assert summary["episodes"] == 2 and summary["successes"] == 2 and summary["failures"] == {}
    assert "2/2" in capsys.readouterr().out


def test_video_shows_the_whole_episode(so101: RobotProfile, tmp_path: Path) -> None:
    out = tmp_path / "expert.mp4"
    frames = record_expert_video(so101, "pick_place", 1, 0, out, camera="front", size=(96, 64), linger_s=0.5)
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == frames
    assert 3.0 * 30 < frames < 10.0 * 30  # an episode of a few seconds at 30 fps
    assert decoded[0].shape == (64, 96, 3)


def test_expert_taking_over_a_held_cube_carries_it_on(twin: Twin, expert: PickPlaceExpert) -> None:
    """A correction that starts mid-carry (the policy lifted the cube) keeps the jaws shut."""
    twin.reset(9)
    expert.reset()
    run_until(twin, expert, lambda _, ex: ex.phase == "carry")
    expert.reset()  # a fresh expert takes over, as after a takeover in collection
    phases = phases_until_placed(twin, expert, timeout_s=twin.time + 10.0)
    after = list(dict.fromkeys(phases[1:]))  # phases[0] is the phase before the first act()
    assert twin.success()
    assert after[0] == "lift" and "approach" not in after, f"phases: {after}"


def test_expert_taking_over_a_cube_held_over_the_target_puts_it_down(twin: Twin, expert: PickPlaceExpert) -> None:
    """A correction of a policy that hovers with the cube over the disc lowers and releases it there."""
    twin.reset(9)
    expert.reset()
    run_until(twin, expert, lambda _, ex: ex.phase == "lower")
    expert.reset()
    phases = phases_until_placed(twin, expert, timeout_s=twin.time + 10.0)
    after = list(dict.fromkeys(phases[1:]))
    assert twin.success()
    assert after[:2] == ["lower", "release"] and "lift" not in after, f"phases: {after}"
