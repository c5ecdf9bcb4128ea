"""Diffusion Policy (Chi et al. 2023), CNN variant, in plain torch with its own scheduler.

Each camera goes through a ResNet and a spatial-softmax keypoint head; the keypoint
features of every camera and the state, over the n_obs observation steps, are the global
condition of a 1D temporal UNet whose residual blocks are FiLM-modulated by that condition
and the diffusion step. Training is DDPM with epsilon prediction on a squared-cosine
schedule; sampling is deterministic DDIM (eta = 0) from a given standard-normal ``noise``.
The export graph unrolls all DDIM steps, with their timesteps as constants.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tether.errors import ConfigError, PolicyError
from tether.policy_runtime.training.backbone import NORMS, ResNet, SpatialSoftmax
from tether.policy_runtime.runtime.manifest import NOISE
from tether.policy_runtime.training.policy_model import (ACTION, ACTION_IS_PAD, STATE, PolicyModel, as_int_tuple,
                                                         hold_padding, image_key, masked_mean, require_backbone_width,
                                                         require_positive)

UNET_BLOCKS = ("group_mish", "batch_relu")


@dataclass(frozen=True)
class DiffusionConfig:
    """Defaults are CPU-sized (10 DDIM steps in ~10-30 ms); ``paper()`` is the paper's CNN policy."""

    chunk_length: int = 16  # the UNet's horizon: divisible by 2 ** (len(down_dims) - 1)
    n_obs_steps: int = 1
    backbone_width: int = 16  # ResNet-18 has 64
    backbone_blocks: tuple[int, ...] = (2, 2, 2, 2)
    norm: str = "group"
    num_keypoints: int = 32  # image feature = 2 * num_keypoints per camera and step
    crop_fraction: float = 0.9  # random crop of this fraction in training, centre crop at inference
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    # Each UNet conv is followed by "group_mish" (GroupNorm + Mish, the paper's) or "batch_relu"
    # (BatchNorm + ReLU, which export folds into the conv: about half the runtime nodes).
    unet_block: str = "group_mish"
    n_groups: int = 8  # GroupNorm groups, with group_mish
    step_embed_dim: int = 64
    film_scale: bool = True  # FiLM scale and bias; False: bias only
    num_train_timesteps: int = 100
    ddim_steps: int = 10
    # Each step's x0 estimate is clipped to +-clip_sample_range. Training actions are min-max
    # normalized into [-1, 1], so 1.0 keeps samples inside the range seen in training; the
    # final DDIM step returns that clipped estimate, so actions never leave it.
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        for name in ("backbone_blocks", "down_dims"):
            as_int_tuple(self, name)
        require_positive(self, ("chunk_length", "n_obs_steps", "backbone_width", "backbone_blocks", "num_keypoints",
                                "down_dims", "kernel_size", "n_groups", "step_embed_dim", "num_train_timesteps",
                                "ddim_steps", "clip_sample_range"))
        require_backbone_width(self)
        self._check_choices()

    def _check_choices(self) -> None:
        factor = 2 ** (len(self.down_dims) - 1)
        if self.chunk_length % factor:
            raise ConfigError(f"DiffusionConfig.chunk_length {self.chunk_length} must be divisible by {factor} "
                              f"(the UNet halves it {len(self.down_dims) - 1} times for down_dims {self.down_dims})")
        if self.unet_block == "group_mish" and any(d % self.n_groups for d in self.down_dims):
            raise ConfigError(f"DiffusionConfig.down_dims {self.down_dims} must divide by n_groups {self.n_groups}")
        if self.ddim_steps > self.num_train_timesteps:
            raise ConfigError(f"DiffusionConfig.ddim_steps {self.ddim_steps} exceeds num_train_timesteps "
                              f"{self.num_train_timesteps}")
        if self.norm not in NORMS:
            raise ConfigError(f"DiffusionConfig.norm '{self.norm}' is unknown; valid: {', '.join(NORMS)}")
        if self.unet_block not in UNET_BLOCKS:
            raise ConfigError(f"DiffusionConfig.unet_block '{self.unet_block}' is unknown; "
                              f"valid: {', '.join(UNET_BLOCKS)}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ConfigError(f"DiffusionConfig.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"DiffusionConfig.kernel_size must be odd (same-length conv), got {self.kernel_size}")

    @classmethod
    def paper(cls) -> DiffusionConfig:
        """The paper's CNN policy: ResNet-18, down_dims (256, 512, 1024), 2 observation steps, 84/96 crops."""
        return cls(n_obs_steps=2, backbone_width=64, crop_fraction=0.875, down_dims=(256, 512, 1024),
                   step_embed_dim=128, num_train_timesteps=100, ddim_steps=10)


# --- noise schedule and DDIM ------------------------------------------------------------------

class NoiseSchedule(nn.Module):
    """The squared-cosine ("squaredcos_cap_v2") DDPM schedule, with forward noising and
    deterministic DDIM steps. Coefficients are Python floats, so an exported graph holds them
    as constants. It is a module (with no weights) only so that the exported DDIM arithmetic
    is named ``.../schedule/...``: a static INT8 quantizer can leave those few nodes in fp32."""

    def __init__(self, num_train_timesteps: int) -> None:
        super().__init__()
        self.num_train_timesteps = n = num_train_timesteps
        betas = [min(1 - _alpha_bar((i + 1) / n) / _alpha_bar(i / n), 0.999) for i in range(n)]
        self.alphas_cumprod = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)
        self._abar: list[float] = self.alphas_cumprod.tolist()  # floats: no tensor->float inside a trace

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0) for per-sample steps ``t`` [B]."""
        a = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` timesteps, from T-1 down, evenly spaced ("trailing"): the first step starts
        from the pure-noise level the model was trained at (Lin et al. 2024)."""
        n = self.num_train_timesteps
        return [round(n - i * n / steps) - 1 for i in range(steps)]

    def forward(self, x_t: Tensor, eps: Tensor, t: int, t_prev: int, clip: float | None) -> Tensor:
        return self.ddim_step(x_t, eps, t, t_prev, clip)

    def ddim_step(self, x_t: Tensor, eps: Tensor, t: int, t_prev: int, clip: float | None) -> Tensor:
        """One eta = 0 DDIM step from ``t`` to ``t_prev`` (-1: to the clean sample)."""
        a_t = self._abar[t]
        a_prev = self._abar[t_prev] if t_prev >= 0 else 1.0
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps

    def sample(self, noise: Tensor, model: Callable[[Tensor, int], Tensor], steps: int,
               clip: float | None) -> Tensor:
        """DDIM from x_T = ``noise``; ``model(x_t, t)`` predicts the noise in x_t."""
        timesteps = self.ddim_timesteps(steps)
        x = noise
        for t, t_prev in zip(timesteps, [*timesteps[1:], -1]):
            x = self(x, model(x, t), t, t_prev, clip)
        return x


def _alpha_bar(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


# --- networks ------------------------------------------------------------------------------------

class ImageEncoder(nn.Module):
    """[N, 3, H, W] -> [N, 2 * num_keypoints]: crop, ResNet, spatial softmax, linear + ReLU."""

    def __init__(self, c: DiffusionConfig, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_size = image_size
        self.crop = (round(image_size[0] * c.crop_fraction), round(image_size[1] * c.crop_fraction))
        self.backbone = ResNet(c.backbone_width, c.backbone_blocks, c.norm)
        channels, h, w = self.backbone.feature_shape(self.crop)
        self.keypoints = SpatialSoftmax(channels, h, w, c.num_keypoints)
        self.dim = 2 * c.num_keypoints
        self.out = nn.Linear(self.dim, self.dim)

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(self._crop(images))
        return F.relu(self.out(self.keypoints(features).flatten(1)))

    def _crop(self, images: Tensor) -> Tensor:
        (h, w), (ch, cw) = self.image_size, self.crop
        if (ch, cw) == (h, w):
            return images
        if self.training:  # one random offset per batch: cheap, and enough augmentation
            top, left = (int(torch.randint(0, n + 1, ())) for n in (h - ch, w - cw))
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        return images[..., top:top + ch, left:left + cw]


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        self.freqs: Tensor
        self.register_buffer("freqs", torch.exp(-math.log(10000) * torch.arange(half) / max(half - 1, 1)),
                             persistent=False)

    def forward(self, t: Tensor) -> Tensor:  # [B] -> [B, dim]
        args = t.to(self.freqs.dtype).unsqueeze(-1) * self.freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


def conv_block(c_in: int, c_out: int, c: DiffusionConfig) -> nn.Sequential:
    conv = nn.Conv1d(c_in, c_out, c.kernel_size, padding=c.kernel_size // 2)
    if c.unet_block == "batch_relu":  # exports as one fused Conv+ReLU node: BatchNorm folds into the conv
        return nn.Sequential(conv, nn.BatchNorm1d(c_out), nn.ReLU())
    return nn.Sequential(conv, nn.GroupNorm(c.n_groups, c_out), nn.Mish())


class FiLMResBlock(nn.Module):
    """Two conv blocks; between them the condition scales and shifts each channel (FiLM)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, c: DiffusionConfig) -> None:
        super().__init__()
        self.block1 = conv_block(c_in, c_out, c)
        self.block2 = conv_block(c_out, c_out, c)
        self.film_scale = c.film_scale
        self.cond = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, c_out * (2 if c.film_scale else 1)))
        self.residual: nn.Module = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.block1(x)
        film = self.cond(cond).unsqueeze(-1)
        if self.film_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.block2(h) + self.residual(x)


class UNetLevel(nn.Module):
    """Two FiLM residual blocks at one resolution, then a resampling (or nothing, at the end)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, c: DiffusionConfig, resample: nn.Module) -> None:
        super().__init__()
        self.block1 = FiLMResBlock(c_in, c_out, cond_dim, c)
        self.block2 = FiLMResBlock(c_out, c_out, cond_dim, c)
        self.resample = resample

    def blocks(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.block2(self.block1(x, cond), cond)


class ConditionalUnet1D(nn.Module):
    """Noisy actions [B, k, A], steps [B], global condition [B, G] -> predicted noise [B, k, A]."""

    def __init__(self, action_dim: int, global_cond_dim: int, c: DiffusionConfig) -> None:
        super().__init__()
        e = c.step_embed_dim
        self.step_encoder = nn.Sequential(SinusoidalEmbedding(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))
        cond = e + global_cond_dim
        dims = [action_dim, *c.down_dims]
        levels = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList(
            UNetLevel(a, b, cond, c, nn.Conv1d(b, b, 3, 2, 1) if i < len(levels) - 1 else nn.Identity())
            for i, (a, b) in enumerate(levels))
        self.mid = UNetLevel(dims[-1], dims[-1], cond, c, nn.Identity())
        # Up path: concat the skip of the same resolution, then upsample (the finest skip is unused, as in DP).
        self.up = nn.ModuleList(UNetLevel(2 * b, a, cond, c, nn.ConvTranspose1d(a, a, 4, 2, 1))
                                for a, b in reversed(levels[1:]))
        self.final = nn.Sequential(conv_block(dims[1], dims[1], c), nn.Conv1d(dims[1], action_dim, 1))

    def forward(self, x: Tensor, t: Tensor, global_cond: Tensor) -> Tensor:
        cond = torch.cat([self.step_encoder(t).expand(global_cond.shape[0], -1), global_cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for level in cast(Iterable[UNetLevel], self.down):
            h = level.blocks(h, cond)
            skips.append(h)
            h = level.resample(h)
        h = self.mid.blocks(h, cond)
        for level in cast(Iterable[UNetLevel], self.up):
            h = level.resample(level.blocks(torch.cat([h, skips.pop()], dim=1), cond))
        return self.final(h).transpose(1, 2)


class DiffusionPolicy(PolicyModel):
    name = "diffusion"
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig, state_dim: int, action_dim: int, cameras: list[str],
                 image_size: tuple[int, int]) -> None:
        super().__init__(config, state_dim, action_dim, cameras, image_size)
        self.encoders = nn.ModuleDict({cam: ImageEncoder(config, self.image_size) for cam in cameras})
        per_step = state_dim + sum(2 * config.num_keypoints for _ in cameras)
        self.unet = ConditionalUnet1D(action_dim, config.n_obs_steps * per_step, config)
        self.schedule = NoiseSchedule(config.num_train_timesteps)

    def global_cond(self, state: Tensor, images: list[Tensor]) -> Tensor:
        """Image features and state of every observation step, flattened: [B, n * (S + cams * F)]."""
        b = state.shape[0]
        features = [self.encoders[cam](im.flatten(0, 1)).unflatten(0, (b, -1)) for cam, im in zip(self.cameras, images)]
        return torch.cat([*features, state], dim=-1).flatten(1)

    def sample(self, state: Tensor, images: list[Tensor], noise: Tensor) -> Tensor:
        """DDIM over ``config.ddim_steps`` from ``noise`` [B, k, A]; the step times are Python ints."""
        cond = self.global_cond(state, images)
        c = self.config

        def eps(x: Tensor, t: int) -> Tensor:
            return self.unet(x, torch.full((1,), t, device=x.device), cond)

        return self.schedule.sample(noise, eps, c.ddim_steps, c.clip_sample_range if c.clip_sample else None)

    def _images(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        return [batch[image_key(cam)] for cam in self.cameras]

    def _loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        is_pad = batch[ACTION_IS_PAD]
        actions = hold_padding(batch[ACTION], is_pad)
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        cond = self.global_cond(batch[STATE], self._images(batch))
        pred = self.unet(self.schedule.add_noise(actions, noise, t), t, cond)
        loss = masked_mean(F.mse_loss(pred, noise, reduction="none"), is_pad)
        return loss, {"loss": loss.item(), "mse": loss.item()}

    def _predict(self, obs: Mapping[str, Tensor], noise: Tensor | None) -> Tensor:
        state = obs[STATE]
        shape = [state.shape[0], self.chunk_length, self.action_dim]
        if noise is None:
            noise = torch.randn(shape, device=state.device)
        elif list(noise.shape) != shape:
            raise PolicyError(f"diffusion: '{NOISE}' has shape {list(noise.shape)}; expected {shape}")
        return self.sample(state, self._images(obs), noise)

    def export_input_names(self) -> list[str]:
        return [*super().export_input_names(), NOISE]

    def export_example_inputs(self, batch_size: int = 1) -> tuple[Tensor, ...]:
        noise = torch.randn(batch_size, self.chunk_length, self.action_dim, generator=torch.Generator().manual_seed(1))
        return (*super().export_example_inputs(batch_size), noise)

    def export_module(self) -> nn.Module:
        return _DiffusionGraph(copy.deepcopy(self).eval())


class _DiffusionGraph(nn.Module):
    """forward(state, *images, noise) -> action: the whole DDIM loop in one graph."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, state: Tensor, *images_and_noise: Tensor) -> Tensor:
        *images, noise = images_and_noise
        return self.policy.sample(state, images, noise)
