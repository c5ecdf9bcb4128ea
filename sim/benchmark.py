"""Twin benchmark: physics and rendering throughput as ratios against real time.

Baselines are measured in the same run: real time for the physics (one
simulated second per wall second), and the camera frame period for rendering.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from tether.robot_profile import RobotProfile
from tether.sim.twin import Twin


def _repeat(fn: Any, repeats: int) -> list[float]:
    return [fn() for _ in range(repeats)]


def physics_rate(twin: Twin, seconds: float, cameras: list[str], size: tuple[int, int], fps: float) -> float:
    """Simulated seconds per wall second, rendering ``cameras`` at ``fps`` of sim time."""
    twin.reset(0)
    next_frame, start = 0.0, time.perf_counter()
    while twin.time < seconds:
        twin.step(twin.model.opt.timestep * 1e3)
        if cameras and twin.time >= next_frame:
            next_frame += 1.0 / fps
            for cam in cameras:
                twin.render(cam, *size)
    return twin.time / (time.perf_counter() - start)


def render_fps(twin: Twin, camera: str, size: tuple[int, int], frames: int) -> float:
    twin.render(camera, *size)  # context and buffers first
    start = time.perf_counter()
    for _ in range(frames):
        twin.render(camera, *size)
    return frames / (time.perf_counter() - start)


def run(profile: RobotProfile, repeats: int = 5, seconds: float = 2.0) -> dict[str, Any]:
    with Twin(profile, "pick_place") as twin:
        cams = twin.camera_names[:2]
        no_cam = _repeat(lambda: physics_rate(twin, seconds, [], (0, 0), 30.0), repeats)
        with_cam = _repeat(lambda: physics_rate(twin, seconds, cams, (128, 128), 30.0), repeats)
        renders = {
            f"{cam}_{w}x{h}": _repeat(lambda c=cam, s=(w, h): render_fps(twin, c, s, 60), repeats)
            for cam in cams
            for (w, h) in ((128, 128), (640, 480))
        }
        step_s = twin.model.opt.timestep
    return {
        "robot": profile.name,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "timestep_s": step_s,
        "repeats": repeats,
        "realtime_factor_no_cameras": _stats(no_cam),
        "realtime_factor_two_cameras_128_at_30hz": _stats(with_cam),
        "steps_per_s_no_cameras": _stats([r / step_s for r in no_cam]),
        "steps_per_s_two_cameras_128_at_30hz": _stats([r / step_s for r in with_cam]),
        "render_fps": {k: _stats(v) for k, v in renders.items()},
        "render_fps_vs_camera_30hz": {k: _stats([x / 30.0 for x in v]) for k, v in renders.items()},
    }


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max())}


def write(results: dict[str, Any], json_path: Path) -> Path:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    md = json_path.with_suffix(".md")
    r = results
    lines = [
        f"# Twin benchmark ({r['robot']}, timestep {r['timestep_s'] * 1e3:.0f} ms, median of {r['repeats']})",
        "",
        "| figure | median | vs baseline |",
        "|---|---|---|",
        f"| physics, no cameras | {r['steps_per_s_no_cameras']['median']:.0f} steps/s | "
        f"{r['realtime_factor_no_cameras']['median']:.1f}× real time |",
        f"| physics + two 128×128 cameras at 30 Hz | {r['steps_per_s_two_cameras_128_at_30hz']['median']:.0f} steps/s | "
        f"{r['realtime_factor_two_cameras_128_at_30hz']['median']:.1f}× real time |",
    ]
    for key, s in r["render_fps"].items():
        lines.append(f"| render {key} | {s['median']:.0f} fps | {s['median'] / 30.0:.1f}× a 30 Hz camera |")
    md.write_text("\n".join(lines) + "\n")
    return md
