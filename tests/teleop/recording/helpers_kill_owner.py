"""Subprocess for the owner-killed test: hand frames to a WriterProcess, then wait to be killed.

    python helpers_kill_owner.py ROOT --frames 45 [--exit]

Writes ``ROOT.ready`` (the worker's pid, then the number of frames handed over) once every frame
has been handed over, then sleeps until the test SIGKILLs it, or with ``--exit`` exits at once
without closing the writer (as a process whose shutdown fails part way). Frame values follow
``expected_state`` so the test can check what the worker kept.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tether.robot_profile import load_profile
from tether.dataset import DatasetSpec
from tether.teleop.recording.writer_process import WriterProcess

IMAGE_SIZE = (48, 64)


def expected_state(frame: int, joints: int = 6) -> np.ndarray:
    return (frame / 100.0 + np.arange(joints) / 10.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--frames", type=int, default=45)
    parser.add_argument("--exit", action="store_true")
    args = parser.parse_args()
    spec = DatasetSpec.from_profile(load_profile("so101"), fps=30, image_size=IMAGE_SIZE)
    writer = WriterProcess.start(args.root, spec)
    writer.begin_episode("pick the cube")
    for i in range(args.frames):
        images = {cam: np.full((*IMAGE_SIZE, 3), i % 250, np.uint8) for cam in spec.cameras}
        writer.add_frame(expected_state(i), expected_state(i), images, 1_000_000 + i * 33_000_000, False, "expert", "autonomous")
    args.root.with_suffix(".ready").write_text(f"{writer.pid}\n{args.frames}\n")
    while not args.exit:  # until the test kills this process (never closing the writer)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
