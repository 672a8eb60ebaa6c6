"""MobileNetV2 (Sandler et al. 2018) under two names, two stride settings of the same layers.

* ``mobilenetv2``: the network the DFKD reference repositories call ``mobilenetv2``
  (zju-vipa/CMI, ``datafree/models/classifiers/mobilenetv2.py``, registered as
  ``'mobilenetv2'`` in its ``registry.py``; the same file in zju-vipa/Fast-Datafree
  and ljrprocc/DataFree). It is torchvision's MobileNetV2: ImageNet strides, a
  stride-2 stem and the second stage (24 channels) at stride 2, so a 32x32 image
  ends at 1x1 before pooling; dropout 0.2 before the classifier; linear layer
  initialised N(0, 0.01). Their checkpoints load into it (names mapped by
  :mod:`datafree.models.layouts`) and compute the same function.
* ``mobilenetv2_cifar``: CIFAR strides, a stride-1 stem and the second stage at
  stride 1, so 32x32 inputs end at 4x4 before pooling; no dropout. This is what
  this package called ``mobilenetv2`` before; it has the same parameters (names
  and shapes) but computes another function, so the two names are kept apart.

Both take any number of input channels (the reference hard-codes 3).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..registry import MODELS
from .base import Classifier, init_conv_bn

# expansion, out channels, repeats, stride (of the first block); the stem and these strides are per variant
_CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
IMAGENET_STRIDES = (2, 1, 2, 2, 2, 1, 2, 1)  # stem, then the seven stages: torchvision's and the reference's
CIFAR_STRIDES = (1, 1, 1, 2, 2, 1, 2, 1)  # stem and second stage at stride 1


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2(Classifier):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        strides: Sequence[int] = CIFAR_STRIDES,
        dropout: float = 0.0,
    ):
        super().__init__()
        cin = int(32 * width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, cin, 3, strides[0], 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)
        )
        stages = []
        for (t, c, n, _), s in zip(_CFG, strides[1:]):
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, t, s if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last = max(1280, int(1280 * width))
        self.conv_last = nn.Sequential(
            nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)
        )
        self.feature_dim = last
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(last, num_classes)
        init_conv_bn(self)

    def forward_features(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.conv_last(x)

    def forward(self, x, return_features=False):
        feats = self.pool(self.forward_features(x))
        logits = self.head(self.dropout(feats))
        return (logits, feats) if return_features else logits

    def stages(self):
        return [self.blocks[1], self.blocks[2], self.blocks[3], self.blocks[5]]


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes=10, in_channels=3, image_size=32):
    """MobileNetV2 with ImageNet strides: the CMI / Fast-Datafree / DataFree ``mobilenetv2`` (torchvision's)."""
    m = MobileNetV2(num_classes, in_channels, strides=IMAGENET_STRIDES, dropout=0.2)
    nn.init.normal_(m.head.weight, 0, 0.01)  # the reference's initialisation of its classifier
    nn.init.zeros_(m.head.bias)
    return m


@MODELS.register("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes=10, in_channels=3, image_size=32):
    """MobileNetV2 with CIFAR strides (stride-1 stem, second stage at stride 1): 32x32 inputs end at 4x4."""
    return MobileNetV2(num_classes, in_channels, strides=CIFAR_STRIDES)
