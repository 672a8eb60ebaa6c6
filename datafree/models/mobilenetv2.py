"""MobileNetV2 (Sandler et al. 2018) for small images: stride-1 stem, the
second stage at stride 1, so 32x32 inputs end at 4x4 before pooling."""
from __future__ import annotations

from torch import nn

from ..registry import MODELS
from .base import Classifier, init_conv_bn

# expansion, out channels, repeats, stride
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2(Classifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        cin = int(32 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin),
                                  nn.ReLU6(inplace=True))
        stages = []
        for t, c, n, s in _CFG:
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, t, s if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last = max(1280, int(1280 * width))
        self.conv_last = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last),
                                       nn.ReLU6(inplace=True))
        self.feature_dim = last
        self.head = nn.Linear(last, num_classes)
        init_conv_bn(self)

    def forward_features(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.conv_last(x)

    def stages(self):
        return [self.blocks[1], self.blocks[2], self.blocks[3], self.blocks[5]]


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes=10, in_channels=3, image_size=32):
    return MobileNetV2(num_classes, in_channels)
