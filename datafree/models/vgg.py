"""VGG-8/11/13 with batch norm in the CIFAR form of the KD literature (CRD, CMI).

Five convolution blocks; a 2x2 max-pool follows a block while the map is
larger than 4x4 (three pools at 32x32, four at 64x64), then global average
pooling and one linear classifier.
"""

from __future__ import annotations

from typing import List

from torch import nn

from ..registry import MODELS
from .base import Classifier

_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(Classifier):
    def __init__(self, cfg: List[List[int]], num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        blocks, pools, cin, size = [], [], in_channels, image_size
        for i, widths in enumerate(cfg):
            layers = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            blocks.append(nn.Sequential(*layers))
            pool = i < len(cfg) - 1 and size > 4
            pools.append(nn.MaxPool2d(2) if pool else nn.Identity())
            size = size // 2 if pool else size
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleList(pools)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        for block, pool in zip(self.blocks, self.pools):
            x = pool(block(x))
        return x

    def stages(self):
        return list(self.blocks)


def _vgg(name: str):
    def build(num_classes=10, in_channels=3, image_size=32):
        return VGG(_CFG[name], num_classes, in_channels, image_size)

    return build


for _n in _CFG:
    MODELS.register(_n, _vgg(_n))
