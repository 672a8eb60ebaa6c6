"""CIFAR-style ResNets.

* ``resnet8/20/32/56/110``: He et al. 2016's CIFAR ResNets (three stages of
  16/32/64 channels, 6n+2 layers), with 1x1-convolution shortcuts.
* ``resnet18/34/50``: the ImageNet block layout (64..512 channels) with a 3x3
  stride-1 stem and no max-pool, the form used by the DFKD papers on CIFAR.

Global average pooling makes every model work at any input size.
"""

from __future__ import annotations

from typing import List, Type, Union

from torch import nn
from torch.nn import functional as F

from ..registry import MODELS
from .base import Classifier, init_conv_bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Classifier):
    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        widths: List[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self._cin = widths[0]
        strides = [1] + [2] * (len(layers) - 1)
        self.layers = nn.ModuleList(self._make_layer(block, w, n, s) for w, n, s in zip(widths, layers, strides))
        self.feature_dim = self._cin
        self.head = nn.Linear(self._cin, num_classes)
        init_conv_bn(self)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(block(self._cin, planes, s))
            self._cin = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward_features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for layer in self.layers:
            x = layer(x)
        return x

    def stages(self):
        return list(self.layers)


def _cifar_resnet(depth: int):
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n+2")
    n = (depth - 2) // 6

    def build(num_classes=10, in_channels=3, image_size=32):
        return ResNet(BasicBlock, [n, n, n], [16, 32, 64], num_classes, in_channels)

    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016), {n} blocks per stage."
    return build


for _d in (8, 20, 32, 56, 110):
    MODELS.register(f"resnet{_d}", _cifar_resnet(_d))


def _imagenet_layout(block, layers):
    def build(num_classes=10, in_channels=3, image_size=32):
        return ResNet(block, layers, [64, 128, 256, 512], num_classes, in_channels)

    return build


MODELS.register("resnet18", _imagenet_layout(BasicBlock, [2, 2, 2, 2]))
MODELS.register("resnet34", _imagenet_layout(BasicBlock, [3, 4, 6, 3]))
MODELS.register("resnet50", _imagenet_layout(Bottleneck, [3, 4, 6, 3]))
