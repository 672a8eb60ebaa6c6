"""LeNet-5 and LeNet-5-half, the MNIST pair of DAFL (Chen et al., ICCV 2019).

At 32x32 (MNIST resized, as in DAFL) the layers are exactly LeNet-5's:
conv 5x5 -> pool -> conv 5x5 -> pool -> conv 5x5 to a 1x1 map of 120
(60 for the half model) -> fc 84 (42) -> fc classes. For smaller inputs
(digits, 8x8) the first two convolutions pad to keep the size ("same") and the
third convolution's kernel covers what is left, so the layer widths and the
1x1 feature map stay the same.

``lenet5_bn`` is LeNet-5 with a BatchNorm after each convolution and after the
hidden linear layer (conv -> BN -> ReLU -> pool): the same widths, and BN
statistics for the inversion methods' BN prior to match (LeNet-5 has none).
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
    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32, width: float = 1.0, bn: bool = False
    ):
        super().__init__()
        c1, c2, c3, f1 = (int(round(c * width)) for c in (6, 16, 120, 84))
        pad = 0 if _spatial_after(image_size, 0) >= 1 else 2
        k3 = _spatial_after(image_size, pad)
        if k3 < 1:
            raise ValueError(f"LeNet-5 needs images of at least 4x4, got {image_size}")

        def block(conv: nn.Conv2d, pool: bool) -> list:
            layers = [conv] + ([nn.BatchNorm2d(conv.out_channels)] if bn else []) + [nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(
            *block(nn.Conv2d(in_channels, c1, 5, padding=pad), True),
            *block(nn.Conv2d(c1, c2, 5, padding=pad), True),
            *block(nn.Conv2d(c2, c3, k3), False),
        )
        hidden = [nn.Linear(c3, f1)] + ([nn.BatchNorm1d(f1)] if bn else []) + [nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*hidden, nn.Linear(f1, num_classes))
        self.feature_dim = c3
        # the outputs of the two pooled blocks and of the last convolution's ReLU
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._stage_idx = pools + [len(self.features) - 1]

    def forward_features(self, x):
        return self.features(x)

    def stages(self):
        return [self.features[i] for i in self._stage_idx]


@MODELS.register("lenet5")
def lenet5(num_classes=10, in_channels=1, image_size=32):
    return LeNet5(num_classes, in_channels, image_size, width=1.0)


@MODELS.register("lenet5_half")
def lenet5_half(num_classes=10, in_channels=1, image_size=32):
    return LeNet5(num_classes, in_channels, image_size, width=0.5)


@MODELS.register("lenet5_bn")
def lenet5_bn(num_classes=10, in_channels=1, image_size=32):
    return LeNet5(num_classes, in_channels, image_size, width=1.0, bn=True)
