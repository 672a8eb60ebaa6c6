"""LeNet-5 and LeNet-5-half, the MNIST pair of DAFL (Chen et al., ICCV 2019).

At 32x32 (MNIST resized, as in DAFL) the layers are exactly LeNet-5's:
conv 5x5 -> pool -> conv 5x5 -> pool -> conv 5x5 to a 1x1 map of 120
(60 for the half model) -> fc 84 (42) -> fc classes. For smaller inputs
(digits, 8x8) the first two convolutions pad to keep the size ("same") and the
third convolution's kernel covers what is left, so the layer widths and the
1x1 feature map stay the same.
"""
from __future__ import annotations

from torch import nn

from ..registry import MODELS
from .base import Classifier


def _spatial_after(size: int, pad: int) -> int:
    s = size + 2 * pad - 4  # conv 5x5
    s //= 2
    s = s + 2 * pad - 4
    return s // 2


class LeNet5(Classifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32, width: float = 1.0):
        super().__init__()
        c1, c2, c3, f1 = (int(round(c * width)) for c in (6, 16, 120, 84))
        pad = 0 if _spatial_after(image_size, 0) >= 1 else 2
        k3 = _spatial_after(image_size, pad)
        if k3 < 1:
            raise ValueError(f"LeNet-5 needs images of at least 4x4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, k3), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Linear(c3, f1), nn.ReLU(inplace=True), nn.Linear(f1, num_classes))
        self.feature_dim = c3

    def forward_features(self, x):
        return self.features(x)

    def stages(self):
        return [self.features[2], self.features[5], self.features[7]]


@MODELS.register("lenet5")
def lenet5(num_classes=10, in_channels=1, image_size=32):
    return LeNet5(num_classes, in_channels, image_size, width=1.0)


@MODELS.register("lenet5_half")
def lenet5_half(num_classes=10, in_channels=1, image_size=32):
    return LeNet5(num_classes, in_channels, image_size, width=0.5)
