"""Subprocess for the SIGKILL tests: commit some episodes, then record one until killed.

    python helpers_kill_writer.py ROOT --committed 2 [--pause-at STAGE --episode-frames 15]

Without ``--pause-at`` it records the last episode forever at ``--fps``, appending the number of
frames added so far to ``ROOT.progress`` after every frame, so the test knows how many frames
a kill can have lost. With ``--pause-at STAGE`` it ends the last episode after
``--episode-frames`` frames and freezes its commit at that stage (writing ``ROOT.paused``), so
the test can kill it inside a commit. Frame values are a pure function of (episode, frame),
``expected_state``, so the test can check committed data after the kill.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tether.robot_profile import load_profile
from tether.dataset import DatasetSpec, DatasetWriter

IMAGE_SIZE = (48, 64)
TASK = "pick the cube"


def expected_state(episode: int, frame: int, joints: int = 6) -> np.ndarray:
    return (episode + frame / 1000.0 + np.arange(joints) / 10.0).astype(np.float32)


def images(spec: DatasetSpec, episode: int, frame: int) -> dict[str, np.ndarray]:
    shade = (episode * 40 + frame * 3) % 200 + 20
    return {cam: np.full((*IMAGE_SIZE, 3), shade, np.uint8) for cam in spec.cameras}


def add(writer: DatasetWriter, episode: int, frame: int) -> None:
    state = expected_state(episode, frame)
    writer.add_frame(state, state + 0.01, images(writer.spec, episode, frame), time.time_ns(), frame % 7 == 0, "human", "correction")


class PauseHook:
    """Commit hook that freezes the process at ``stage`` once armed (only the last commit)."""

    def __init__(self, stage: str | None, marker: Path) -> None:
        self.stage, self.marker, self.armed = stage, marker, False

    def __call__(self, stage: str) -> None:
        if self.armed and self.stage and stage.startswith(self.stage):
            self.marker.write_text(stage)
            while True:  # frozen mid-commit until the test kills us
                time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--committed", type=int, default=2)
    parser.add_argument("--committed-frames", type=int, default=8)
    parser.add_argument("--pause-at", default=None)
    parser.add_argument("--episode-frames", type=int, default=15)
    args = parser.parse_args()
    spec = DatasetSpec.from_profile(load_profile("so101"), fps=args.fps, image_size=IMAGE_SIZE)
    progress = args.root.with_suffix(".progress")
    hook = PauseHook(args.pause_at, args.root.with_suffix(".paused"))
    writer = DatasetWriter.create(args.root, spec, commit_hook=hook)
    for ep in range(args.committed):
        writer.begin_episode(TASK)
        for i in range(args.committed_frames):
            add(writer, ep, i)
        writer.end_episode(success=ep % 2 == 0)
    writer.begin_episode(TASK)
    with open(progress, "a") as log:
        frame, period, next_t = 0, 1.0 / args.fps, time.monotonic()
        while args.pause_at is None or frame < args.episode_frames:
            add(writer, args.committed, frame)
            frame += 1
            log.write(f"{frame}\n")
            log.flush()
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
    hook.armed = True
    writer.end_episode(success=True)  # freezes in the hook at --pause-at


if __name__ == "__main__":
    main()
