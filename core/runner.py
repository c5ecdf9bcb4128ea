"""Embedded runner: starts a graph's nodes as processes of this venv, no ROS install needed.

Each node runs ``python -m tether_ros.<executable> --ros-args ...`` exactly as
``ros2 launch`` would run its console script. Node logs go to ``LOG_DIR``; the
terminal shows the session's progress. The run ends when the terminal node
exits; any other node dying first is a graph failure.

Nodes die with the runner: each asks the kernel for SIGTERM when the runner goes
(``PR_SET_PDEATHSIG``, even after a ``kill -9``), and each node also watches its parent
(``tether_ros.spin``), so no node keeps driving a robot without its supervisor.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.graph import NodeSpec, ParamValue, ProcessSpec, processes


class GraphFailed(TetherError):
    pass


def ros_args(spec: ProcessSpec) -> list[str]:
    args = ["--ros-args", *(["-r", f"__node:={spec.name}"] if spec.remap_name else [])]
    if spec.namespace:
        args += ["-r", f"__ns:={spec.namespace}"]
    if spec.params_file:  # rcl lets every `-p` below win over the file, as the launch files order them
        args += ["--params-file", spec.params_file]
    for key, value in spec.parameters.items():
        args += ["-p", f"{key}:={_param(value)}"]
    return args


def _param(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'"  # keep strings that look like numbers as strings
    return repr(value)


def graph_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # A private domain per run keeps parallel rehearsals (and tests) apart.
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class RunningNode:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log: Path


def run_graph(nodes: list[NodeSpec], log_dir: Path, timeout: float | None = None) -> int:
    """Run until the terminal node exits; return its exit code. Raises GraphFailed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = graph_env()
    running: list[RunningNode] = []
    with _Termination() as termination:
        try:
            with termination.deferred():  # a signal inside Popen would orphan the node being started
                for spec in processes(nodes):
                    running.append(_start(spec, log_dir, env))
            code = _wait(running, timeout)
        except BaseException:
            _stop(running)
            raise
        _check_clean_stop(_stop(running))
        return code


class _Termination:
    """SIGTERM and SIGHUP stop the graph as Ctrl-C does: the nodes run in their own sessions,
    so without this a ``kill`` or a closed terminal would leave them running. SIGINT is handled
    here too, so that a Ctrl-C while a node starts is deferred like the others."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._defer = False
        self._pending: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Termination:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer = True
        try:
            yield
        finally:
            self._defer = False
        if self._pending is not None:
            raise KeyboardInterrupt(self._pending)

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self._defer:
            self._pending = name
            return
        raise KeyboardInterrupt(name)


def _start(spec: ProcessSpec, log_dir: Path, env: dict[str, str]) -> RunningNode:
    log = log_dir / f"{spec.name}.log"
    cmd = [sys.executable, "-m", f"{spec.package}.{spec.executable}", *spec.arguments, *ros_args(spec)]
    # The terminal node's stderr (progress bar) goes to the terminal; everything is also in its log.
    out = open(log, "wb")  # noqa: SIM115 - closed when the process is reaped
    err = None if spec.terminal else subprocess.STDOUT
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent(os.getpid()))
    return RunningNode(spec, proc, log)


def _die_with_parent(parent: int) -> Any:
    """A ``preexec_fn``: SIGTERM this child when the runner dies (Linux; elsewhere the node's own watch)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _wait(running: list[RunningNode], timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    terminal = next(r for r in running if r.spec.terminal)
    while True:
        for r in running:
            if r is not terminal and r.process.poll() is not None:
                raise GraphFailed(f"node '{r.spec.name}' exited with {r.process.returncode}:\n{_tail(r.log)}")
        code = terminal.process.poll()
        if code is not None:
            return code
        if deadline is not None and time.monotonic() > deadline:
            raise GraphFailed(f"graph did not finish within {timeout:.0f} s")
        time.sleep(0.1)


def _stop(running: list[RunningNode]) -> list[RunningNode]:
    """SIGTERM every node still running and wait for each while it works; returns the nodes stopped here."""
    stopped = [r for r in running if r.process.poll() is None]
    for r in stopped:
        r.process.send_signal(signal.SIGTERM)
    for r in stopped:
        wait_while_working(r.process)
    return stopped


def wait_while_working(process: subprocess.Popen[bytes], idle_s: float = 5.0, cap_s: float = 120.0) -> None:
    """Wait for a stopping process as long as it uses CPU; SIGKILL it once idle for ``idle_s`` or after ``cap_s``.

    A node that closes does real work (a recorder commits its episode, the twin releases its GL
    context, DDS tears down): on a busy machine that took over 5 s, and a fixed 5 s grace killed a
    healthy node and failed the run. A hung node uses no CPU, and is still killed after ``idle_s``.
    """
    start = last_change = time.monotonic()
    last_cpu = _cpu_seconds(process.pid)
    while True:
        try:
            process.wait(timeout=0.2)
            return
        except subprocess.TimeoutExpired:
            pass
        now, cpu = time.monotonic(), _cpu_seconds(process.pid)
        if cpu != last_cpu:
            last_cpu, last_change = cpu, now
        if now - last_change > idle_s or now - start > cap_s:
            process.kill()
            process.wait()
            return


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) a process has used, from /proc; None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check_clean_stop(stopped: list[RunningNode]) -> None:
    """A node that fails to stop cleanly may have lost what it was closing (a recorder's last episode)."""
    unclean = [r for r in stopped if r.process.returncode != 0]
    if unclean:
        raise GraphFailed("; ".join(f"node '{r.spec.name}' exited with {r.process.returncode} when stopped:\n"
                                    f"{_tail(r.log)}" for r in unclean))


def _tail(path: Path, lines: int = 30) -> str:
    """The log's last lines, after its error lines that they leave out (a shutdown traceback can be long)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text[:-lines] if "[ERROR]" in line][-5:]
    return "\n".join([*errors, *(["..."] if errors else []), *text[-lines:]])
