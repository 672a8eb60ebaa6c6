"""DeepLabV3 segmenters: a backbone at output stride 8, the ASPP head, logits upsampled to the input's size.

The head follows DeepLabV3 (Chen et al., 2017) as torchvision's ``DeepLabHead`` builds it (and DFAD's
network/segmentation/_deeplab.py): ASPP with a 1x1 branch, three 3x3 atrous branches and an image-pooling
branch, each conv-BN-ReLU into ``aspp`` channels, projected by a 1x1 conv-BN-ReLU (dropout 0.5 while training),
then a 3x3 conv-BN-ReLU and a 1x1 conv to the classes; the logits are upsampled bilinearly to the input.

``deeplab_tiny`` (teacher) and ``deeplab_tiny_half`` (student) are the CPU test bed's pair (one channel, 64x64
``mnist_seg``): a small residual backbone (a stride-2 stem, stages of basic blocks at strides 1, 2, 2; output
stride 8) and atrous rates (2, 4, 6) for its 8x8 map. A model's ``forward(x)`` gives ``(N, classes, H, W)``;
``forward(x, return_features=True)`` adds the head's last feature map; ``stages()`` lists the backbone's stages
(attention transfer), like the classifiers'.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import MODELS
from .base import init_conv_bn


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Sequential):
    """The image-pooling branch: global average, 1x1 conv-BN-ReLU, upsampled back."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for m in self:
            x = m(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin: int, rates: Sequence[int], cout: int = 256, dropout: float = 0.5):
        super().__init__()
        branches = [_conv_bn_relu(cin, cout, k=1)]
        branches += [_conv_bn_relu(cin, cout, k=3, dilation=r) for r in rates]
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(cout * len(branches), cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(self, cin: int, num_classes: int, rates: Sequence[int], aspp: int = 256):
        super().__init__(ASPP(cin, rates, aspp), _conv_bn_relu(aspp, aspp), nn.Conv2d(aspp, num_classes, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cout, stride=stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Sequential()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class TinyBackbone(nn.Module):
    """A stride-2 stem and stages of basic blocks at strides 1, 2, 2: output stride 8."""

    def __init__(self, in_channels: int, widths: Sequence[int], blocks: int):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, widths[0], stride=2)
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers = [BasicBlock(cin, w, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.layers = nn.ModuleList(stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.layers:
            x = stage(x)
        return x


class DeepLabV3(nn.Module):
    """A backbone and a :class:`DeepLabHead`; logits at the input's size."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = head

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits ``(N, classes, H, W)`` at the input's size; with ``return_features``, ``(logits, features)``:
        the head's last map before its 1x1 classifier, at the backbone's stride (DAFL's activation term)."""
        size = x.shape[-2:]
        *body, last = self.classifier
        feats = self.backbone(x)
        for m in body:
            feats = m(feats)
        logits = F.interpolate(last(feats), size=size, mode="bilinear", align_corners=False)
        return (logits, feats) if return_features else logits

    def stages(self) -> List[nn.Module]:
        return list(getattr(self.backbone, "layers", []))


def _tiny(widths: Sequence[int], blocks: int, aspp: int, num_classes: int, in_channels: int) -> DeepLabV3:
    backbone = TinyBackbone(in_channels, widths, blocks)
    model = DeepLabV3(backbone, DeepLabHead(backbone.out_channels, num_classes, rates=(2, 4, 6), aspp=aspp))
    init_conv_bn(model)
    return model


def segmenter(builder):
    """Mark a model builder as a segmenter's (:func:`datafree.models.factory.model_task`)."""
    builder.task = "segmentation"
    return builder


@MODELS.register("deeplab_tiny")
@segmenter
def deeplab_tiny(num_classes: int = 11, in_channels: int = 1, image_size: int = 64) -> DeepLabV3:
    """The test bed's teacher: widths 16-32-64, two blocks a stage, ASPP 48 channels (297K parameters)."""
    return _tiny((16, 32, 64), 2, 48, num_classes, in_channels)


@MODELS.register("deeplab_tiny_half")
@segmenter
def deeplab_tiny_half(num_classes: int = 11, in_channels: int = 1, image_size: int = 64) -> DeepLabV3:
    """The test bed's student: widths 16-32-64, one block a stage, ASPP 32 channels (152K parameters)."""
    return _tiny((16, 32, 64), 1, 32, num_classes, in_channels)
