"""Bring a dataset back to a committed, valid state after a crash.

Three things can be left behind, handled in this order:

1. ``meta/commit.json``: a commit was interrupted after its journal was written. Every file it
   prepared is complete and fsynced, so the renames are finished (roll forward).
2. ``*.commit-tmp`` files without a journal: a commit was interrupted while preparing. They are
   deleted (roll back); the episode is still in ``.staging`` and is committed again by step 3.
3. ``.staging/episode_XXXXXX/``: an episode that was never committed. Its longest run of whole
   segments becomes an episode: with its recorded outcome when ``end_episode`` had been called
   (nothing was lost), else ``success=None, truncated=True`` (the open segment, < 1 s, is lost).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import DatasetError
from tether.teleop.dataset.layout import TMP_SUFFIX, DatasetLock, Layout, read_info, spec_from_info
from tether.teleop.dataset.writer import Commit, DatasetState, StagedEpisode, apply_journal


@dataclass(frozen=True)
class RecoveredEpisode:
    episode_index: int
    frames: int
    truncated: bool
    staging: str
    dropped: list[str]


@dataclass
class RecoveryReport:
    rolled_forward: list[int] = field(default_factory=list)  # episodes whose commit was finished
    rolled_back: list[str] = field(default_factory=list)  # temporary files of unfinished commits
    recovered: list[RecoveredEpisode] = field(default_factory=list)
    discarded: list[tuple[str, str]] = field(default_factory=list)  # (staging folder, why)

    @property
    def clean(self) -> bool:
        return not (self.rolled_forward or self.rolled_back or self.recovered or self.discarded)

    def __str__(self) -> str:
        if self.clean:
            return "nothing to recover"
        lines = [f"finished the interrupted commit of episode {e}" for e in self.rolled_forward]
        lines += [f"removed unfinished commit file {p}" for p in self.rolled_back]
        for r in self.recovered:
            kind = "truncated at the last flushed segment" if r.truncated else "complete (ended before the crash)"
            lines.append(f"recovered {r.staging} as episode {r.episode_index}: {r.frames} frames, {kind}")
            lines += [f"  dropped: {d}" for d in r.dropped]
        lines += [f"discarded {s}: {why}" for s, why in self.discarded]
        return "\n".join(lines)


def recover(root: Path | str) -> RecoveryReport:
    """Finish or roll back an interrupted commit, then commit every staged episode that has frames.

    Raises DatasetLayoutError when ``root`` is not a dataset or a live writer holds it.
    """
    layout = Layout(Path(root))
    read_info(layout.root)
    lock = DatasetLock(layout.root)
    try:
        return _recover(layout)
    finally:
        lock.release()


def _recover(layout: Layout) -> RecoveryReport:
    report = RecoveryReport()
    if layout.journal_path.is_file():
        journal = json.loads(layout.journal_path.read_text())
        apply_journal(layout, journal)
        report.rolled_forward.append(int(journal["episode_index"]))
    for tmp in sorted(layout.root.rglob("*" + TMP_SUFFIX)):
        if layout.staging_root not in tmp.parents:
            tmp.unlink()
            report.rolled_back.append(str(tmp.relative_to(layout.root)))
    shutil.rmtree(layout.trash_root, ignore_errors=True)
    if layout.staging_root.is_dir():
        for staging in sorted(p for p in layout.staging_root.iterdir() if p.is_dir()):
            _recover_staged(layout, staging, report)
    return report


def _recover_staged(layout: Layout, staging: Path, report: RecoveryReport) -> None:
    name = str(staging.relative_to(layout.root))
    state = DatasetState.load(layout)
    features = state.info["features"]
    try:
        staged = StagedEpisode.load(staging, spec_from_info(state.info), features)
    except (DatasetError, OSError, ValueError) as exc:
        report.discarded.append((name, str(exc)))
        shutil.rmtree(staging)
        return
    if staged.frames == 0:
        why = "no segment was flushed before the crash" + (f" ({'; '.join(staged.dropped)})" if staged.dropped else "")
        report.discarded.append((name, why))
        shutil.rmtree(staging)
        return
    truncated = not staged.ended or bool(staged.dropped)
    result = Commit(layout, state, staged, truncated=truncated).run()
    report.recovered.append(RecoveredEpisode(result.episode_index, result.frames, truncated, name, staged.dropped))
