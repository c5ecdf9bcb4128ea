"""Reading a LeRobot v3 dataset into memory for training: frames line up with their rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tether.errors import DatasetError, DatasetLayoutError, TetherError
from tether.policy_runtime.batches import Affine, BatchSource, min_max, random_shift
from tether.policy_runtime.dataset import load_demos
from tether.policy_runtime.train import normalization


@pytest.fixture(scope="module")
def demos_root(tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    return demo_data.write_demos(tmp_path_factory.mktemp("demos") / "ds", so101, [12, 15, 9], failed=(1,))


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


def identity_norms(joints: int = 6) -> dict[str, Affine]:
    ident = Affine([0.0] * joints, [1.0] * joints)
    return {"observation.state": ident, "action": ident, "images": Affine([0.0] * 3, [1.0] * 3)}


def test_batch_pads_actions_past_the_episode_end(demos_root: Path, demo_data) -> None:
    state_of, size = demo_data.state_of, demo_data.SIZE
    demos = load_demos(demos_root, only_success=False)
    src = BatchSource(demos, n_obs=2, chunk=5, norms=identity_norms(), device=torch.device("cpu"))
    last_of_first = torch.tensor([10, 0])  # frame 10 of episode 0 (12 frames), and its very first frame
    b = src.batch(last_of_first)
    assert b["action_is_pad"][0].tolist() == [False, False, True, True, True]
    # padded steps repeat the episode's last action, never the next episode's first
    np.testing.assert_allclose(b["action"][0, 2:].numpy(), np.repeat(state_of(0, 12, 6)[None], 3, 0), atol=1e-6)
    # history at an episode start repeats the first observation
    np.testing.assert_allclose(b["observation.state"][1, 0].numpy(), b["observation.state"][1, 1].numpy())
    assert b["observation.images.front"].shape == (2, 2, 3, *size)


def test_min_max_maps_the_range_to_plus_minus_one() -> None:
    x = np.array([[0.0, -2.0], [1.0, 2.0], [0.5, 0.0]])
    norm = min_max(x)
    out = norm.apply(torch.tensor(x))
    assert out.min(0).values.tolist() == [-1.0, -1.0] and out.max(0).values.tolist() == [1.0, 1.0]


def test_random_shift_moves_content_by_at_most_pad() -> None:
    x = torch.zeros(4, 1, 1, 8, 8)
    x[:, :, :, 4, 4] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    for img in out[:, 0, 0]:
        r, c = divmod(int(img.argmax()), 8)
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2 and img.sum() == 1.0


@pytest.fixture(scope="module")
def corrected_root(tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    """Episode 0: an expert demo. 1: a policy drives 6 frames, then a human corrects. 2: the policy alone."""
    return demo_data.write_demos(tmp_path_factory.mktemp("corrected") / "ds", so101, [8, 10, 7],
                                 takeover={1: 6, 2: 99})


def test_a_policys_own_actions_are_context_never_targets(corrected_root: Path, demo_data) -> None:
    state_of = demo_data.state_of
    demos = load_demos(corrected_root)
    assert [e.index for e in demos.episodes] == [0, 1]  # nobody corrected episode 2: nothing to learn
    assert demos.episodes[1].targets.tolist() == [False] * 6 + [True] * 4
    src = BatchSource(demos, n_obs=2, chunk=3, norms=identity_norms(), device=torch.device("cpu"))
    assert len(src) == demos.demonstrated_frames == 8 + 4
    b = src.batch(torch.arange(len(src)))
    wanted = [state_of(0, i + 1, 6) for i in range(8)] + [state_of(1, i + 1, 6) for i in range(6, 10)]
    np.testing.assert_allclose(b["action"][:, 0].numpy(), np.array(wanted), atol=1e-6)
    # The first corrected frame still sees the policy's last frame as its history.
    np.testing.assert_allclose(b["observation.state"][8, 0].numpy(), state_of(1, 5, 6), atol=1e-6)
    # Actions are normalized for what the policy will output: the demonstrated ones.
    np.testing.assert_allclose(normalization("act", demos)["action"].mean, np.mean(wanted, 0), atol=1e-5)


def test_only_uncorrected_rollouts_is_a_clear_error(corrected_root: Path) -> None:
    with pytest.raises(DatasetError, match="policy's own rollout"):
        load_demos(corrected_root, episodes=[2])
