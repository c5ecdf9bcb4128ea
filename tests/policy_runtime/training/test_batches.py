"""Training batches from the frames in memory: padding past an episode's end, normalization, augmentation, and
a policy's own actions kept as context only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tether.dataset.reader import load_demos
from tether.policy_runtime.training.batches import Affine, BatchSource, min_max, random_shift
from tether.policy_runtime.training.train import normalization


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
