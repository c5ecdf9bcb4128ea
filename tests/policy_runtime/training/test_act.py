"""ACT: shapes, the CVAE latent (used in training, zero at inference), padding, overfitting,
ONNX parity; and the policy registry and config round trip that both policies share."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tether.config import from_dict
from tether.errors import ConfigError, PolicyError
from tether.policy_runtime.training import models
from tether.policy_runtime.training.act import ACTConfig, ACTPolicy
from tether.policy_runtime.training.models import (build_policy, build_policy_from_spec, config_for, config_from_dict,
                                                   export_onnx)

STATE_DIM, ACTION_DIM, CAMERAS, IMAGE = 4, 3, ["front", "wrist"], (32, 32)
# Tiny: one residual block per stage, 32x32 images -> a 1x1 grid, so each camera is one token.
TINY = ACTConfig(chunk_length=8, backbone_width=8, backbone_blocks=(1, 1, 1, 1), dim_model=32, n_heads=2,
                 dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=4,
                 dropout=0.0)


def tiny_policy(config: ACTConfig = TINY, seed: int = 0) -> ACTPolicy:
    torch.manual_seed(seed)
    policy = build_policy("act", config, STATE_DIM, ACTION_DIM, CAMERAS, IMAGE)
    assert isinstance(policy, ACTPolicy)
    return policy


def make_batch(batch_size: int = 4, config: ACTConfig = TINY, seed: int = 1) -> dict[str, torch.Tensor]:
    """A training batch; the first sample's episode ends after 5 of its k actions."""
    g = torch.Generator().manual_seed(seed)
    n, k = config.n_obs_steps, config.chunk_length
    batch = {"observation.state": torch.randn(batch_size, n, STATE_DIM, generator=g),
             "action": torch.rand(batch_size, k, ACTION_DIM, generator=g) * 2 - 1,
             "action_is_pad": torch.zeros(batch_size, k, dtype=torch.bool)}
    for cam in CAMERAS:
        batch[f"observation.images.{cam}"] = torch.randn(batch_size, n, 3, *IMAGE, generator=g)
    batch["action_is_pad"][0, 5:] = True
    return batch


def observation(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k.startswith("observation.")}


def test_predict_chunk_is_a_deterministic_chunk_and_leaves_training_mode_alone() -> None:
    policy = tiny_policy().train()
    obs = observation(make_batch(3))
    first = policy.predict_chunk(obs)
    assert first.shape == (3, TINY.chunk_length, ACTION_DIM)
    # The latent is zero at inference (no sampling), so a second call gives the same chunk.
    torch.testing.assert_close(policy.predict_chunk(obs), first, rtol=0, atol=0)
    assert policy.training


def test_inference_uses_the_zero_latent_and_the_latent_matters() -> None:
    policy = tiny_policy().eval()
    batch = make_batch(2)
    state, images = batch["observation.state"], [batch[f"observation.images.{c}"] for c in CAMERAS]
    for p in policy.latent_proj.parameters():  # a latent that changes the output when it is not zero
        p.data.normal_()
    zero = policy(state, images, torch.zeros(2, TINY.latent_dim))
    torch.testing.assert_close(policy.predict_chunk(observation(batch)), zero)
    assert not torch.allclose(policy(state, images, torch.ones(2, TINY.latent_dim)), zero)


def test_the_chunk_depends_on_the_state_and_every_camera() -> None:
    policy = tiny_policy()
    obs = observation(make_batch(1))
    chunk = policy.predict_chunk(obs)
    for key in obs:
        moved = dict(obs, **{key: obs[key] + 1.0})
        assert not torch.allclose(policy.predict_chunk(moved), chunk, atol=1e-5), key


def test_loss_is_l1_plus_weighted_kl_and_logs_both() -> None:
    policy = tiny_policy().train()
    loss, logs = policy.compute_loss(make_batch())
    assert set(logs) == {"loss", "l1", "kl"}
    assert logs["kl"] > 0  # the CVAE posterior is not the prior at initialization
    assert logs["loss"] == pytest.approx(logs["l1"] + TINY.kl_weight * logs["kl"], rel=1e-5)
    assert loss.item() == pytest.approx(logs["loss"])


def test_without_vae_there_is_no_kl() -> None:
    policy = tiny_policy(dataclasses.replace(TINY, use_vae=False)).train()
    _, logs = policy.compute_loss(make_batch())
    assert logs["kl"] == 0.0 and logs["loss"] == pytest.approx(logs["l1"])


def test_padded_actions_do_not_change_the_loss() -> None:
    policy = tiny_policy().train()
    batch = make_batch()
    changed = dict(batch, action=batch["action"].clone())
    changed["action"][batch["action_is_pad"]] = float("nan")  # garbage past the episode's end
    torch.manual_seed(5)  # same latent sample both times
    loss, _ = policy.compute_loss(batch)
    torch.manual_seed(5)
    loss_changed, _ = policy.compute_loss(changed)
    torch.testing.assert_close(loss_changed, loss)
    loss_changed.backward()  # NaN padding must not leak into the gradients either
    assert all(bool(p.grad.isfinite().all()) for p in policy.parameters() if p.grad is not None)
    # And a real step does count: changing one moves the loss.
    changed["action"][1, 0] += 1.0
    torch.manual_seed(5)
    assert not torch.allclose(policy.compute_loss(changed)[0], loss)


def test_l1_averages_the_real_steps_only() -> None:
    policy = tiny_policy(dataclasses.replace(TINY, use_vae=False)).train()  # no latent: the output is fixed
    batch = make_batch()
    _, logs = policy.compute_loss(batch)
    error = (policy.predict_chunk(observation(batch)) - batch["action"]).abs()
    assert logs["l1"] == pytest.approx(error[~batch["action_is_pad"]].mean().item(), rel=1e-5)


def test_the_cvae_encoder_ignores_padded_actions() -> None:
    policy = tiny_policy()
    assert policy.cvae is not None
    batch = make_batch()
    state, actions, is_pad = batch["observation.state"][:, -1], batch["action"], batch["action_is_pad"]
    changed = actions.masked_fill(is_pad.unsqueeze(-1), 7.0)
    for got, expected in zip(policy.cvae(state, changed, is_pad), policy.cvae(state, actions, is_pad)):
        torch.testing.assert_close(got, expected)


def test_a_few_hundred_steps_overfit_a_tiny_batch() -> None:
    policy = tiny_policy().train()
    batch = make_batch()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    l1 = []
    for _ in range(150):
        loss, logs = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        l1.append(logs["l1"])
    assert np.mean(l1[-10:]) < 0.25 * np.mean(l1[:10])
    predicted = policy.predict_chunk(observation(batch))
    real = ~batch["action_is_pad"]
    assert (predicted - batch["action"]).abs()[real].mean() < 0.15  # actions span [-1, 1]


def test_onnx_export_matches_predict_chunk(tmp_path) -> None:
    policy = tiny_policy()
    path = export_onnx(policy, tmp_path / "act.onnx")
    inputs = policy.export_example_inputs()
    names = policy.export_input_names()
    assert names == ["observation.state", "observation.images.front", "observation.images.wrist"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    (action,) = session.run(["action"], {n: t.numpy() for n, t in zip(names, inputs)})
    expected = policy.predict_chunk(dict(zip(names, inputs))).numpy()
    assert action.shape == tuple(policy.export_output_shape()) == (1, TINY.chunk_length, ACTION_DIM)
    assert np.abs(action - expected).max() < 1e-4


def test_bad_batches_are_refused_with_the_expected_shape() -> None:
    policy = tiny_policy()
    batch = make_batch()
    with pytest.raises(PolicyError, match="lacks observation.images.wrist"):
        policy.predict_chunk({k: v for k, v in observation(batch).items() if not k.endswith("wrist")})
    with pytest.raises(PolicyError, match=r"'action' has shape \[4, 7, 3\]; expected \[4, 8, 3\]"):
        policy.compute_loss(dict(batch, action=batch["action"][:, :7]))
    with pytest.raises(PolicyError, match="must be bool"):
        policy.compute_loss(dict(batch, action_is_pad=batch["action_is_pad"].float()))


# --- the registry and saved configs (shared by both policies) -----------------------------------------

def test_unknown_policy_and_size_name_the_valid_ones() -> None:
    with pytest.raises(PolicyError, match="unknown policy 'vqbet'; valid: act, diffusion"):
        build_policy("vqbet", None, STATE_DIM, ACTION_DIM, CAMERAS, IMAGE)
    with pytest.raises(PolicyError, match="valid: cpu, paper"):
        config_for("act", "huge")
    with pytest.raises(PolicyError, match="takes a ACTConfig"):
        build_policy("act", config_for("diffusion"), STATE_DIM, ACTION_DIM, CAMERAS, IMAGE)


def test_the_registry_lists_both_policies_and_their_configs() -> None:
    from tether.policy_runtime.training.diffusion import DiffusionConfig, DiffusionPolicy
    assert models.POLICIES == {"act": ACTPolicy, "diffusion": DiffusionPolicy}
    assert models.CONFIGS == {"act": ACTConfig, "diffusion": DiffusionConfig}
    assert isinstance(build_policy("diffusion", None, STATE_DIM, ACTION_DIM, [], IMAGE), DiffusionPolicy)


@pytest.mark.parametrize("name", ["act", "diffusion"])
@pytest.mark.parametrize("size", ["cpu", "paper"])
def test_configs_round_trip_through_json(name: str, size: str) -> None:
    config = config_for(name, size)
    data = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples come back as lists
    assert from_dict(type(config), data, "config") == config
    assert config_from_dict(name, data) == config


def test_paper_config_has_the_paper_sizes() -> None:
    act = config_for("act", "paper")
    assert (act.dim_model, act.backbone_width, act.n_encoder_layers, act.n_decoder_layers) == (512, 64, 4, 7)
    diffusion = config_for("diffusion", "paper")
    assert diffusion.down_dims == (256, 512, 1024) and diffusion.num_train_timesteps == 100


def test_bad_config_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="act config: unknown key 'dim'; valid keys: backbone_blocks"):
        config_from_dict("act", {"dim": 3})
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        ACTConfig(dim_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="backbone_blocks must be positive"):
        ACTConfig(backbone_blocks=())
    with pytest.raises(ConfigError, match="ACTConfig.backbone_width 4 is below 8"):
        ACTConfig(backbone_width=4)  # oneDNN's AVX2 kernels corrupt memory on so few channels


def test_a_policy_rebuilds_from_its_json_spec() -> None:
    policy = tiny_policy()
    spec = json.loads(json.dumps(policy.spec()))
    rebuilt = build_policy_from_spec(spec)
    rebuilt.load_state_dict(policy.state_dict())
    obs = observation(make_batch(2))
    assert rebuilt.config == policy.config and rebuilt.image_size == IMAGE
    torch.testing.assert_close(rebuilt.predict_chunk(obs), policy.predict_chunk(obs))


def test_camera_names_with_dots_are_refused() -> None:
    with pytest.raises(PolicyError, match="no '.'"):
        build_policy("act", TINY, STATE_DIM, ACTION_DIM, ["cam.left"], IMAGE)
