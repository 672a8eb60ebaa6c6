"""DeepLabV3 segmenters: a backbone at output stride 8, the ASPP head, logits upsampled to the input's size.

The head follows DeepLabV3 (Chen et al., 2017) as torchvision's ``DeepLabHead`` builds it (and DFAD's
network/segmentation/_deeplab.py): ASPP with a 1x1 branch, three 3x3 atrous branches and an image-pooling
branch, each conv-BN-ReLU into ``aspp`` channels, projected by a 1x1 conv-BN-ReLU (then dropout while training),
then a 3x3 conv-BN-ReLU and a 1x1 conv to the classes; the logits are upsampled bilinearly to the input.

``deeplab_tiny`` (teacher) and ``deeplab_tiny_half`` (student) are the CPU test bed's pair (one channel, 64x64
``mnist_seg``): a small residual backbone (a stride-2 stem, stages of basic blocks at strides 1, 2, 2; output
stride 8) and atrous rates (2, 4, 6) for its 8x8 map.

``deeplabv3_resnet50`` (teacher) and ``deeplabv3_mobilenet`` (student) are the NYUv2/CamVid pair of DFAD
(VainF/Data-Free-Adversarial-Distillation@c161591a, network/segmentation/{deeplabv3,_deeplab,mobilenet}.py),
which Fast-Datafree (zju-vipa/Fast-Datafree@0dcecbc1, datafree/models/deeplab/) also ships:

* ``deeplabv3_resnet50``: torchvision's ResNet-50 body (``replace_stride_with_dilation=[False, True, True]``,
  output stride 8; no avgpool/fc) and DFAD's head: ASPP rates (12, 24, 32) (torchvision's and Fast-Datafree's
  third rate is 36), ``nn.Sequential(ASPP, conv3x3 256 no bias, BN, ReLU, conv1x1 to the classes)``; the ASPP
  dropout is ``dropout_p`` (DFAD's builder default 0.0, what its distillation scripts run the teacher with).
  39,636,813 parameters at 13 classes.
* ``deeplabv3_mobilenet``: DFAD's MobileNetV2 (width 1.0, the seven inverted-residual stages and no final 1280
  conv: 320 channels out) at output stride 8: the 64-channel stage and later run at stride 1, with DFAD's
  depthwise dilations (blocks 1-10: 1, blocks 11-16: 2, block 17: 4). Each block pads its *input* by the
  depthwise conv's dilation ("fixed padding") and runs its convs unpadded, so the expansion conv's BN-ReLU6 acts
  on the padding too (not the same as a padded depthwise conv). ReLU6, flat ``features.<i>.conv.<j>`` names.
  Head as above with 320 inputs; ``dropout_p`` 0.5 by default (what DFAD_nyu_deeplab.py and
  DFAD_camvid_deeplab.py build the student with). 5,111,821 parameters at 13 classes.

Their state-dict names are DFAD's exactly (``backbone.conv1.weight`` .. ``classifier.4.bias``), so a DFAD
checkpoint (a bare ``state_dict()``) loads as it is; Fast-Datafree's names are mapped by
:mod:`datafree.models.layouts` (layout ``fast``). Initialisation is DFAD's: torchvision's for the ResNet body,
``kaiming_normal_`` (fan-in) and BN 1/0 for the MobileNetV2 body, PyTorch's defaults for the head.

Fast-Datafree's networks differ from DFAD's in function, not in parameters: ASPP rates (12, 24, 36), and a
MobileNetV2 whose stem conv is unpadded and whose first block of a dilated stage keeps the previous dilation
(blocks 8-10 dilation 2, 15-16 dilation 4). ``aspp_rates=FAST_ASPP_RATES`` (both builders) and
``variant="fast"`` (the MobileNetV2) build Fast-Datafree's function; the defaults are DFAD's. Measured with
the reference code built outside this repository (``tests/fixtures/make_deeplab_reference.py`` records the
Fast-Datafree figures), state dicts filled by ``make_reference_layouts.fill``, float32, Fast-Datafree's loaded
through the ``fast`` layout:

* the builders' defaults against DFAD's own code (the same filled state dict, float32, eval): max |diff| 0 (bit
  for bit) for both models at 128x128 and 256x341;
* the builders' defaults against Fast-Datafree's own code: ResNet-50 teacher at 128x128 identical (max |diff| 0:
  on its 16x16 map no off-centre tap of rate 32 or 36 lands inside), at 256x341 (DFAD's NYUv2 test size, a
  32x43 map) max |diff| 3.8e3 on logits of max 1.5e4 (26%), 4.6% of the pixels' argmax changed; MobileNetV2
  student at 128x128 max |diff| 4.6 on logits of max 8.5 (54%), 42% of the argmaxes changed (256x341: max
  |diff| 8.0 of 12.4, 51% of the argmaxes). So a Fast-Datafree *student* checkpoint in the default
  ``deeplabv3_mobilenet`` is another network;
* with ``aspp_rates=FAST_ASPP_RATES`` (and ``variant="fast"``): max |diff| 0 at both sizes.

(Numbers for filled, untrained weights: they show the size of the gap, not what a trained model would lose.)

A model's ``forward(x)`` gives ``(N, classes, H, W)``; ``forward(x, return_features=True)`` adds the head's last
feature map; ``stages()`` lists the backbone's stages (attention transfer), like the classifiers'.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import MODELS
from .base import init_conv_bn

DFAD_ASPP_RATES = (12, 24, 32)  # DFAD network/segmentation/_deeplab.py DeepLabHead
FAST_ASPP_RATES = (12, 24, 36)  # Fast-Datafree datafree/models/deeplab/modeling.py at output stride 8 (torchvision's)


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
    """ASPP, a 3x3 conv-BN-ReLU, a 1x1 conv to the classes.

    ``flat=False`` (the test bed's pair) nests the conv-BN-ReLU: ``1.0`` conv, ``1.1`` BN, ``2`` classifier;
    ``flat=True`` is DFAD's / torchvision's layout: ``1`` conv, ``2`` BN, ``3`` ReLU, ``4`` classifier."""

    def __init__(
        self,
        cin: int,
        num_classes: int,
        rates: Sequence[int],
        aspp: int = 256,
        dropout: float = 0.5,
        flat: bool = False,
    ):
        if flat:
            mid: Tuple[nn.Module, ...] = (
                nn.Conv2d(aspp, aspp, 3, padding=1, bias=False),
                nn.BatchNorm2d(aspp),
                nn.ReLU(),
            )
        else:
            mid = (_conv_bn_relu(aspp, aspp),)
        super().__init__(ASPP(cin, rates, aspp, dropout), *mid, nn.Conv2d(aspp, num_classes, 1))


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
        stages = getattr(self.backbone, "stages", None)
        if callable(stages):
            return list(stages())
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


# --- DFAD's pair ----------------------------------------------------------------------------------------------
class ResNetBody(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``: ``conv1`` .. ``layer4`` under torchvision's names (what
    DFAD's ``IntermediateLayerGetter(resnet, {'layer4': 'out'})`` keeps), returning ``layer4``'s map."""

    NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, resnet: nn.Module):
        super().__init__()
        for name in self.NAMES:
            self.add_module(name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.children():
            x = m(x)
        return x

    def stages(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]


class FixedPaddingInvertedResidual(nn.Module):
    """An inverted residual block that pads its input by ``dilation`` on every side (the "fixed padding" of a 3x3
    kernel) and runs unpadded convs: ``conv`` = [pw 1x1, BN, ReLU6,] dw 3x3, BN, ReLU6, pw-linear 1x1, BN (flat)."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, expansion: int):
        super().__init__()
        hidden = int(round(cin * expansion))
        self.use_res = stride == 1 and cin == cout
        self.pad = dilation
        layers: List[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 0, dilation, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, (self.pad,) * 4))
        return x + out if self.use_res else out


# expansion, out channels, repeats, stride of the first block (DFAD's and Fast-Datafree's, MobileNetV2's)
MOBILENET_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
VARIANTS = ("dfad", "fast")


def mobilenet_schedule(variant: str = "dfad", output_stride: int = 8) -> List[Tuple[int, int, int, int, int]]:
    """``(cin, cout, stride, dilation, expansion)`` of the 17 blocks at ``output_stride``.

    Once the stride reaches ``output_stride``, a stage's stride becomes a dilation. ``dfad`` (DFAD mobilenet.py):
    every block of that stage takes the dilation reached before it, the next stage the multiplied one.
    ``fast`` (Fast-Datafree backbone/mobilenetv2.py): the stage's first block takes the previous dilation, the
    others the multiplied one."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MobileNetV2 variant {variant!r}: one of {', '.join(VARIANTS)}")
    blocks, cin, current, rate = [], 32, 2, 1
    for t, c, n, s in MOBILENET_STAGES:
        if current == output_stride:
            first = rate
            rate *= s
            rest = first if variant == "dfad" else rate
            stride = 1
        else:
            first = rest = rate
            stride = s
            current *= s
        for i in range(n):
            blocks.append((cin, c, stride if i == 0 else 1, first if i == 0 else rest, t))
            cin = c
    return blocks


class MobileNetV2Body(nn.Module):
    """DFAD's MobileNetV2 body at output stride 8: ``features.0`` a 3x3 stride-2 conv-BN-ReLU6 to 32 channels,
    ``features.1..17`` :class:`FixedPaddingInvertedResidual` blocks; 320 channels out."""

    def __init__(self, in_channels: int = 3, variant: str = "dfad"):
        super().__init__()
        blocks = mobilenet_schedule(variant)
        stem_pad = 1 if variant == "dfad" else 0  # Fast-Datafree's ConvBNReLU stem pads nothing
        layers: List[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, 32, 3, 2, stem_pad, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)
            )
        ]
        layers += [FixedPaddingInvertedResidual(cin, cout, s, d, t) for cin, cout, s, d, t in blocks]
        self.features = nn.Sequential(*layers)
        self.out_channels = blocks[-1][1]
        for m in self.modules():  # DFAD mobilenet.py MobileNetV2._initialize_weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stages(self) -> List[nn.Module]:
        """The last blocks of the 24-, 32-, 96- and 320-channel stages (strides 4, 8, 8, 8)."""
        return [self.features[3], self.features[6], self.features[13], self.features[17]]


def _rates(rates: Sequence[int]) -> Tuple[int, ...]:
    rates = tuple(int(r) for r in rates)
    if len(rates) != 3 or min(rates) < 1:
        raise ValueError(f"aspp_rates must be three positive dilations, e.g. {DFAD_ASPP_RATES}; got {rates}")
    return rates


@MODELS.register("deeplabv3_resnet50")
@segmenter
def deeplabv3_resnet50(
    num_classes: int = 13,
    in_channels: int = 3,
    image_size: int = 128,
    dropout_p: float = 0.0,
    aspp_rates: Sequence[int] = DFAD_ASPP_RATES,
) -> DeepLabV3:
    """DFAD's teacher: DeepLabV3 on torchvision's ResNet-50 at output stride 8 (39.6M parameters at 13 classes).

    ``dropout_p``: the ASPP projection's dropout (DFAD's default 0.0; its train_teacher_seg.py trains with 0.5).
    ``aspp_rates``: DFAD's (12, 24, 32); :data:`FAST_ASPP_RATES` for Fast-Datafree's. Another ``in_channels``
    than 3 replaces the stem conv (initialised as torchvision does)."""
    from torchvision.models import resnet50

    resnet = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    if in_channels != 3:
        resnet.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    head = DeepLabHead(2048, num_classes, _rates(aspp_rates), 256, dropout_p, flat=True)
    return DeepLabV3(ResNetBody(resnet), head)


@MODELS.register("deeplabv3_mobilenet")
@segmenter
def deeplabv3_mobilenet(
    num_classes: int = 13,
    in_channels: int = 3,
    image_size: int = 128,
    dropout_p: float = 0.5,
    aspp_rates: Sequence[int] = DFAD_ASPP_RATES,
    variant: str = "dfad",
) -> DeepLabV3:
    """DFAD's student: DeepLabV3 on DFAD's MobileNetV2 at output stride 8 (5.1M parameters at 13 classes).

    ``dropout_p``: the ASPP projection's dropout (0.5, as DFAD's distillation scripts build the student).
    ``aspp_rates`` and ``variant`` (``"dfad"``; ``"fast"``: Fast-Datafree's stem padding and dilations) pick
    whose function it computes; the parameters are the same. Any ``in_channels``."""
    body = MobileNetV2Body(in_channels, variant)
    head = DeepLabHead(body.out_channels, num_classes, _rates(aspp_rates), 256, dropout_p, flat=True)
    return DeepLabV3(body, head)
