"""The interface every policy network shares: what ACT and Diffusion subclass, and the checks they share.

A policy sees tensors that the caller has already normalized (see ``manifest.py``):
``observation.state`` [B, n_obs, state_dim], ``observation.images.<cam>`` [B, n_obs, 3, H, W],
and in training ``action`` [B, k, action_dim] with ``action_is_pad`` [B, k] (True past the
episode's end). Action 0 of a chunk is the action at the last observation's time.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from tether.errors import ConfigError, PolicyError
from tether.policy_runtime.runtime.manifest import ACTION, IMAGE_PREFIX, STATE

ACTION_IS_PAD = "action_is_pad"


class PolicyConfig(Protocol):
    """What the shared code reads from any policy's config dataclass."""

    @property
    def chunk_length(self) -> int: ...

    @property
    def n_obs_steps(self) -> int: ...


def image_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block (no dropout, no random crop), then the mode it had before."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def require_positive(config: object, names: tuple[str, ...]) -> None:
    """Config check shared by the policies' ``__post_init__``: these fields must be > 0."""
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if not values or any(v <= 0 for v in values):
            raise ConfigError(f"{type(config).__name__}.{name} must be positive, got {value!r}")


MIN_BACKBONE_WIDTH = 8


def require_backbone_width(config: object) -> None:
    """Backbones at least 8 channels wide: oneDNN 3.12 (torch 2.13 CPU) trains a strided 1x1 convolution with 2-6
    input channels through an AVX2 kernel that corrupts the heap at 1 thread and reads garbage at 2."""
    width = getattr(config, "backbone_width")
    if width < MIN_BACKBONE_WIDTH:
        raise ConfigError(f"{type(config).__name__}.backbone_width {width} is below {MIN_BACKBONE_WIDTH}: oneDNN's "
                          "AVX2 kernels for so few channels corrupt memory in training; use 8 or more (cpu: 16)")


def as_int_tuple(config: object, name: str) -> None:
    """JSON gives lists where the dataclass wants a tuple: convert in place (frozen-safe)."""
    value = getattr(config, name)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{type(config).__name__}.{name} must be a list of integers, got {value!r}")
    object.__setattr__(config, name, tuple(value))


def masked_mean(error: Tensor, is_pad: Tensor) -> Tensor:
    """Mean of ``error`` [B, k, D] over the steps that are not padding (``is_pad`` [B, k])."""
    valid = (~is_pad).unsqueeze(-1).to(error.dtype)
    return (error * valid).sum() / (valid.sum() * error.shape[-1]).clamp(min=1.0)


def hold_padding(actions: Tensor, is_pad: Tensor) -> Tensor:
    """Padded steps [B, k] of ``actions`` [B, k, D] become the last real action (hold still).

    Whatever the caller put past an episode's end (zeros, copies, NaN) then cannot reach the
    loss: not through a network input (the UNet's convolutions mix neighbouring steps), and
    not as a NaN that a zero mask would turn into a NaN gradient.
    """
    steps = torch.arange(actions.shape[1], device=actions.device).expand_as(is_pad)
    last_real = torch.where(is_pad, torch.full_like(steps, -1), steps).cummax(dim=1).values.clamp(min=0)
    return actions.gather(1, last_real.unsqueeze(-1).expand_as(actions))


class PolicyModel(nn.Module, abc.ABC):
    """Base of ACTPolicy and DiffusionPolicy; subclasses fill in the four ``_`` hooks."""

    name: ClassVar[str] = ""

    def __init__(self, config: PolicyConfig, state_dim: int, action_dim: int, cameras: list[str],
                 image_size: tuple[int, int]) -> None:
        super().__init__()
        _check_dims(state_dim, action_dim, cameras, image_size)
        self.config = config
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.cameras = list(cameras)
        self.image_size = (int(image_size[0]), int(image_size[1]))

    @property
    def chunk_length(self) -> int:
        return self.config.chunk_length

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    def compute_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Training loss (a scalar to backprop) and floats to log; call in train mode."""
        self.check_batch(batch, training=True)
        return self._loss(batch)

    @torch.no_grad()
    def predict_chunk(self, obs: Mapping[str, Tensor], noise: Tensor | None = None) -> Tensor:
        """Eager inference: a normalized action chunk [B, k, action_dim]; eval mode inside."""
        self.check_batch(obs, training=False)
        with evaluating(self):
            return self._predict(obs, noise)

    @abc.abstractmethod
    def export_module(self) -> nn.Module:
        """A copy in eval mode whose ``forward(*inputs)`` takes ``export_input_names()`` in order."""

    def export_input_names(self) -> list[str]:
        return [STATE] + [image_key(c) for c in self.cameras]

    def export_example_inputs(self, batch_size: int = 1) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        n, (h, w) = self.n_obs_steps, self.image_size
        state = torch.randn(batch_size, n, self.state_dim, generator=g)
        images = [torch.randn(batch_size, n, 3, h, w, generator=g) for _ in self.cameras]
        return (state, *images)

    def export_output_shape(self, batch_size: int = 1) -> list[int]:
        return [batch_size, self.chunk_length, self.action_dim]

    def spec(self) -> dict[str, Any]:
        """JSON-safe constructor arguments; ``build_policy_from_spec`` inverts it."""
        return {"policy": self.name, "config": dataclasses.asdict(self.config),  # type: ignore[call-overload]
                "state_dim": self.state_dim, "action_dim": self.action_dim, "cameras": list(self.cameras),
                "image_size": list(self.image_size)}

    def check_batch(self, batch: Mapping[str, Tensor], *, training: bool) -> None:
        """Refuse missing keys and wrong shapes with a message naming what was expected."""
        b = _batch_size(batch)
        n, k, (h, w) = self.n_obs_steps, self.chunk_length, self.image_size
        expected: dict[str, tuple[int, ...]] = {STATE: (b, n, self.state_dim)}
        expected.update({image_key(c): (b, n, 3, h, w) for c in self.cameras})
        if training:
            expected.update({ACTION: (b, k, self.action_dim), ACTION_IS_PAD: (b, k)})
        missing = [key for key in expected if key not in batch]
        if missing:
            raise PolicyError(f"{self.name}: batch lacks {', '.join(missing)}; it has: {', '.join(sorted(batch))}")
        for key, shape in expected.items():
            if tuple(batch[key].shape) != shape:
                raise PolicyError(f"{self.name}: '{key}' has shape {list(batch[key].shape)}; expected {list(shape)} "
                                  f"(n_obs_steps={n}, chunk_length={k})")
        if training and batch[ACTION_IS_PAD].dtype != torch.bool:
            raise PolicyError(f"{self.name}: '{ACTION_IS_PAD}' must be bool, got {batch[ACTION_IS_PAD].dtype}")

    @abc.abstractmethod
    def _loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The policy's training loss on a checked batch."""

    @abc.abstractmethod
    def _predict(self, obs: Mapping[str, Tensor], noise: Tensor | None) -> Tensor:
        """The policy's eager inference on checked observations, in eval mode."""


def _batch_size(batch: Mapping[str, Tensor]) -> int:
    if STATE not in batch:
        raise PolicyError(f"batch lacks '{STATE}'; it has: {', '.join(sorted(batch)) or '(nothing)'}")
    return int(batch[STATE].shape[0])


def _check_dims(state_dim: int, action_dim: int, cameras: list[str], image_size: tuple[int, int]) -> None:
    if state_dim < 1 or action_dim < 1:
        raise PolicyError(f"state_dim and action_dim must be positive, got {state_dim} and {action_dim}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise PolicyError(f"image_size must be (height, width), got {image_size}")
    for cam in cameras:
        # Cameras key a ModuleDict and an ONNX input name: a dot would break both.
        if not cam or "." in cam:
            raise PolicyError(f"camera name {cam!r} must be non-empty and have no '.'; cameras: {cameras}")
    if len(set(cameras)) != len(cameras):
        raise PolicyError(f"camera names repeat: {cameras}")
