"""ACT: Action Chunking with Transformers (Zhao et al. 2023), in plain torch.

A ResNet per camera turns each image into a grid of feature tokens; a transformer encoder
reads [latent, state(s), image tokens]; a decoder with k learned queries reads that memory
and a linear head gives the k actions of the chunk. In training a CVAE encoder over
[cls, state, actions] gives the latent (KL-regularized); at inference the latent is zero,
so prediction is deterministic. Loss: L1 on the non-padded actions + kl_weight * KL.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tether.errors import ConfigError
from tether.policy_runtime.training.backbone import NORMS, ResNet
from tether.policy_runtime.training.policy_model import (ACTION, ACTION_IS_PAD, STATE, PolicyModel, as_int_tuple,
                                                         hold_padding, image_key, masked_mean, require_backbone_width,
                                                         require_positive)


@dataclass(frozen=True)
class ACTConfig:
    """Defaults are CPU-sized (2 cameras at 96x96 run in a few ms); ``paper()`` is the ACT paper's."""

    chunk_length: int = 20  # k actions a chunk; 20 is 0.67 s at the dataset's 30 fps
    n_obs_steps: int = 1
    backbone_width: int = 16  # ResNet-18 has 64
    backbone_blocks: tuple[int, ...] = (2, 2, 2, 2)
    norm: str = "group"  # "group" or "batch" (see backbone.norm_layer)
    dim_model: int = 128
    n_heads: int = 4
    dim_feedforward: int = 512
    n_encoder_layers: int = 2
    n_decoder_layers: int = 1
    n_vae_encoder_layers: int = 2
    latent_dim: int = 32
    dropout: float = 0.1
    use_vae: bool = True
    kl_weight: float = 10.0

    def __post_init__(self) -> None:
        as_int_tuple(self, "backbone_blocks")
        require_positive(self, ("chunk_length", "n_obs_steps", "backbone_width", "backbone_blocks", "dim_model",
                                "n_heads", "dim_feedforward", "n_encoder_layers", "n_decoder_layers", "latent_dim"))
        require_backbone_width(self)
        if self.norm not in NORMS:
            raise ConfigError(f"ACTConfig.norm '{self.norm}' is unknown; valid: {', '.join(NORMS)}")
        if self.dim_model % self.n_heads:
            raise ConfigError(f"ACTConfig.dim_model {self.dim_model} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ACTConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def paper(cls) -> ACTConfig:
        """The ACT paper's sizes: ResNet-18, dim 512, 4 encoder / 7 decoder layers, chunk 100."""
        return cls(chunk_length=100, backbone_width=64, dim_model=512, n_heads=8, dim_feedforward=3200,
                   n_encoder_layers=4, n_decoder_layers=7, n_vae_encoder_layers=4, latent_dim=32)


class Attention(nn.Module):
    """Multi-head attention written out (MatMul + Softmax), so the ONNX graph is plain ops
    that dynamic INT8 quantization finds; ``mask`` is additive, broadcast to [B, H, Lq, Lk]."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = (self._split(f(t)) for f, t in ((self.q, x), (self.k, memory), (self.v, memory)))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            scores = scores + mask
        attention = self.drop(torch.softmax(scores, dim=-1))
        return self.out((attention @ v).transpose(1, 2).flatten(2))

    def _split(self, t: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, D/H]
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Pre-norm (unlike the paper's post-norm): it trains stably without a warm-up."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory))
        return x + self.drop(self.ffn(self.norm3(x)))


class Encoder(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory)
        return self.norm(x)


def _embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * 0.02)


class CVAEEncoder(nn.Module):
    """q(z | state, actions): a transformer over [cls, state, a_0..a_k-1]; padded actions are
    masked out of attention, so what lies past an episode's end cannot reach the latent."""

    def __init__(self, c: ACTConfig, state_dim: int, action_dim: int) -> None:
        super().__init__()
        self.cls = _embedding(1, 1, c.dim_model)
        self.state_proj = nn.Linear(state_dim, c.dim_model)
        self.action_proj = nn.Linear(action_dim, c.dim_model)
        self.pos = _embedding(1, c.chunk_length + 2, c.dim_model)
        self.encoder = Encoder(c.n_vae_encoder_layers, c.dim_model, c.n_heads, c.dim_feedforward, c.dropout)
        self.out = nn.Linear(c.dim_model, 2 * c.latent_dim)

    def forward(self, state: Tensor, actions: Tensor, is_pad: Tensor) -> tuple[Tensor, Tensor]:
        b = actions.shape[0]
        tokens = torch.cat([self.cls.expand(b, -1, -1), self.state_proj(state).unsqueeze(1),
                            self.action_proj(actions)], dim=1) + self.pos
        pad = torch.cat([is_pad.new_zeros(b, 2), is_pad], dim=1)
        mask = torch.zeros(pad.shape, device=pad.device).masked_fill(pad, float("-inf"))[:, None, None, :]
        mu, logvar = self.out(self.encoder(tokens, mask)[:, 0]).chunk(2, dim=-1)
        return mu, logvar


def _tokens_per_image(backbone: ResNet | None, image_size: tuple[int, int]) -> int:
    if backbone is None:  # no cameras
        return 0
    _, h, w = backbone.feature_shape(image_size)
    return h * w


class ACTPolicy(PolicyModel):
    name = "act"
    config: ACTConfig

    def __init__(self, config: ACTConfig, state_dim: int, action_dim: int, cameras: list[str],
                 image_size: tuple[int, int]) -> None:
        super().__init__(config, state_dim, action_dim, cameras, image_size)
        c, d = config, config.dim_model
        backbones = {cam: ResNet(c.backbone_width, c.backbone_blocks, c.norm) for cam in cameras}
        self.backbones = nn.ModuleDict(backbones)
        self.image_proj = nn.ModuleDict({cam: nn.Conv2d(net.out_channels, d, 1) for cam, net in backbones.items()})
        tokens_per_image = _tokens_per_image(next(iter(backbones.values()), None), self.image_size)
        # Learned positions per camera and grid cell: the grid is small and fixed by image_size.
        self.image_pos = nn.ParameterDict({cam: _embedding(1, c.n_obs_steps * tokens_per_image, d) for cam in cameras})
        self.state_proj = nn.Linear(state_dim, d)
        self.latent_proj = nn.Linear(c.latent_dim, d)
        self.token_pos = _embedding(1, 1 + c.n_obs_steps, d)  # latent, then one token per state
        self.encoder = Encoder(c.n_encoder_layers, d, c.n_heads, c.dim_feedforward, c.dropout)
        self.queries = _embedding(1, c.chunk_length, d)
        self.decoder = Decoder(c.n_decoder_layers, d, c.n_heads, c.dim_feedforward, c.dropout)
        self.head = nn.Linear(d, action_dim)
        self.cvae = CVAEEncoder(c, state_dim, action_dim) if c.use_vae else None

    def forward(self, state: Tensor, images: list[Tensor], latent: Tensor) -> Tensor:
        """state [B, n, S], images per camera [B, n, 3, H, W], latent [B, Z] -> actions [B, k, A]."""
        b = state.shape[0]
        own = torch.cat([self.latent_proj(latent).unsqueeze(1), self.state_proj(state)], dim=1) + self.token_pos
        seen = [self._image_tokens(cam, im) for cam, im in zip(self.cameras, images)]
        memory = self.encoder(torch.cat([own, *seen], dim=1))
        return self.head(self.decoder(self.queries.expand(b, -1, -1), memory))

    def _image_tokens(self, cam: str, images: Tensor) -> Tensor:  # [B, n, 3, H, W] -> [B, n*h*w, d]
        features = self.image_proj[cam](self.backbones[cam](images.flatten(0, 1)))
        tokens = features.flatten(2).transpose(1, 2)  # [B*n, h*w, d]
        return tokens.unflatten(0, (images.shape[0], -1)).flatten(1, 2) + self.image_pos[cam]

    def infer(self, state: Tensor, images: list[Tensor]) -> Tensor:
        """Inference: the latent is the prior's mean, zero."""
        return self(state, images, state.new_zeros(state.shape[0], self.config.latent_dim))

    def _images(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        return [batch[image_key(cam)] for cam in self.cameras]

    def _loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        state, is_pad = batch[STATE], batch[ACTION_IS_PAD]
        actions = hold_padding(batch[ACTION], is_pad)  # padding is masked below; this keeps NaN out
        if self.cvae is None:
            latent, kl = state.new_zeros(state.shape[0], self.config.latent_dim), state.new_zeros(())
        else:
            mu, logvar = self.cvae(state[:, -1], actions, is_pad)
            latent = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        l1 = masked_mean(F.l1_loss(self(state, self._images(batch), latent), actions, reduction="none"), is_pad)
        loss = l1 + self.config.kl_weight * kl
        return loss, {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}

    def _predict(self, obs: Mapping[str, Tensor], noise: Tensor | None) -> Tensor:
        return self.infer(obs[STATE], self._images(obs))  # ACT has no noise input: ``noise`` is ignored

    def export_module(self) -> nn.Module:
        return _ACTGraph(copy.deepcopy(self).eval())


class _ACTGraph(nn.Module):
    """forward(state, *images) -> action, in ``export_input_names()`` order."""

    def __init__(self, policy: ACTPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, state: Tensor, *images: Tensor) -> Tensor:
        return self.policy.infer(state, list(images))
