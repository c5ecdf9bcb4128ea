"""The embedded runner's failure message keeps a node's error lines, however long its last words."""

from __future__ import annotations

from pathlib import Path

from tether.runner import _tail


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
