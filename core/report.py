"""Evaluation and rehearsal reports: JSON for machines, Markdown and PNG plots for people."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.stats import wilson_interval


@dataclass(frozen=True)
class EpisodeResult:
    index: int
    seed: int
    success: bool
    duration_s: float
    missed: tuple[str, ...] = ()  # success conditions not met at the end (see tether.sim.tasks.Outcome)
    distance_m: float | None = None  # object to target at the end, where the task measures it


def percentiles(values: list[float] | np.ndarray) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}


def outcome_summary(episodes: list[EpisodeResult]) -> dict[str, Any]:
    n = len(episodes)
    k = sum(e.success for e in episodes)
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "ci95": [lo, hi],
        "mean_duration_s": float(np.mean([e.duration_s for e in episodes])) if n else 0.0,
        "failures": failure_counts(episodes),
    }


def failure_counts(episodes: list[EpisodeResult]) -> dict[str, int]:
    """How many failed episodes missed each success condition, most common first."""
    counts = Counter(c for e in episodes if not e.success for c in e.missed)
    return dict(counts.most_common())


@dataclass(frozen=True)
class MachineTiming:
    """How well the machine kept up with the run: a busy or slow machine slows a run and says so here."""

    realtime_factor: list[float] = field(default_factory=list)  # twin: sim seconds per wall second, each second
    compute_rtf: list[float] = field(default_factory=list)  # twin: sim seconds per second of physics work
    slipped_s: float = 0.0  # sim time the twin gave up because the machine could not keep real time
    frames_rendered: int = 0
    frames_skipped: int = 0  # camera frames the twin's renderer was too busy to draw
    load_average: list[float] = field(default_factory=list)  # 1-minute load average, sampled during the run
    cpus: int = 0
    # Samples the middleware refused to send (twin and gate, dropped and counted; see tether_ros.publishing).
    publish_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        rtf = np.asarray(self.realtime_factor, dtype=float)
        load = np.asarray(self.load_average, dtype=float)
        drawn = self.frames_rendered + self.frames_skipped
        return {
            "twin_realtime_factor": {"p50": _median(rtf), "min": float(rtf.min()) if rtf.size else float("nan")},
            "twin_compute_rtf": _median(np.asarray(self.compute_rtf, dtype=float)),
            "twin_slipped_s": self.slipped_s,
            "camera_frames": {"rendered": self.frames_rendered, "skipped": self.frames_skipped,
                              "skipped_share": self.frames_skipped / drawn if drawn else 0.0},
            "load_average_1min": {"p50": _median(load), "max": float(load.max()) if load.size else float("nan"),
                                  "cpus": self.cpus},
            "publish_failures": self.publish_failures,
        }


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


@dataclass
class RehearsalReport:
    episodes: list[EpisodeResult]
    obs_to_command_ms: dict[str, float]
    command_periods_ms: list[float]
    nominal_period_ms: float
    gate: dict[str, str] = field(default_factory=dict)
    machine: MachineTiming = field(default_factory=MachineTiming)
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        periods = np.asarray(self.command_periods_ms)
        jitter = np.abs(periods - self.nominal_period_ms)
        out = outcome_summary(self.episodes)
        out.update(
            latency_ms={"obs_to_command": self.obs_to_command_ms},
            command_rate_hz=float(1e3 / np.mean(periods)) if periods.size else 0.0,
            command_period_ms={"nominal": self.nominal_period_ms, **percentiles(periods)},
            command_jitter_ms=percentiles(jitter),
            missed_deadlines=int(np.sum(periods > 2 * self.nominal_period_ms)),
            gate_holds=int(self.gate.get("holds", 0)),
            estops=int(self.gate.get("estops", 0)),
            gate=self.gate,
            machine=self.machine.as_dict(),
            twin_compute_rtf=self.machine.as_dict()["twin_compute_rtf"],
            episode_detail=[asdict(e) for e in self.episodes],
            meta=self.meta,
        )
        return out

    def write(self, out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = _json_safe(self.as_dict())
        (out_dir / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False))
        (out_dir / "report.md").write_text(self.markdown(data))
        self.plot(out_dir / "report.png")
        return data

    def markdown(self, d: dict[str, Any]) -> str:
        lat = d["latency_ms"]["obs_to_command"]
        per, jit = d["command_period_ms"], d["command_jitter_ms"]
        lines = [
            f"# Rehearsal: {self.meta.get('robot', '?')} / {self.meta.get('task', '?')} / source {self.meta.get('source', '?')}",
            "",
            "| metric | value |",
            "|---|---|",
            f"| clock | {self.meta.get('clock', 'wall')} time{' (the twin drives /clock; durations and latencies are sim seconds)' if self.meta.get('clock') == 'sim' else ''} |",
            f"| success | {d['successes']}/{d['episodes']} = {d['success_rate']:.2f} (95% CI {d['ci95'][0]:.2f}–{d['ci95'][1]:.2f}) |",
            f"| mean episode duration | {d['mean_duration_s']:.2f} s |",
            f"| obs → gated command latency | p50 {_fmt(lat.get('p50'), '.2f')} ms, p99 {_fmt(lat.get('p99'), '.2f')} ms |",
            f"| command rate | {d['command_rate_hz']:.1f} Hz (nominal {1e3 / per['nominal']:.0f} Hz) |",
            f"| command period | p50 {_fmt(per['p50'], '.2f')} ms, p99 {_fmt(per['p99'], '.2f')} ms; "
            f"jitter p99 {_fmt(jit['p99'], '.2f')} ms |",
            f"| missed deadlines (period > 2× nominal) | {d['missed_deadlines']} |",
            f"| gate holds / e-stops | {d['gate_holds']} / {d['estops']} |",
            *_machine_rows(d["machine"]),
            f"| failed episodes missed | {_failures(d['failures'])} |",
            "",
            "![outcomes and timing](report.png)",
            "",
            "| episode | seed | success | duration (s) | object to target (cm) | missed |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {e.index} | {e.seed} | {'yes' if e.success else 'no'} | {e.duration_s:.2f} | "
                  f"{_fmt(None if e.distance_m is None else 100 * e.distance_m, '.1f')} | {', '.join(e.missed)} |"
                  for e in self.episodes]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(15, 3.8))
        idx = [e.index for e in self.episodes]
        colors = ["tab:green" if e.success else "tab:red" for e in self.episodes]
        ax1.bar(idx, [e.duration_s for e in self.episodes], color=colors)
        ax1.set(xlabel="episode", ylabel="duration (s)", title="Episodes (green = success)")
        distance = [np.nan if e.distance_m is None else 100 * e.distance_m for e in self.episodes]
        ax3.bar(idx, distance, color=colors)
        ax3.set(xlabel="episode", ylabel="object to target (cm)", title="Where the object ended")
        for ax in (ax1, ax3):
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        periods = np.asarray(self.command_periods_ms)
        if periods.size:
            ax2.hist(periods, bins=60, color="tab:blue", log=True)
            ax2.axvline(self.nominal_period_ms, color="k", ls="--", label="nominal")
            ax2.legend()
        ax2.set(xlabel="gate command period (ms)", ylabel="count", title="Command stream timing")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _json_safe(value: Any) -> Any:
    """NaN (a figure that was not measured) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _machine_rows(m: dict[str, Any]) -> list[str]:
    rtf, frames, load = m["twin_realtime_factor"], m["camera_frames"], m["load_average_1min"]
    return [
        f"| twin real-time factor (sim s per wall s) | p50 {_fmt(rtf['p50'], '.2f')}, min {_fmt(rtf['min'], '.2f')}; "
        f"sim time slipped {m['twin_slipped_s']:.2f} s |",
        f"| twin compute real-time factor | {_fmt(m['twin_compute_rtf'], '.1f', '×')} |",
        f"| camera frames rendered / skipped | {frames['rendered']} / {frames['skipped']} "
        f"({100 * frames['skipped_share']:.1f} % skipped) |",
        f"| machine load (1-min average) | p50 {_fmt(load['p50'], '.2f')}, max {_fmt(load['max'], '.2f')} "
        f"on {load['cpus']} CPUs |",
        f"| samples the middleware refused (twin, gate) | {m['publish_failures']} |",
    ]


def _failures(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def write_benchmark(results: dict[str, Any], json_path: Path, markdown: str) -> Path:
    """A benchmark's results as JSON at ``json_path`` and its summary beside it (.md); returns the summary."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md = json_path.with_suffix(".md")
    md.write_text(markdown)
    return md


def dropped_frames(commit: str) -> int:
    """Frames a recorder counted as dropped, from its commit message in ``meta.recorder_commits``
    (``episode=0 frames=212 dropped=camera_gap:2,stale_state:1 ...``; ``dropped=none``)."""
    counts = commit.split("dropped=")[1].split()[0]
    return 0 if counts == "none" else sum(int(item.split(":")[1]) for item in counts.split(","))
