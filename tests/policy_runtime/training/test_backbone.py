"""Backbones: the ResNet's shapes and batch independence, and spatial-softmax keypoints."""

from __future__ import annotations

import pytest
import torch

from tether.errors import ConfigError
from tether.policy_runtime.training.backbone import ResNet, SpatialSoftmax, norm_layer


def test_spatial_softmax_finds_the_peak_of_a_one_hot_map() -> None:
    height, width = 5, 7
    features = torch.zeros(1, 2, height, width)
    features[0, 0, 1, 5] = 50.0  # row 1, column 5: a sharp peak, so the softmax is one-hot
    features[0, 1, 4, 0] = 50.0  # bottom-left corner
    keypoints = SpatialSoftmax(2, height, width)(features)  # no projection: one keypoint per channel
    assert keypoints.shape == (1, 2, 2)
    # (x, y) in [-1, 1]: column 5 of 7 is x = -1 + 5 * 2/6, row 1 of 5 is y = -1 + 1 * 2/4.
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([2 / 3, -0.5]))
    torch.testing.assert_close(keypoints[0, 1], torch.tensor([-1.0, 1.0]))


def test_spatial_softmax_of_a_flat_map_is_the_centre() -> None:
    keypoints = SpatialSoftmax(3, 4, 6, num_keypoints=5)(torch.zeros(2, 3, 4, 6))
    assert keypoints.shape == (2, 5, 2)
    torch.testing.assert_close(keypoints, torch.zeros(2, 5, 2))  # zero input: the 1x1 conv's bias is uniform


def test_resnet_downsamples_by_32_and_widens_eightfold() -> None:
    net = ResNet(width=8, blocks=(1, 1, 1, 1))
    out = net(torch.randn(2, 3, 96, 64))
    assert out.shape == (2, 64, 3, 2)
    assert net.feature_shape((96, 64)) == (64, 3, 2)
    assert net.out_channels == 64


def test_groupnorm_resnet_gives_each_image_the_same_features_alone_or_in_a_batch() -> None:
    # The reason for GroupNorm: no batch statistics, so a batch-1 export computes what training did.
    torch.manual_seed(0)
    net = ResNet(width=8, blocks=(1, 1, 1, 1)).train()
    for p in net.parameters():  # leave the zero-initialized norms non-trivial
        p.data.add_(0.1 * torch.randn_like(p))
    images = torch.randn(4, 3, 32, 32)
    together = net(images)
    alone = torch.cat([net(images[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_unknown_norm_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown norm 'layer'; valid: group, batch"):
        norm_layer("layer", 16)
