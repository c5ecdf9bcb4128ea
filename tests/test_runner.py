"""The embedded runner: a failure message keeps a node's error lines, however long its last words; a
stopping node is waited for while it works and killed once it hangs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tether.runner import _tail, wait_while_working


def test_error_lines_before_the_tail_are_kept(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    lines = ["[INFO] starting", "[ERROR] [recorder]: the dataset writer process was killed by SIGKILL"]
    lines += [f"  traceback line {i}" for i in range(40)]
    log.write_text("\n".join(lines))
    message = _tail(log, lines=30)
    assert message.splitlines()[0] == lines[1]
    assert message.splitlines()[-1] == "  traceback line 39" and "[INFO] starting" not in message


def test_a_short_log_is_shown_whole(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text("[ERROR] boom\nbye")
    assert _tail(log) == "[ERROR] boom\nbye"
    assert _tail(tmp_path / "missing.log") == "(no log)"


def _stopping(body: str) -> subprocess.Popen[bytes]:
    """A node that ignores SIGTERM and then runs ``body`` (Python), as a busy or a hung node would."""
    code = f"import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n{body}"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    return proc


def test_a_stopping_node_that_works_is_waited_for_past_the_idle_limit() -> None:
    proc = _stopping("end = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\nsys.exit(0)")
    wait_while_working(proc, idle_s=0.5)
    assert proc.returncode == 0  # closed by itself after 1.5 s of work, three times the idle limit


def test_a_stopping_node_that_hangs_is_killed_once_idle() -> None:
    proc = _stopping("time.sleep(60)")
    start = time.monotonic()
    wait_while_working(proc, idle_s=0.5)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - start < 5.0
