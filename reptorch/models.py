"""The paper's networks (section 3 of docs/paper-reference.md), built to match the reference code.

Faithful details, each a deliberate choice:
- TensorFlow 'same' padding. With stride 2, TF pads only bottom/right when the total padding is odd
  (28 -> 14 pads (0, 1)); PyTorch's symmetric `padding=1` would shift every window by one pixel.
  `SamePad` computes TF's split exactly.
- BatchNorm with epsilon 1e-3 (TensorFlow's default) that always normalises with the statistics of
  the current batch (`track_running_stats=False`): the reference runs BN in training mode in every
  phase, so running statistics are never used and are not part of phi.
- Glorot-uniform weights and zero biases (TensorFlow's `tf.layers` defaults).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's batch_normalization default epsilon


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (before, after) for one spatial dimension: out = ceil(size / stride)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePad(nn.Module):
    """Pads an NCHW tensor as TensorFlow's 'same' would for a (kernel, stride) window."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0) -> None:
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)


def _glorot_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ConvBlock(nn.Module):
    """conv 3x3 ('same') -> BatchNorm (batch statistics) -> [max-pool 2x2 'same'] -> ReLU."""

    def __init__(self, in_channels: int, filters: int, stride: int, pool: bool) -> None:
        super().__init__()
        self.pad = SamePad(3, stride)
        self.conv = nn.Conv2d(in_channels, filters, 3, stride=stride)
        self.norm = nn.BatchNorm2d(filters, eps=BN_EPS, track_running_stats=False)
        # TF's 'same' 2x2/2 max pooling pads bottom/right, which is PyTorch's ceil_mode=True.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pool(self.norm(self.conv(self.pad(x)))))


class FourBlockNet(nn.Module):
    """4 x ConvBlock -> flatten (side x side x filters) -> linear to `num_classes` logits."""

    def __init__(
        self, num_classes: int, filters: int, in_channels: int, stride: int, pool: bool, side: int
    ) -> None:
        super().__init__()
        channels = [in_channels] + [filters] * 4
        self.blocks = nn.Sequential(
            *(ConvBlock(channels[i], filters, stride=stride, pool=pool) for i in range(4))
        )
        self.classifier = nn.Linear(side * side * filters, num_classes)
        _glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(x).flatten(1))


class OmniglotNet(FourBlockNet):
    """28x28x1 -> 4 x [conv 3x3 stride 2 'same' -> BN -> ReLU] -> 2x2xF -> linear to `num_classes`.

    The paper's network has 64 filters; the browser demo's has 24.
    """

    def __init__(self, num_classes: int, filters: int = 64, in_channels: int = 1) -> None:
        super().__init__(num_classes, filters, in_channels, stride=2, pool=False, side=2)


class MiniImageNetNet(FourBlockNet):
    """84x84x3 -> 4 x [conv 3x3 'same' -> BN -> max-pool 2x2 'same' -> ReLU] -> 6x6x32 -> linear.

    'same' pooling takes 84 -> 42 -> 21 -> 11 -> 6: the classifier sees 6 * 6 * 32 = 1152 features.
    """

    def __init__(self, num_classes: int, filters: int = 32, in_channels: int = 3) -> None:
        super().__init__(num_classes, filters, in_channels, stride=1, pool=True, side=6)


class SineMLP(nn.Module):
    """1 -> 64 -> 64 -> 1 regression MLP (paper section 4; tanh as in the OpenAI post's example)."""

    def __init__(self, hidden: int = 64, activation: str = "tanh") -> None:
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.net = nn.Sequential(
            nn.Linear(1, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
