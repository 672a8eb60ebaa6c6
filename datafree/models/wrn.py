"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), pre-activation blocks, no dropout.

The teacher/student family of ZSKT, CMI and their successors: wrn16_1,
wrn16_2, wrn40_1, wrn40_2 (depth 6n+4, widths 16, 16k, 32k, 64k).
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..registry import MODELS
from .base import Classifier, init_conv_bn


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class WideResNet(Classifier):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(cin)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x):
        x = self.conv1(x)
        for g in self.groups:
            x = g(x)
        return F.relu(self.bn(x))

    def stages(self):
        return list(self.groups)


def _wrn(depth: int, widen: int):
    def build(num_classes=10, in_channels=3, image_size=32):
        return WideResNet(depth, widen, num_classes, in_channels)

    build.__doc__ = f"WRN-{depth}-{widen}"
    return build


for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    MODELS.register(f"wrn{_d}_{_k}", _wrn(_d, _k))
