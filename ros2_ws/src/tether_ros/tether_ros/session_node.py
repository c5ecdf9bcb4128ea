"""Session node: runs N episodes (reset, run until success or timeout), then writes the report.

Resets go through services of the twin, the action source and the gate. The
node listens to the gated command stream (period jitter as seen on the wire),
to ``/diagnostics`` (gate latency and counters, twin real-time factor) and to
one camera for the episode video. It exits when the report is written; a graph
that cannot be reached makes it exit non-zero.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.client import Client
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from tqdm import tqdm
from trajectory_msgs.msg import JointTrajectory

from tether.report import EpisodeResult, MachineTiming, RehearsalReport
from tether.robot_profile import load_profile
from tether.video import VideoWriter
from tether_ros.conversions import (
    DIAGNOSTICS,
    INTERVENTION,
    LATCHED_QOS,
    TELEOP_EVENT,
    camera_topic,
    status_name,
    to_sec,
)
from tether_ros.spin import run


class GraphError(RuntimeError):
    """A node the session needs did not answer."""


@dataclass
class _Outcome:
    """How an episode ended: the twin's last answer, the operator's button, its length in robot time."""

    success: bool = False
    state: Trigger.Response | None = None  # the twin's last answer: why the episode has not succeeded
    event: str = ""  # success, failure, discard, rerecord: the operator ended it
    duration_s: float = 0.0


class _StallWatch:
    """A twin that answers but whose time stands still is stuck, however slow the machine: fail, don't wait forever."""

    LIMIT_S = 30.0  # wall seconds without any sim-time progress

    def __init__(self) -> None:
        self._last, self._since = -1.0, time.monotonic()

    def check(self, sim_time: float) -> None:
        if sim_time != self._last:
            self._last, self._since = sim_time, time.monotonic()
        elif time.monotonic() - self._since > self.LIMIT_S:
            raise GraphError(f"the twin's time has not advanced for {self.LIMIT_S:.0f} s (stuck at t={sim_time:.3f} s)")


class SessionNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("session", **kwargs)  # type: ignore[arg-type]
        p = self.declare_parameter
        self.profile = load_profile(str(p("robot", "so101").value))
        self.episodes = int(p("episodes", 2).value)
        self.seed = int(p("seed", 0).value)
        self.timeout_s = float(p("episode_timeout", 20.0).value)
        self.report_dir = Path(str(p("report", "runs/rehearsal").value))
        self.source = str(p("source", "expert").value)
        self.task = str(p("task", "pick_place").value)
        self.video_camera = str(p("video_camera", "front").value)
        self.video_episodes = int(p("video_episodes", 1).value)
        self.record = bool(p("record", False).value)  # collect: the recorder commits each episode
        self.human_source = str(p("human_source", "").value)  # a teleop node to reset each episode
        self.stop_on_success = bool(p("stop_on_success", True).value)  # False: run the whole timeout (soak)
        # Seconds to keep running after success, so demos also hold the release and retreat.
        self.linger_s = float(p("linger_s", 0.0).value)
        self.nominal_period = 1.0 / float(p("gate_rate_hz", 200.0).value)
        self.finished = False
        self.exit_code = 0
        self._gate: dict[str, str] = {}
        self._rtf: dict[str, list[float]] = {"realtime_factor": [], "compute_rtf": []}
        self._twin: dict[str, str] = {}  # the twin's latest diagnostics (frames drawn and skipped, time slipped)
        self._load: list[float] = []
        self._video: VideoWriter | None = None
        # Frames are encoded in the executor thread and the file closed in the episode thread;
        # PyAV is not thread-safe, so both hold this lock.
        self._video_lock = threading.Lock()
        self._recording = False
        self._trigger_clients = self._session_clients()
        self._commits: list[str] = []
        self._recorder: dict[str, str] = {}
        self._intervention = False
        self._bar: tqdm | None = None
        self._successes = 0
        self._periods: list[float] = []
        self._last_command: float | None = None
        # A deep queue (1 s of commands): a busy machine may starve this process for a while, and a
        # command dropped here would read as a missed deadline of the gate.
        self.create_subscription(JointTrajectory, self.profile.command_topic, self._on_command,
                                 QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diag, 50)
        self.create_subscription(Bool, INTERVENTION, self._on_intervention, LATCHED_QOS)
        # The operator's episode buttons: success/failure end the episode, discard drops it,
        # rerecord drops it and runs the same episode index again.
        self._events: collections.deque[str] = collections.deque()
        self.create_subscription(String, TELEOP_EVENT, lambda m: self._events.append(str(m.data)), 10)
        self._discarded = 0
        self._rerecorded = 0
        self._image_sub: Subscription | None = self.create_subscription(Image, camera_topic(self.video_camera), self._on_image, 5)
        self._episodes_done = 0
        self.create_timer(0.5, self._drop_camera_when_done)
        self.create_timer(1.0, lambda: self._load.append(os.getloadavg()[0]))
        threading.Thread(target=self._main, daemon=True).start()

    def _session_clients(self) -> dict[str, Client]:
        """The services this session calls, and only those (each one is work for every spin)."""
        # Relative: the nodes' private services (~/reset) under this graph's namespace.
        services = {"twin_reset": "twin/reset", "twin_start": "twin/start", "success": "twin/success",
                    "source_reset": f"{self.source}/reset", "gate_reset": "gate/reset"}
        if self.record:
            services.update(record_begin="recorder/begin", record_success="recorder/commit_success",
                            record_failure="recorder/commit_failure", record_discard="recorder/discard")
        if self.human_source:
            services["human_reset"] = f"{self.human_source}/reset"
        return {name: self.create_client(Trigger, srv) for name, srv in services.items()}

    # --- listeners ----------------------------------------------------------
    def _on_intervention(self, msg: Bool) -> None:
        self._intervention = bool(msg.data)

    def _on_command(self, msg: JointTrajectory) -> None:
        # The gate stamps each command with its tick's time: these are the stream's periods as the gate
        # kept them, whatever this process's scheduling. (DDS's reception times come only with
        # MessageInfo, which rclpy's EventsExecutor cannot deliver.)
        stamp = to_sec(msg.header.stamp)
        if self._last_command is not None and self._recording:
            self._periods.append((stamp - self._last_command) * 1e3)
        self._last_command = stamp

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == status_name(self, "gate") and "commands" in values:
                self._gate = values
            elif status.name == status_name(self, "recorder"):
                self._recorder = values
            elif status.name == status_name(self, "twin"):
                self._twin = values
                for key, series in self._rtf.items():
                    if key in values:
                        series.append(float(values[key]))

    def _on_image(self, msg: Image) -> None:
        with self._video_lock:
            if self._video is None or not self._recording:
                return
            frame = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            self._video.write(frame)

    def _drop_camera_when_done(self) -> None:
        # In the executor thread: once the videos are written, unsubscribe so the twin stops rendering.
        if self._image_sub is not None and self._episodes_done >= self.video_episodes:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None

    # --- episodes -----------------------------------------------------------
    def _call(self, name: str, timeout: float = 10.0, appear_timeout: float = 60.0) -> Trigger.Response:
        client = self._trigger_clients[name]
        # Appearing can take long: a source may be loading and warming up a model on a busy machine.
        # A node that dies meanwhile fails the graph through the runner, so this wait is not the guard.
        if not client.wait_for_service(timeout_sec=appear_timeout):
            raise GraphError(f"service {client.srv_name} did not appear within {appear_timeout:.0f} s")
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline or not rclpy.ok():
                raise GraphError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
            time.sleep(0.005)
        result = future.result()
        assert result is not None
        return result

    def _episode(self, index: int) -> EpisodeResult | str:
        """The episode's result, or "discard"/"rerecord" when the operator dropped it."""
        seed = self._reset_graph(index)
        outcome = self._run_episode()
        if outcome.event in ("discard", "rerecord"):
            if self.record:
                dropped = self._call("record_discard", timeout=60.0)
                if not dropped.success:
                    raise GraphError(f"recorder could not discard episode {index}: {dropped.message}")
            self._close_video()
            self.get_logger().info(f"episode {index}: {outcome.event} (operator)")
            return outcome.event
        if self.record:
            commit = self._call("record_success" if outcome.success else "record_failure", timeout=60.0)
            if not commit.success:
                raise GraphError(f"recorder could not commit episode {index}: {commit.message}")
            self._commits.append(commit.message)
        self._close_video()
        missed, distance = _outcome(outcome.state, outcome.success)
        return EpisodeResult(index, seed, outcome.success, outcome.duration_s, missed, distance)

    def _reset_graph(self, index: int) -> int:
        """Reset the twin, the sources and the gate, open the video and begin recording; returns the seed."""
        self._recording = False
        seed_msg = self._call("twin_reset").message
        self._call("source_reset")
        if self.human_source:
            self._call("human_reset")
        self._call("gate_reset")
        if index < self.video_episodes:
            with self._video_lock:
                self._video = VideoWriter(self.report_dir / f"episode_{index:03d}.mp4", fps=30)
        if self.record:
            self._call("record_begin")
        self._call("twin_start")  # a twin with hold_after_reset stood still until now: episode time 0 is here
        self._last_command = None
        self._events.clear()  # a button pressed between episodes does not end the next one
        self._recording = True
        return int(seed_msg.split("=")[1]) if seed_msg.startswith("seed=") else -1

    def _run_episode(self) -> _Outcome:
        """Run until success (plus linger), an operator's button or the timeout.

        Time is the twin's: an episode lasts ``episode_timeout`` seconds of robot time, so a
        machine that cannot keep real time runs it slower instead of cutting it short.
        """
        out, start, watch = _Outcome(), time.monotonic(), _StallWatch()
        succeeded_at: float | None = None
        while out.duration_s < self.timeout_s or self._lingering(succeeded_at, out.duration_s):
            time.sleep(0.1)
            self._status(out.duration_s)
            out.event = self._operator_event()
            if out.event:
                out.success = out.event == "success"
                break
            state = self._call("success")
            out.duration_s = _episode_time(state, time.monotonic() - start)
            watch.check(out.duration_s)
            if succeeded_at is None:
                out.state = state
                if state.success:
                    out.success, succeeded_at = True, out.duration_s
            if succeeded_at is not None and self.stop_on_success and not self._lingering(succeeded_at, out.duration_s):
                break
        if succeeded_at is not None:
            out.duration_s = succeeded_at
        return out

    def _operator_event(self) -> str:
        """An episode button pressed (success, failure, discard, rerecord), or ""."""
        while self._events:
            event = self._events.popleft()
            if event in ("success", "failure", "discard", "rerecord"):
                return event
            self.get_logger().warning(f"unknown teleop event '{event}' ignored")
        return ""

    def _lingering(self, succeeded_at: float | None, now: float) -> bool:
        return succeeded_at is not None and now - succeeded_at < self.linger_s

    def _close_video(self) -> None:
        with self._video_lock:
            self._recording = False
            if self._video is not None:
                self._video.close()
                self._video = None

    def _status(self, elapsed: float) -> None:
        """The live status line: episode, time, who drives, recorded frames and drops, the twin's speed."""
        if self._bar is None:
            return
        index = self._episodes_done
        status = {"ep": index, "ok": f"{self._successes}/{index}", "t": f"{elapsed:4.1f}s",
                  "human": "yes" if self._intervention else "no"}
        if self._rtf["realtime_factor"] and self._rtf["realtime_factor"][-1] < 0.95:
            status["rt"] = f"{self._rtf['realtime_factor'][-1]:.2f}x"  # the twin runs slower than real time
        if self.record and self._recorder:
            status["frames"] = self._recorder.get("episode_frames", "0")
            status["dropped"] = sum(int(v) for k, v in self._recorder.items() if k.startswith("dropped_"))
        self._bar.set_postfix(status, refresh=True)

    def _main(self) -> None:
        try:
            results: list[EpisodeResult] = []
            desc = "collect" if self.record else "rehearsal"
            bar = tqdm(total=self.episodes, desc=desc, unit="ep", file=sys.stderr, dynamic_ncols=True)
            self._bar = bar
            i = 0
            while i < self.episodes:
                result = self._episode(i)
                if result == "rerecord":  # the same episode index again
                    self._rerecorded += 1
                    continue
                i += 1
                bar.update(1)
                self._episodes_done += 1
                if result == "discard":  # dropped and counted; on to the next episode
                    self._discarded += 1
                    continue
                assert isinstance(result, EpisodeResult)
                results.append(result)
                self._successes += result.success
                bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
            bar.close()
            time.sleep(1.2)  # let the gate's 1 Hz diagnostics catch the last episode
            self._write(results)
        except Exception as exc:  # noqa: BLE001 - the node must report any failure and exit non-zero
            self.get_logger().error(f"rehearsal failed: {exc}")
            self.exit_code = 2
        self.finished = True

    def _machine_timing(self) -> MachineTiming:
        twin = self._twin
        return MachineTiming(
            realtime_factor=list(self._rtf["realtime_factor"]), compute_rtf=list(self._rtf["compute_rtf"]),
            slipped_s=float(twin.get("slipped_s", 0.0)), frames_rendered=int(twin.get("frames_rendered", 0)),
            frames_skipped=int(twin.get("frames_skipped", 0)), load_average=list(self._load), cpus=os.cpu_count() or 0,
            publish_failures=int(twin.get("publish_failures", 0)) + int(self._gate.get("publish_failures", 0)))

    def _write(self, results: list[EpisodeResult]) -> None:
        gate = dict(self._gate)
        latency = {k: float(gate[f"latency_{k}_ms"]) for k in ("p50", "p99") if f"latency_{k}_ms" in gate}
        report = RehearsalReport(
            episodes=results,
            obs_to_command_ms=latency,
            command_periods_ms=self._periods,
            nominal_period_ms=self.nominal_period * 1e3,
            gate=gate,
            machine=self._machine_timing(),
            meta={"robot": self.profile.name, "task": self.task, "source": self.source, "seed": self.seed,
                  "recorder_commits": self._commits, "discarded_episodes": self._discarded,
                  "rerecorded_episodes": self._rerecorded,
                  "clock": "sim" if self.get_parameter("use_sim_time").value else "wall"},
        )
        data = report.write(self.report_dir)
        self.get_logger().info(
            f"success {data['successes']}/{data['episodes']} ci95={np.round(data['ci95'], 3).tolist()} "
            f"report: {self.report_dir / 'report.md'}"
        )


def _episode_time(state: Trigger.Response, wall_elapsed: float) -> float:
    """Sim seconds since the twin's reset, from its ``~/success`` answer (``t``); wall time if it gives none."""
    try:
        return float(json.loads(state.message)["t"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return wall_elapsed


def _outcome(state: Trigger.Response | None, success: bool) -> tuple[tuple[str, ...], float | None]:
    """The conditions missed and object-to-target distance from the twin's ``~/success`` answer."""
    try:
        detail = json.loads(state.message) if state is not None else {}
    except json.JSONDecodeError:  # a twin that does not describe its outcome
        detail = {}
    missed = () if success else tuple(detail.get("missed", ("operator" if state is None else "unknown",)))
    return missed, detail.get("distance_m")


NODE = SessionNode  # for tether_ros.container


def main(args: list[str] | None = None) -> int:
    return run(SessionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
