"""Image backbones in plain torch (there is no CPU torchvision here): a ResNet-18-style
convnet with a width multiplier, and the spatial-softmax keypoint head of Diffusion Policy.

Everything here exports to ONNX opset 17 with the TorchScript exporter and behaves the
same in training and at batch 1 (GroupNorm by default: no running statistics to drift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tether.errors import ConfigError

NORMS = ("group", "batch")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """GroupNorm with 16 channels a group (as Diffusion Policy does), or BatchNorm.

    BatchNorm folds into the convolution at export (faster), but its eval output differs
    from its training output; GroupNorm is the same in both, so it is the default.
    """
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 16), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ConfigError(f"unknown norm '{kind}'; valid: {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """The ResNet-18 residual block: two 3x3 convs, a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 without its pooling and classifier: [B, 3, H, W] -> [B, 8*width, H/32, W/32].

    ``width`` 64 with ``blocks`` (2, 2, 2, 2) is ResNet-18; smaller widths make CPU-sized nets.
    """

    def __init__(self, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), norm: str = "group") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), norm_layer(norm, width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            layers = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1, norm)
                      for j in range(n)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.out_channels = c_in
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last norm of each residual branch: every block starts as the identity,
        # which trains faster from scratch (there are no pretrained weights to load here).
        for m in self.modules():
            if isinstance(m, BasicBlock) and isinstance(m.norm2, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.zeros_(m.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def feature_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of the feature map for an (H, W) image, found by running one."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            out = self(torch.zeros(1, 3, *image_size))
            self.train(was_training)
        return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map (Levine et al. 2016; Diffusion Policy's image head).

    A 1x1 conv makes ``num_keypoints`` maps (unless ``num_keypoints`` is None: the input
    channels are used as they are); each is softmaxed over space and its expected (x, y)
    position, in [-1, 1] with -1 at the left/top pixel centre, is returned:
    [B, C, H, W] -> [B, K, 2].
    """

    def __init__(self, channels: int, height: int, width: int, num_keypoints: int | None = None) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Identity() if num_keypoints is None else nn.Conv2d(channels, num_keypoints, 1)
        self.num_keypoints = channels if num_keypoints is None else num_keypoints
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.grid: Tensor
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        maps = self.proj(features)
        attention = torch.softmax(maps.flatten(2), dim=-1)  # [B, K, H*W]
        return attention @ self.grid  # [B, K, 2]
