"""``tether bench gate``: the gate under attack for minutes, judged by what reached the command topic.

The adversary node (``tether_ros.adversary_node``) floods the active source's topic with valid
chunks, mixes in every kind of malformed chunk (``tether.attack``), latches and clears the e-stop
and switches sources, while it records each command on the wire and the joint states. This
module turns that record into the figures: the largest ratio of commanded velocity,
acceleration and lead over the measured state to their limits (each must stay <= 1), the
stream's period, and the refusals by reason as the gate counted them.

Ratios are per tick, the quantity the safety filter bounds: velocity |dq| / (v_max * period),
acceleration |d2q| / (a_max * period^2). The baseline for the stream is its nominal period.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.robot_profile import RobotProfile
from tether.report import write_benchmark

OBSERVATIONS = "observations.npz"


@dataclass
class SoakRecord:
    """What the adversary saw: each command (stamp, positions) with the joint state measured before it."""

    stamps: np.ndarray  # (T,) s
    commands: np.ndarray  # (T, n)
    measured: np.ndarray  # (T, n)
    gate: dict[str, str] = field(default_factory=dict)  # the gate's last diagnostics
    sent: dict[str, int] = field(default_factory=dict)  # chunks sent, by attack kind

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / OBSERVATIONS
        np.savez(path, stamps=self.stamps, commands=self.commands, measured=self.measured,
                 gate=json.dumps(self.gate), sent=json.dumps(self.sent))
        return path

    @classmethod
    def load(cls, folder: Path) -> SoakRecord:
        with np.load(folder / OBSERVATIONS) as data:
            return cls(data["stamps"], data["commands"], data["measured"], json.loads(str(data["gate"])),
                       json.loads(str(data["sent"])))


def analyse(record: SoakRecord, profile: RobotProfile, period: float, max_step: float,
            tail_s: float = 0.5) -> dict[str, Any]:
    """The figures; the last ``tail_s`` (the graph being stopped around the gate) are left out."""
    keep = record.stamps <= record.stamps[-1] - tail_s if len(record.stamps) else record.stamps.astype(bool)
    q, t = record.commands[keep], record.stamps[keep]
    if len(t) < 3:
        raise ValueError(f"the soak recorded {len(t)} commands; nothing to judge (did the graph run?)")
    ticks = np.maximum(1, np.round(np.diff(t) / period))  # a command lost on the way spans two ticks
    velocity = np.diff(q, axis=0) / (ticks[:, None] * period)
    consecutive = (ticks[1:] == 1) & (ticks[:-1] == 1)
    accel = (np.diff(velocity, axis=0) / period)[consecutive]
    periods = np.diff(t) * 1e3
    counters = {k: int(float(v)) for k, v in record.gate.items() if _is_number(v)}
    return {
        "duration_s": float(t[-1] - t[0]),
        "commands": int(len(t)),
        "velocity_ratio_max": _ratio(velocity, profile.max_velocity),
        "acceleration_ratio_max": _ratio(accel, profile.max_acceleration),
        # Judged on the joint states the adversary saw, which can be one state period from the gate's.
        "step_ratio_max": float(np.max(np.abs(q - record.measured[keep])) / max_step),
        "ticks_beyond_max_step": int(np.sum(np.max(np.abs(q - record.measured[keep]), axis=1) > max_step * 1.05)),
        "position_excess_rad": float(max(0.0, np.max(q - profile.upper), np.max(profile.lower - q))),
        "command_period_ms": {"nominal": period * 1e3, "p50": float(np.percentile(periods, 50)),
                              "p99": float(np.percentile(periods, 99)), "max": float(periods.max())},
        "missed_deadlines": int(np.sum(periods > 2e3 * period)),
        "gate_tick_period_p99_ms": float(record.gate.get("tick_period_p99_ms", "nan")),
        "refused_by_reason": {k.removeprefix("rejected_"): v for k, v in sorted(counters.items())
                              if k.startswith("rejected_")},
        "holds_by_reason": {k.removeprefix("hold_"): v for k, v in sorted(counters.items())
                            if k.startswith("hold_") and k != "hold_ticks"},
        "chunks_accepted": counters.get("chunks", 0),
        "chunks_sent": record.sent,
    }


def _ratio(values: np.ndarray, limits: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"max": float("nan")}
    per_joint = np.max(np.abs(values), axis=0) / limits
    return {"max": float(per_joint.max()), "per_joint": [round(float(r), 4) for r in per_joint]}


def _is_number(value: str) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def markdown(r: dict[str, Any]) -> str:
    per = r["command_period_ms"]
    lines = [
        "# Gate under attack", "",
        f"{r['duration_s']:.0f} s of a rehearsal with a flood of valid chunks and every kind of malformed chunk "
        "on the active source's topic, e-stops and source switches. Ratios are per tick against the profile's "
        "limits (<= 1 holds the limit); the stream's baseline is its nominal period.", "",
        "| figure | value |", "|---|---|",
        f"| commands on the wire | {r['commands']} |",
        f"| max velocity / limit | {r['velocity_ratio_max']['max']:.4f} |",
        f"| max acceleration / limit | {r['acceleration_ratio_max']['max']:.4f} |",
        f"| max lead over the measured state / max_step | {r['step_ratio_max']:.4f} |",
        f"| ticks led beyond max_step (the arm ran away from its command; the gate stops it: tracking_error) | "
        f"{r['ticks_beyond_max_step']} of {r['commands']} |",
        f"| beyond a joint limit | {r['position_excess_rad']:.2e} rad |",
        f"| command period p50 / p99 / max (nominal {per['nominal']:.1f} ms) | "
        f"{per['p50']:.2f} / {per['p99']:.2f} / {per['max']:.1f} ms |",
        f"| missed deadlines (period > 2x nominal) | {r['missed_deadlines']} |",
        f"| gate's own tick period p99 | {r['gate_tick_period_p99_ms']:.2f} ms |",
        f"| chunks sent / accepted | {sum(r['chunks_sent'].values())} / {r['chunks_accepted']} |",
        "", "| refused, by reason | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r["refused_by_reason"].items()],
        "", "| sent, by kind | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(r["chunks_sent"].items())],
    ]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], json_path: Path) -> Path:
    return write_benchmark(results, json_path, markdown(results))
