"""Bring a dataset, and the raw MCAP logs beside it, back to a committed, valid state after a crash.

Four things can be left behind, handled in this order:

1. ``meta/commit.json``: a commit was interrupted after its journal was written. Every file it
   prepared is complete and fsynced, so the renames are finished (roll forward).
2. ``*.commit-tmp`` files without a journal: a commit was interrupted while preparing. They are
   deleted (roll back); the episode is still in ``.staging`` and is committed again by step 3.
3. ``.staging/episode_XXXXXX/``: an episode that was never committed. Its longest run of whole
   segments becomes an episode: with its recorded outcome when ``end_episode`` had been called
   (nothing was lost), else ``success=None, truncated=True`` (the open segment, < 1 s, is lost;
   or the episode was being committed as truncated by ``close()`` after its session failed).
4. ``<root>_mcap/episode_XXXXXX/`` bags that no reader opens (no ``metadata.yaml``, no footer: the
   recording was killed): each is rebuilt in place from what reached its file
   (:func:`tether.teleop.recording.mcap_repair.repair`), and the report says how much was kept and lost.

On a full disk it stops with :class:`~tether.errors.DiskFullError` (one line: the cause, and to free
space and run ``tether dataset recover`` again), having removed the files its own unfinished step
wrote; whatever it had finished stays done, so running it again once there is space picks up there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import DatasetError, DiskFullError, McapLogError
from tether.dataset.layout import (
    TMP_SUFFIX,
    DatasetLock,
    Layout,
    disk_full,
    read_episodes,
    read_info,
    spec_from_info,
)
from tether.dataset.commit import Commit, DatasetState, apply_journal
from tether.dataset.staging import StagedEpisode
from tether.teleop.recording.mcap_repair import WORK, LogRepair, bags, needs_repair, repair


@dataclass(frozen=True)
class RecoveredEpisode:
    episode_index: int
    frames: int
    truncated: bool
    staging: str
    dropped: list[str]


@dataclass(frozen=True)
class RepairedLog:
    bag: str  # relative to the dataset's parent folder
    repair: LogRepair
    episode_end_ns: int | None  # capture time of the last frame of the episode of the same index, if committed

    def __str__(self) -> str:
        text = f"repaired the raw log {self.bag} (its recording never closed it: a crash or a full disk): {self.repair}"
        last = self.repair.last_ns
        if self.episode_end_ns is not None and last is not None and self.episode_end_ns > last:
            text += f"; it ends {(self.episode_end_ns - last) / 1e9:.2f} s before the episode's last frame"
        return text


@dataclass
class RecoveryReport:
    rolled_forward: list[int] = field(default_factory=list)  # episodes whose commit was finished
    rolled_back: list[str] = field(default_factory=list)  # temporary files of unfinished commits
    recovered: list[RecoveredEpisode] = field(default_factory=list)
    discarded: list[tuple[str, str]] = field(default_factory=list)  # (staging folder, why)
    logs: list[RepairedLog] = field(default_factory=list)  # raw MCAP logs repaired
    unrepaired_logs: list[tuple[str, str]] = field(default_factory=list)  # (bag, why it cannot be repaired)

    @property
    def clean(self) -> bool:
        return not (self.rolled_forward or self.rolled_back or self.recovered or self.discarded or self.logs
                    or self.unrepaired_logs)

    def __str__(self) -> str:
        if self.clean:
            return "nothing to recover"
        lines = [f"finished the interrupted commit of episode {e}" for e in self.rolled_forward]
        lines += [f"removed unfinished commit file {p}" for p in self.rolled_back]
        for r in self.recovered:
            kind = "truncated (cut short by a crash, or its session failed)" if r.truncated else \
                "complete (ended before the crash)"
            lines.append(f"recovered {r.staging} as episode {r.episode_index}: {r.frames} frames, {kind}")
            lines += [f"  dropped: {d}" for d in r.dropped]
        lines += [f"discarded {s}: {why}" for s, why in self.discarded]
        lines += [str(log) for log in self.logs]
        lines += [f"cannot repair the raw log {bag} (left as it is): {why}" for bag, why in self.unrepaired_logs]
        return "\n".join(lines)


def recover(root: Path | str) -> RecoveryReport:
    """Finish or roll back an interrupted commit, commit every staged episode that has frames, repair cut-off logs.

    Raises DatasetLayoutError when ``root`` is not a dataset or a live writer holds it, and
    DiskFullError when the disk fills up meanwhile.
    """
    layout = Layout(Path(root))
    read_info(layout.root)
    lock = DatasetLock(layout.root)
    try:
        return _Recovery(layout).run()
    finally:
        lock.release()


class _Recovery:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.report = RecoveryReport()
        self.doing = "recovering the dataset"

    def run(self) -> RecoveryReport:
        try:
            self._dataset()
            self._logs()
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            self._roll_back()  # give back the space of the step that failed
            raise DiskFullError(self.layout.root, self.doing, full.reason) from exc
        return self.report

    def _dataset(self) -> None:
        layout = self.layout
        if layout.journal_path.is_file():
            self.doing = "finishing an interrupted commit"
            journal = json.loads(layout.journal_path.read_text())
            apply_journal(layout, journal)
            self.report.rolled_forward.append(int(journal["episode_index"]))
        self.report.rolled_back += self._roll_back()
        shutil.rmtree(layout.trash_root, ignore_errors=True)
        if layout.staging_root.is_dir():
            for staging in sorted(p for p in layout.staging_root.iterdir() if p.is_dir()):
                self.doing = f"committing {staging.relative_to(layout.root)}"
                _recover_staged(layout, staging, self.report)

    def _roll_back(self) -> list[str]:
        """Delete the files an unjournaled commit prepared; their episode is still staged."""
        removed = []
        if not self.layout.journal_path.is_file():
            for tmp in sorted(self.layout.root.rglob("*" + TMP_SUFFIX)):
                if self.layout.staging_root not in tmp.parents:
                    tmp.unlink()
                    removed.append(str(tmp.relative_to(self.layout.root)))
        return removed

    def _logs(self) -> None:
        """Repair each raw MCAP log that no reader opens: what a killed recording leaves."""
        ends: dict[str, int] | None = None
        for bag in bags(self.layout.raw_logs):
            if not needs_repair(bag):
                shutil.rmtree(bag / WORK, ignore_errors=True)  # a repair that ended just before its clean-up
                continue
            ends = self._episode_ends() if ends is None else ends
            name = str(bag.relative_to(self.layout.root.parent))
            self.doing = f"repairing the raw log {name}"
            try:
                self.report.logs.append(RepairedLog(name, repair(bag), ends.get(bag.name)))
            except Exception as exc:  # noqa: BLE001 - a damaged file can fail in many ways; each is named
                if disk_full(exc) is not None:
                    raise
                why = str(exc) if isinstance(exc, McapLogError) else f"{type(exc).__name__}: {exc}"
                self.report.unrepaired_logs.append((name, why))

    def _episode_ends(self) -> dict[str, int]:
        """Bag name -> capture time of the last frame of the committed episode with its index."""
        rows = read_episodes(self.layout)
        return {self.layout.raw_log(int(r["episode_index"])).name: int(r["capture_end_ns"])
                for r in rows if r.get("capture_end_ns") is not None}


def _recover_staged(layout: Layout, staging: Path, report: RecoveryReport) -> None:
    name = str(staging.relative_to(layout.root))
    state = DatasetState.load(layout)
    features = state.info["features"]
    try:
        staged = StagedEpisode.load(staging, spec_from_info(state.info), features)
    except (DatasetError, OSError, ValueError) as exc:
        if disk_full(exc) is not None:
            raise  # not a damaged episode: it stays staged for the next run
        report.discarded.append((name, str(exc)))
        shutil.rmtree(staging)
        return
    if staged.frames == 0:
        why = "no segment was flushed before the crash" + (f" ({'; '.join(staged.dropped)})" if staged.dropped else "")
        report.discarded.append((name, why))
        shutil.rmtree(staging)
        return
    result = Commit(layout, state, staged, truncated=staged.truncated).run()
    report.recovered.append(RecoveredEpisode(result.episode_index, result.frames, staged.truncated, name,
                                             staged.dropped))
