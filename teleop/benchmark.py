"""Recording soak: the collect graph records 2 cameras and joint states for minutes; what was lost?

Reports dropped frames (by reason), CPU use of the whole graph, disk use per
minute and episode commit time. Baselines from the same run: the nominal camera
period (frames expected = duration x fps) and one core's worth of CPU time.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from tether.graph import CollectArgs, collect_graph
from tether.runner import run_graph


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _parse_commit(message: str) -> dict[str, Any]:
    fields = dict(item.split("=", 1) for item in message.split() if "=" in item)
    dropped = {} if fields.get("dropped", "none") == "none" else {
        k: int(v) for k, v in (d.split(":") for d in fields["dropped"].split(","))}
    return {"frames_total": int(fields["frames"]), "dropped": dropped, "commit_s": float(fields.get("commit_s", "nan"))}


def run(out_dir: Path, seconds: float, robot: str = "so101", fps: int = 30, mcap_images: bool = False,
        camera_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """``camera_size`` (width, height) overrides the profile's: a loaded machine may not render full size in real time."""
    dataset, report = out_dir / "dataset", out_dir / "graph_report"
    for path in (dataset, out_dir / "dataset_mcap", report):
        shutil.rmtree(path, ignore_errors=True)
    w, h = camera_size or (0, 0)
    args = CollectArgs(robot=robot, episodes=1, dataset=str(dataset.resolve()), report=str(report.resolve()),
                       episode_timeout=seconds, stop_on_success=False, mcap_images=mcap_images,
                       camera_width=w, camera_height=h)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    code = run_graph(collect_graph(args), report / "logs", timeout=seconds + 120)
    wall = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise RuntimeError(f"collect graph exited with {code}; logs in {report / 'logs'}")
    graph = json.loads((report / "report.json").read_text())
    commit = _parse_commit(graph["meta"]["recorder_commits"][0])
    expected = int(seconds * fps)
    cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    disk = _disk_bytes(dataset) + _disk_bytes(out_dir / "dataset_mcap")
    return {
        "seconds": seconds,
        "cameras": f"2 x {w}x{h} at 30 fps" if camera_size else "2 x profile size at 30 fps",
        "mcap_images": mcap_images,
        "frames_recorded": commit["frames_total"],
        "frames_expected_at_nominal_fps": expected,
        "frames_recorded_vs_nominal": commit["frames_total"] / expected,
        "dropped_frames": sum(commit["dropped"].values()),
        "dropped_by_reason": commit["dropped"],
        "commit_s": commit["commit_s"],
        "cpu_cores_used": cpu_s / wall,
        "disk_mb_per_min": disk / 1e6 / (seconds / 60),
        "dataset_mb": _disk_bytes(dataset) / 1e6,
        "mcap_mb": _disk_bytes(out_dir / "dataset_mcap") / 1e6,
        "obs_to_command_ms": graph["latency_ms"]["obs_to_command"],
    }


def write(results: dict[str, Any], json_path: Path) -> Path:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    r = results
    md = json_path.with_suffix(".md")
    md.write_text("\n".join([
        f"# Recording soak ({r['seconds']:.0f} s, {r['cameras']}, joints at 250 Hz, "
        f"MCAP {'with' if r['mcap_images'] else 'without'} images)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| frames recorded / nominal | {r['frames_recorded']} / {r['frames_expected_at_nominal_fps']} "
        f"({r['frames_recorded_vs_nominal']:.3f}) |",
        f"| dropped frames | {r['dropped_frames']} {r['dropped_by_reason'] or ''} |",
        f"| CPU (whole graph) | {r['cpu_cores_used']:.2f} cores of 1 |",
        f"| disk | {r['disk_mb_per_min']:.1f} MB/min (dataset {r['dataset_mb']:.1f} MB, MCAP {r['mcap_mb']:.1f} MB) |",
        f"| episode commit | {r['commit_s']:.3f} s |",
    ]) + "\n")
    return md
