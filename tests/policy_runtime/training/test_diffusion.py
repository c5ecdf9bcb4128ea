"""Diffusion Policy: the noise schedule and DDIM on their own, padding, shapes, overfitting,
and ONNX parity of the graph that unrolls every DDIM step."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tether.errors import ConfigError, PolicyError
from tether.policy_runtime.training.diffusion import DiffusionConfig, DiffusionPolicy, NoiseSchedule
from tether.policy_runtime.training.models import build_policy, export_onnx, hold_padding

STATE_DIM, ACTION_DIM, CAMERAS, IMAGE = 4, 3, ["front"], (32, 32)
# Tiny: one ResNet stage (stride 4: an 8x8 keypoint grid), a two-level UNet, 5 DDIM steps.
TINY = DiffusionConfig(chunk_length=8, backbone_width=8, backbone_blocks=(1,), num_keypoints=4, crop_fraction=1.0,
                       down_dims=(16, 32), kernel_size=3, n_groups=4, step_embed_dim=16, num_train_timesteps=50,
                       ddim_steps=5)


def tiny_policy(config: DiffusionConfig = TINY, cameras: list[str] = CAMERAS) -> DiffusionPolicy:
    torch.manual_seed(0)
    policy = build_policy("diffusion", config, STATE_DIM, ACTION_DIM, cameras, IMAGE)
    assert isinstance(policy, DiffusionPolicy)
    return policy


def make_batch(batch_size: int = 4, config: DiffusionConfig = TINY, cameras: list[str] = CAMERAS,
               seed: int = 1) -> dict[str, torch.Tensor]:
    """A training batch in [-1, 1] action space; the first sample's episode ends after 5 actions."""
    g = torch.Generator().manual_seed(seed)
    n, k = config.n_obs_steps, config.chunk_length
    batch = {"observation.state": torch.randn(batch_size, n, STATE_DIM, generator=g),
             "action": torch.rand(batch_size, k, ACTION_DIM, generator=g) * 2 - 1,
             "action_is_pad": torch.zeros(batch_size, k, dtype=torch.bool)}
    for cam in cameras:
        batch[f"observation.images.{cam}"] = torch.randn(batch_size, n, 3, *IMAGE, generator=g)
    batch["action_is_pad"][0, 5:] = True
    return batch


def observation(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k.startswith("observation.")}


# --- the scheduler ----------------------------------------------------------------------------------------

def test_alphas_cumprod_decreases_inside_zero_one() -> None:
    abar = NoiseSchedule(100).alphas_cumprod
    assert abar.shape == (100,)
    assert bool((abar > 0).all() and (abar < 1).all())
    assert bool((abar[1:] < abar[:-1]).all())
    assert abar[0] > 0.999 and abar[-1] < 1e-3  # nearly clean at t=0, nearly pure noise at T-1


def test_add_noise_mixes_signal_and_noise_by_alphas_cumprod() -> None:
    schedule = NoiseSchedule(100)
    x0, noise = torch.ones(2, 3, 1), torch.full((2, 3, 1), 2.0)
    t = torch.tensor([0, 60])
    noisy = schedule.add_noise(x0, noise, t)
    for i, step in enumerate(t.tolist()):
        a = float(schedule.alphas_cumprod[step])
        torch.testing.assert_close(noisy[i], torch.full((3, 1), math.sqrt(a) + 2 * math.sqrt(1 - a)))


def test_ddim_timesteps_start_at_pure_noise_and_descend() -> None:
    schedule = NoiseSchedule(100)
    assert schedule.ddim_timesteps(10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert schedule.ddim_timesteps(100) == list(range(99, -1, -1))


@pytest.mark.parametrize("steps", [100, 10, 3])
def test_ddim_with_the_true_noise_walks_down_the_noising_path_to_x0(steps: int) -> None:
    schedule = NoiseSchedule(100)
    abar = schedule.alphas_cumprod.tolist()
    g = torch.Generator().manual_seed(0)
    # float64: x0 is recovered by dividing by sqrt(alphas_cumprod), which is ~5e-4 at T-1.
    x0 = torch.rand(2, 16, 3, generator=g, dtype=torch.float64) * 1.8 - 0.9  # known, inside the clip range
    noise = torch.randn(2, 16, 3, generator=g, dtype=torch.float64)
    seen: dict[int, torch.Tensor] = {}

    def true_noise(x: torch.Tensor, t: int) -> torch.Tensor:  # a perfect model: it predicts the noise used
        seen[t] = x
        return noise

    x_start = math.sqrt(abar[99]) * x0 + math.sqrt(1 - abar[99]) * noise
    result = schedule.sample(x_start, true_noise, steps, clip=1.0)
    torch.testing.assert_close(result, x0, rtol=0, atol=1e-9)
    assert list(seen) == schedule.ddim_timesteps(steps)
    for t, x in seen.items():  # every intermediate sample is x0 noised to exactly its step's level
        torch.testing.assert_close(x, math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * noise, rtol=0, atol=1e-9)


def test_ddim_clips_its_x0_estimate() -> None:
    schedule = NoiseSchedule(20)
    out = schedule.sample(torch.randn(1, 8, 2) * 10, lambda x, t: torch.zeros_like(x), 4, clip=1.0)
    assert out.abs().max() <= 1.0 + 1e-6


# --- padding and the loss ------------------------------------------------------------------------------

def test_hold_padding_repeats_the_last_real_action() -> None:
    actions = torch.arange(12.0).reshape(2, 3, 2)
    is_pad = torch.tensor([[False, True, True], [False, False, False]])
    held = hold_padding(actions, is_pad)
    torch.testing.assert_close(held[0], torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(held[1], actions[1])


def test_padded_actions_do_not_change_the_loss() -> None:
    policy = tiny_policy().train()
    batch = make_batch()
    changed = dict(batch, action=batch["action"].clone())
    changed["action"][batch["action_is_pad"]] = float("nan")  # garbage past the episode's end
    torch.manual_seed(3)  # same timesteps and noise both times
    loss, logs = policy.compute_loss(batch)
    torch.manual_seed(3)
    loss_changed, _ = policy.compute_loss(changed)
    torch.testing.assert_close(loss_changed, loss)
    loss_changed.backward()  # NaN padding must not leak into the gradients either
    assert all(bool(p.grad.isfinite().all()) for p in policy.parameters() if p.grad is not None)
    assert logs["loss"] == pytest.approx(loss.item())
    changed["action"][1, 0] += 1.0  # a real step does count
    torch.manual_seed(3)
    assert not torch.allclose(policy.compute_loss(changed)[0], loss)


@pytest.mark.parametrize("unet_block", ["group_mish", "batch_relu"])
def test_a_few_hundred_steps_overfit_a_tiny_batch(unet_block: str) -> None:
    policy = tiny_policy(dataclasses.replace(TINY, unet_block=unet_block)).train()
    batch = make_batch()
    # Each sample 4 times per step: more (timestep, noise) draws, so the noisy loss falls steadily.
    repeated = {k: v.repeat(4, *[1] * (v.dim() - 1)) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss, logs = policy.compute_loss(repeated)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["loss"])
    assert np.mean(losses[:20]) > 0.8  # epsilon prediction starts near the noise's variance, 1
    assert np.mean(losses[-20:]) < 0.35 * np.mean(losses[:20])


# --- inference and export ------------------------------------------------------------------------------

def test_predict_chunk_is_determined_by_the_noise() -> None:
    policy = tiny_policy().train()
    obs = observation(make_batch(2))
    noise = torch.randn(2, TINY.chunk_length, ACTION_DIM)
    chunk = policy.predict_chunk(obs, noise)
    assert chunk.shape == (2, TINY.chunk_length, ACTION_DIM)
    torch.testing.assert_close(policy.predict_chunk(obs, noise), chunk, rtol=0, atol=0)
    assert not torch.allclose(policy.predict_chunk(obs, -noise), chunk)
    assert chunk.abs().max() <= TINY.clip_sample_range + 1e-6
    assert policy.training  # predict_chunk switched to eval only for the call
    assert policy.predict_chunk(obs).shape == chunk.shape  # without noise: drawn inside


def test_the_chunk_depends_on_the_state_and_the_image() -> None:
    policy = tiny_policy()
    obs = observation(make_batch(1))
    noise = torch.randn(1, TINY.chunk_length, ACTION_DIM)
    chunk = policy.predict_chunk(obs, noise)
    for key in obs:
        moved = dict(obs, **{key: obs[key] + 1.0})
        assert not torch.allclose(policy.predict_chunk(moved, noise), chunk, atol=1e-5), key


def test_wrong_noise_shape_is_refused() -> None:
    policy = tiny_policy()
    with pytest.raises(PolicyError, match=r"'noise' has shape \[2, 4, 3\]; expected \[2, 8, 3\]"):
        policy.predict_chunk(observation(make_batch(2)), torch.zeros(2, 4, ACTION_DIM))


def test_onnx_export_matches_predict_chunk(tmp_path) -> None:
    # Two observation steps, two cameras and a centre crop: the paths the defaults do not take.
    config = dataclasses.replace(TINY, n_obs_steps=2, crop_fraction=0.75)
    cameras = ["front", "wrist"]
    policy = tiny_policy(config, cameras)
    path = export_onnx(policy, tmp_path / "diffusion.onnx")
    names = policy.export_input_names()
    assert names == ["observation.state", "observation.images.front", "observation.images.wrist", "noise"]
    inputs = policy.export_example_inputs()
    assert [list(t.shape) for t in inputs] == [[1, 2, STATE_DIM], [1, 2, 3, *IMAGE], [1, 2, 3, *IMAGE],
                                               [1, config.chunk_length, ACTION_DIM]]
    action, expected = _onnx_and_torch(policy, path)
    assert action.shape == (1, config.chunk_length, ACTION_DIM)
    assert np.abs(action - expected).max() < 1e-4


def _onnx_and_torch(policy: DiffusionPolicy, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The exported graph's action and predict_chunk's, on the export's example inputs (noise last)."""
    names, inputs = policy.export_input_names(), policy.export_example_inputs()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (action,) = session.run(["action"], {n: t.numpy() for n, t in zip(names, inputs)})
    return action, policy.predict_chunk(dict(zip(names[:-1], inputs[:-1])), inputs[-1]).numpy()


def _runtime_ops(path: Path, tmp_path: Path) -> list[str]:
    """The op types onnxruntime runs after its graph optimizations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_batch_relu_blocks_fold_into_the_convolutions(tmp_path: Path) -> None:
    folded = tiny_policy(dataclasses.replace(TINY, unet_block="batch_relu"))
    batch = make_batch()
    with torch.no_grad():
        folded.train().compute_loss(batch)  # running statistics that are not the identity
    path = export_onnx(folded.eval(), tmp_path / "batch_relu.onnx")
    action, expected = _onnx_and_torch(folded, path)
    assert np.abs(action - expected).max() < 1e-4
    ops = _runtime_ops(path, tmp_path)
    grouped = _runtime_ops(export_onnx(tiny_policy(), tmp_path / "group_mish.onnx"), tmp_path)
    assert "BatchNormalization" not in ops and "InstanceNormalization" in grouped
    assert len(ops) < 0.6 * len(grouped)


def test_chunk_length_must_suit_the_unet() -> None:
    with pytest.raises(ConfigError, match="chunk_length 10 must be divisible by 4"):
        DiffusionConfig(chunk_length=10, down_dims=(64, 128, 256))
    with pytest.raises(ConfigError, match="ddim_steps 20 exceeds num_train_timesteps 10"):
        DiffusionConfig(num_train_timesteps=10, ddim_steps=20)
    with pytest.raises(ConfigError, match="unet_block 'layer' is unknown; valid: group_mish, batch_relu"):
        DiffusionConfig(unet_block="layer")
    with pytest.raises(ConfigError, match="DiffusionConfig.backbone_width 6 is below 8"):
        DiffusionConfig(backbone_width=6)
