"""A tiny LeRobot v3 dataset written by tether's own writer, for training and export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tether.robot_profile import RobotProfile
from tether.dataset import DatasetSpec, DatasetWriter

FPS = 10
# Tiny networks for tests of the trainer and the exporter, not of learning the task. Backbone width 8, not 4:
# oneDNN 3.12's AVX2 kernel for a strided 1x1 convolution with 2-6 input channels (channels-last) corrupts
# the heap at 1 thread and reads garbage at 2 (onednn_verbose: jit_1x1:avx2 backward_weights, ic4 padded to 8).
TINY = {
    "act": {"backbone_width": 8, "backbone_blocks": (1, 1, 1, 1), "dim_model": 32, "n_heads": 2,
            "dim_feedforward": 64, "n_encoder_layers": 1, "n_vae_encoder_layers": 1, "latent_dim": 8,
            "chunk_length": 4},
    "diffusion": {"backbone_width": 8, "backbone_blocks": (1, 1, 1, 1), "num_keypoints": 4, "down_dims": (16, 32),
                  "step_embed_dim": 16, "n_groups": 4, "chunk_length": 4, "num_train_timesteps": 10,
                  "ddim_steps": 4},
}
SIZE = (32, 32)  # height, width


def shade(ep: int, i: int, cam: int) -> int:
    """A flat grey level that identifies (episode, frame, camera) after lossy coding."""
    return (ep * 40 + i * 6 + cam * 90) % 200 + 20


def state_of(ep: int, i: int, joints: int) -> np.ndarray:
    return (np.linspace(-1, 1, joints) * 0.3 + 0.1 * ep + i / 50).astype(np.float32)


def write_demos(root: Path, profile: RobotProfile, lengths: list[int], failed: tuple[int, ...] = (),
                takeover: dict[int, int] | None = None) -> Path:
    """Episode e has ``lengths[e]`` frames; action = next state; episodes in ``failed`` end as failures.

    In an episode of ``takeover`` {episode: frame}, a policy drives until that frame, a human after it.
    """
    takeover = takeover or {}
    spec = DatasetSpec.from_profile(profile, fps=FPS, image_size=SIZE)
    ns = 1_700_000_000_000_000_000
    with DatasetWriter.create(root, spec) as writer:
        for ep, length in enumerate(lengths):
            writer.begin_episode("pick the cube")
            for i in range(length):
                ns += 100_000_000
                state = state_of(ep, i, len(spec.joint_names))
                images = {c: np.full((*SIZE, 3), shade(ep, i, k), np.uint8) for k, c in enumerate(spec.cameras)}
                human = ep in takeover and i >= takeover[ep]
                source = ("human" if human else "policy") if ep in takeover else "expert"
                writer.add_frame(state, state_of(ep, i + 1, len(spec.joint_names)), images, ns, human, source,
                                 "correction" if human else "autonomous")
            writer.end_episode(success=ep not in failed)
    return root
