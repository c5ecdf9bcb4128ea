"""Normalized training batches from in-memory demonstrations.

Every frame of every episode is a sample: its last ``n_obs`` observations (repeating
the first frame at an episode's start) and the next ``k`` actions, padded with the
last action and flagged ``action_is_pad`` past the episode's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tether.dataset.reader import ACTION, IMAGE_PREFIX, STATE, DemoSet


@dataclass(frozen=True)
class Affine:
    """x_norm = (x - mean) / std; the runtime applies the same numbers from the manifest."""

    mean: list[float]
    std: list[float]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - torch.tensor(self.mean, device=x.device)) / torch.tensor(self.std, device=x.device)


def mean_std(x: np.ndarray, floor: float = 1e-3) -> Affine:
    return Affine(x.mean(0).tolist(), np.maximum(x.std(0), floor).tolist())


def min_max(x: np.ndarray, floor: float = 1e-3) -> Affine:
    """Maps [min, max] to [-1, 1] (diffusion's action space)."""
    lo, hi = x.min(0), x.max(0)
    return Affine(((hi + lo) / 2).tolist(), np.maximum((hi - lo) / 2, floor).tolist())


def image_stats(demos: DemoSet, samples: int = 2000, seed: int = 0) -> Affine:
    """Per-channel mean and std of pixels in [0, 1], over frames of every camera."""
    rng = np.random.default_rng(seed)
    pix = []
    for ep in demos.episodes:
        for frames in ep.images.values():
            pick = rng.integers(0, len(frames), size=max(1, samples // (len(demos.episodes) * len(ep.images))))
            pix.append(frames[pick].reshape(-1, 3).astype(np.float32) / 255.0)
    return mean_std(np.concatenate(pix))


class BatchSource:
    """Flattened episodes; ``batch(indices)`` builds one normalized batch on ``device``."""

    def __init__(self, demos: DemoSet, n_obs: int, chunk: int, norms: dict[str, Affine],
                 device: torch.device, shift_px: int = 0) -> None:
        eps = demos.episodes
        self.state = torch.from_numpy(np.concatenate([e.state for e in eps]))
        self.action = torch.from_numpy(np.concatenate([e.action for e in eps]))
        self.images = {c: torch.from_numpy(np.concatenate([e.images[c] for e in eps])) for c in demos.cameras}
        bounds = np.cumsum([0] + [len(e) for e in eps])
        self.start = torch.from_numpy(np.repeat(bounds[:-1], [len(e) for e in eps]))
        self.stop = torch.from_numpy(np.repeat(bounds[1:], [len(e) for e in eps]))
        # Samples start only where the action is demonstrated (a policy's own rollout frames are context).
        targets = np.concatenate([e.targets for e in eps]) if eps else np.zeros(0, bool)
        self.samples = torch.from_numpy(np.flatnonzero(targets))
        self.n_obs, self.chunk, self.norms, self.device, self.shift_px = n_obs, chunk, norms, device, shift_px

    def __len__(self) -> int:
        """Samples: the frames a chunk may start at."""
        return len(self.samples)

    def batch(self, sample: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Sample numbers in [0, len(self)) -> their observation history and action chunk."""
        idx = self.samples[sample]
        obs_idx = torch.maximum(idx[:, None] - torch.arange(self.n_obs - 1, -1, -1)[None], self.start[idx, None])
        act_idx = idx[:, None] + torch.arange(self.chunk)[None]
        pad = act_idx >= self.stop[idx, None]
        act_idx = torch.minimum(act_idx, self.stop[idx, None] - 1)
        out = {
            STATE: self.norms[STATE].apply(self.state[obs_idx].to(self.device)),
            ACTION: self.norms[ACTION].apply(self.action[act_idx].to(self.device)),
            "action_is_pad": pad.to(self.device),
        }
        for cam, frames in self.images.items():
            out[IMAGE_PREFIX + cam] = self._images(frames[obs_idx], generator)
        return out

    def _images(self, frames: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # [B, n_obs, H, W, 3] uint8 -> [B, n_obs, 3, H, W] normalized float
        x = frames.to(self.device).permute(0, 1, 4, 2, 3).float() / 255.0
        if self.shift_px and generator is not None:
            x = random_shift(x, self.shift_px, generator)
        mean = torch.tensor(self.norms["images"].mean, device=self.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.norms["images"].std, device=self.device).view(1, 1, 3, 1, 1)
        return (x - mean) / std


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style augmentation: pad by edge replication, crop back at a random offset per sample."""
    b, t, c, h, w = x.shape
    flat = torch.nn.functional.pad(x.reshape(b, t * c, h, w), (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [B, H]
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = flat.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, t*c]
    return out.permute(0, 3, 1, 2).reshape(b, t, c, h, w)
