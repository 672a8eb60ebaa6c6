"""A class-conditional GAN for small images: BigGAN-style generator, SN-ResNet discriminator.

Used by HiDFD (Tang et al., AAAI 2025), which trains ADC-GAN (Hou et al.,
NeurIPS 2022) with BigGAN's 32x32 architecture (Brock et al., ICLR 2019) on a
small collected real set.

:class:`ConditionalGenerator`: z (dim 128) -> linear -> a (4 x ch) x 4 x 4 map
-> residual up-blocks (class-conditional BN, ReLU, nearest x2, 3x3 conv, twice,
plus a 1x1 shortcut) -> BN, ReLU, 3x3 conv to the image channels -> tanh.
Class-conditional BN normalises without affine parameters and then applies a
per-class gain ``1 + gamma[y]`` and bias ``beta[y]`` (embeddings, as BigGAN
without a shared embedding). Every conv and linear layer is spectrally
normalised (BigGAN's ``G_param='SN'``). The output is in [-1, 1];
:meth:`ConditionalGenerator.pixels` maps it to [0, 1].

:class:`SNDiscriminator`: residual down-blocks (BigGAN's wide DBlock, spectral
norm, average-pool downsampling), ReLU, global sum pooling, then three heads on
the pooled features: the adversarial output (1), ADC-GAN's auxiliary
classifier over 2K classes (``2k``: real image of class k, ``2k + 1``: fake
image of class k), and HiDFD's feature head (an MLP to the teacher's
penultimate width).

At 32x32 the layers are BigGAN's ``arch[32]`` (all blocks 4 x ch wide; G
upsamples 4 -> 8 -> 16 -> 32, D downsamples 32 -> 16 -> 8 and then has two
blocks at 8 x 8). Other sizes keep the width and change only the number of
resolution-changing blocks (``log2(size / 4)`` up-blocks in G, ``log2(size / 8)``
down-blocks in D); sizes that are not 4 x a power of two are reached with a
final resize. Weights are initialised N(0, 0.02) (the HiDFD script's
``--G_init N02 --D_init N02``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ..registry import GENERATORS


def sn_conv(cin: int, cout: int, k: int = 3) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


def sn_linear(cin: int, cout: int, bias: bool = True) -> nn.Module:
    return spectral_norm(nn.Linear(cin, cout, bias=bias))


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for every conv, linear and embedding weight (BigGAN's N02)."""
    for m in module.modules():
        weight = None
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        if weight is not None:
            nn.init.normal_(weight, 0.0, std)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine parameters, then a per-class gain (1 + gamma[y]) and bias beta[y]."""

    def __init__(self, channels: int, num_classes: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(y)[:, :, None, None]
        bias = self.bias(y)[:, :, None, None]
        return self.bn(x) * gain.to(x.dtype) + bias.to(x.dtype)


class GBlock(nn.Module):
    """BigGAN's generator block: (cBN, ReLU, up x2, conv3) x 2 plus a 1x1 conv shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.bn1 = ConditionalBatchNorm(cin, num_classes)
        self.conv1 = sn_conv(cin, cout)
        self.bn2 = ConditionalBatchNorm(cout, num_classes)
        self.conv2 = sn_conv(cout, cout)
        self.shortcut = sn_conv(cin, cout, 1) if (cin != cout or upsample) else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2)
            x = F.interpolate(x, scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + (self.shortcut(x) if self.shortcut is not None else x)


class DBlock(nn.Module):
    """BigGAN's wide discriminator block; pre-activation on all but the first block."""

    def __init__(self, cin: int, cout: int, downsample: bool, preactivation: bool):
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = sn_conv(cin, cout)
        self.conv2 = sn_conv(cout, cout)
        self.shortcut = sn_conv(cin, cout, 1) if (cin != cout or downsample) else None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.preactivation:
            if self.shortcut is not None:
                x = self.shortcut(x)
            return F.avg_pool2d(x, 2) if self.downsample else x
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return self.shortcut(x) if self.shortcut is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return h + self._shortcut(x)


def _up_blocks(img_size: int, bottom: int = 4) -> int:
    return max(0, math.ceil(math.log2(max(1, img_size) / bottom)))


def _down_blocks(img_size: int) -> int:
    return max(0, math.ceil(math.log2(max(1, img_size) / 8)))


class ConditionalGenerator(nn.Module):
    def __init__(
        self, nz: int = 128, ch: int = 64, img_size: int = 32, nc: int = 3, num_classes: int = 10, bottom: int = 4
    ):
        super().__init__()
        self.nz, self.img_size, self.nc, self.num_classes, self.bottom = nz, img_size, nc, num_classes, bottom
        width = 4 * ch
        self.width = width
        self.linear = sn_linear(nz, width * bottom * bottom)
        self.blocks = nn.ModuleList([GBlock(width, width, num_classes) for _ in range(_up_blocks(img_size, bottom))])
        self.out_bn = nn.BatchNorm2d(width)
        self.out_conv = sn_conv(width, nc)
        init_normal(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] for latent codes ``z`` (B, nz) and class indices ``y`` (B,)."""
        h = self.linear(z).view(z.shape[0], self.width, self.bottom, self.bottom)
        for block in self.blocks:
            h = block(h, y)
        x = torch.tanh(self.out_conv(F.relu(self.out_bn(h))))
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x

    @staticmethod
    def pixels(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] generator output -> [0, 1] pixels."""
        return (x + 1) * 0.5


class SNDiscriminator(nn.Module):
    def __init__(
        self,
        ch: int = 64,
        img_size: int = 32,
        nc: int = 3,
        num_classes: int = 10,
        feature_dim: int = 0,
        feature_hidden: int = 1024,
    ):
        super().__init__()
        width = 4 * ch
        n_down = _down_blocks(img_size)
        plan = [True] * n_down + [False, False]
        blocks, cin = [], nc
        for i, down in enumerate(plan):
            blocks.append(DBlock(cin, width, downsample=down, preactivation=i > 0))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.width = width
        self.linear = sn_linear(width, 1)
        self.adc = sn_linear(width, 2 * num_classes)
        self.feature_head = None
        if feature_dim > 0:
            self.feature_head = nn.Sequential(
                sn_linear(width, feature_hidden), nn.ReLU(), sn_linear(feature_hidden, feature_dim)
            )
        init_normal(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: ReLU then global sum pooling (SN-GAN)."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(
        self, x: torch.Tensor, with_features: bool = True
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(adversarial output (B,), ADC logits (B, 2K), feature-head output (B, F) or None)."""
        h = self.features(x)
        feat = self.feature_head(h) if (with_features and self.feature_head is not None) else None
        return self.linear(h).squeeze(1), self.adc(h), feat


@GENERATORS.register("biggan")
def biggan(nz=128, ngf=64, img_size=32, nc=3, num_classes=10):
    """HiDFD's class-conditional BigGAN generator (``ngf`` is BigGAN's channel multiplier ``G_ch``)."""
    return ConditionalGenerator(nz=nz, ch=ngf, img_size=img_size, nc=nc, num_classes=num_classes)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source over the whole state (parameters and buffers).

    BigGAN's ``utils.ema`` averages the state dict, BN running statistics and
    spectral-norm vectors included; integer buffers are copied.
    """
    src = source.state_dict()
    for k, t in target.state_dict().items():
        s = src[k]
        if t.is_floating_point():
            t.mul_(decay).add_(s.to(t.dtype), alpha=1 - decay)
        else:
            t.copy_(s)
