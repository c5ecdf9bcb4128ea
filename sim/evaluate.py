"""Run the scripted expert in the twin: success statistics headless, or a video of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from tether.report import EpisodeResult
from tether.robot_profile import RobotProfile
from tether.sim.expert import PickPlaceExpert
from tether.sim.twin import Twin
from tether.video import VideoWriter

EPISODE_TIMEOUT_S = 20.0


def run_episode(twin: Twin, expert: PickPlaceExpert, seed: int, *, timeout_s: float = EPISODE_TIMEOUT_S,
                linger_s: float = 0.0, on_step: Callable[[Twin], None] | None = None) -> tuple[bool, float]:
    """One episode from ``twin.reset(seed)``: (success, sim seconds to success or timeout).

    The expert acts every 1 / control_hz of sim time, on the state it measures then. After a
    success the loop goes on for ``linger_s`` (so a video shows the result); ``on_step`` sees
    the twin after the reset and after every step.
    """
    twin.reset(seed)
    expert.reset()
    period_ms = 1000.0 / expert.control_hz
    succeeded_at: float | None = None
    if on_step is not None:
        on_step(twin)
    while twin.time < timeout_s:
        cube, quat = twin.object_pose()
        twin.set_targets(expert.act(twin.joint_positions(), cube, quat, twin.target_position(), twin.time))
        twin.step(period_ms)
        if on_step is not None:
            on_step(twin)
        if succeeded_at is None and twin.success():
            succeeded_at = twin.time
        if succeeded_at is not None and twin.time >= succeeded_at + linger_s:
            return True, succeeded_at
    return succeeded_at is not None, succeeded_at if succeeded_at is not None else twin.time


def run_expert_episodes(profile: RobotProfile, task: str, episodes: int, seed: int,
                        progress: bool = False) -> list[EpisodeResult]:
    """Episode i runs from seed + i, headless."""
    expert = PickPlaceExpert(profile)
    results: list[EpisodeResult] = []
    with Twin(profile, task) as twin, tqdm(total=episodes, disable=not progress, desc="expert", unit="ep") as bar:
        for i in range(episodes):
            success, duration = run_episode(twin, expert, seed + i)
            outcome = twin.outcome()
            results.append(EpisodeResult(i, seed + i, success, duration, () if success else outcome.missed,
                                         outcome.distance_m))
            bar.set_postfix(successes=f"{sum(r.success for r in results)}/{len(results)}", refresh=False)
            bar.update(1)
    return results


class _FrameClock:
    """Renders a frame whenever sim time reaches the next frame time (video and control rates differ)."""

    def __init__(self, video: VideoWriter, camera: str, size: tuple[int, int] | None, fps: float) -> None:
        self.video, self.camera, self.size, self.period = video, camera, size, 1.0 / fps
        self.next = 0.0

    def __call__(self, twin: Twin) -> None:
        if twin.time == 0.0:
            self.next = 0.0  # a new episode
        width, height = self.size or (None, None)
        while twin.time + 1e-9 >= self.next:
            self.video.write(twin.render(self.camera, width, height))
            self.next += self.period


def record_expert_video(profile: RobotProfile, task: str, episodes: int, seed: int, out: Path,
                        camera: str = "front", size: tuple[int, int] | None = None, fps: float = 30.0,
                        linger_s: float = 0.7) -> int:
    """Write ``episodes`` expert episodes seen from ``camera`` to ``out``; returns frames written.

    Each episode ends ``linger_s`` after its success (or at the timeout).
    """
    expert = PickPlaceExpert(profile)
    with Twin(profile, task) as twin, VideoWriter(out, fps) as video:
        clock = _FrameClock(video, camera, size, fps)
        for i in range(episodes):
            run_episode(twin, expert, seed + i, linger_s=linger_s, on_step=clock)
        return video.frames
