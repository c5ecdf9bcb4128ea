"""Reading a LeRobot v3 dataset into memory for training: frames line up with their rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tether.dataset.reader import load_demos
from tether.errors import DatasetError, DatasetLayoutError, TetherError


def test_failed_episodes_are_left_out_unless_asked(demos_root: Path) -> None:
    assert [e.index for e in load_demos(demos_root).episodes] == [0, 2]
    assert [e.index for e in load_demos(demos_root, only_success=False).episodes] == [0, 1, 2]


def test_each_frame_matches_its_row(demos_root: Path, demo_data) -> None:
    shade, state_of = demo_data.shade, demo_data.state_of
    demos = load_demos(demos_root, only_success=False)
    assert demos.cameras == ["front", "wrist"] and demos.image_size == demo_data.SIZE and demos.fps == 10
    for ep in demos.episodes:
        for i in range(len(ep)):
            np.testing.assert_allclose(ep.state[i], state_of(ep.index, i, 6), atol=1e-6)
            for k, cam in enumerate(demos.cameras):
                assert abs(float(ep.images[cam][i].mean()) - shade(ep.index, i, k)) < 4, (ep.index, i, cam)


def test_one_late_episode_is_decoded_alone_and_resized(demos_root: Path, demo_data) -> None:
    demos = load_demos(demos_root, image_size=(16, 24), episodes=[2])  # starts 2.7 s into the files: a seek
    wrist = demos.episodes[0].images["wrist"]
    assert wrist.shape == (9, 16, 24, 3)
    assert all(abs(float(f.mean()) - demo_data.shade(2, i, 1)) < 4 for i, f in enumerate(wrist))


def test_without_the_success_column_the_failed_episodes_are_never_kept_silently(tmp_path: Path,
                                                                               demos_root: Path) -> None:
    """After a tool that keeps only LeRobot's per-episode columns (lerobot's delete_episodes), the failures
    cannot be told apart: training on successes only is refused, naming the column and the way out."""
    root = Path(shutil.copytree(demos_root, tmp_path / "ds"))
    for path in root.glob("meta/episodes/*/*.parquet"):
        pq.write_table(pq.read_table(path).drop_columns(["success", "truncated"]), path)
    with pytest.raises(TetherError, match="no 'success' column for episode\\(s\\) 0-2.*--include-failed"):
        load_demos(root)
    assert [e.index for e in load_demos(root, only_success=False).episodes] == [0, 1, 2]


def test_not_a_dataset_or_nothing_to_train_on_is_a_clear_error(tmp_path: Path, demos_root: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="info.json"):
        load_demos(tmp_path)
    with pytest.raises(DatasetError, match="no episodes left"):
        load_demos(demos_root, episodes=[1])  # episode 1 failed


def test_only_uncorrected_rollouts_is_a_clear_error(corrected_root: Path) -> None:
    with pytest.raises(DatasetError, match="policy's own rollout"):
        load_demos(corrected_root, episodes=[2])
