"""Generators of the DFKD literature.

:class:`DCGANGenerator` is the generator of the CMI family (used by DAFL,
ZSKT, DFAD, DFQ, CMI, Fast-DFKD and CuDFKD re-implementations): a linear
projection of z to a (width x size/4 x size/4) map, then two (upsample x2,
3x3 conv, BN, LeakyReLU 0.2) stages and a 3x3 conv to the image channels.

``mult`` sets the projection width: 2 x ngf is CMI's ``Generator``, 4 x ngf
its ``LargeGenerator``. ``output`` chooses the last activation:

* ``sigmoid`` (CMI family): pixels in [0, 1]; the synthesizer normalises them
  with the dataset's mean and std;
* ``tanh_bn`` (DAFL paper): tanh followed by a BatchNorm without affine
  parameters, so the output is already in normalised space;
* ``bn`` (ZSKT paper): an affine BatchNorm on the last convolution, no
  squashing; the output is treated as normalised images.

Odd sizes (28, 7, ...) are reached with a final resize.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..registry import GENERATORS


class DCGANGenerator(nn.Module):
    def __init__(
        self,
        nz: int = 256,
        ngf: int = 64,
        img_size: int = 32,
        nc: int = 3,
        mult: int = 2,
        output: str = "sigmoid",
        conv_bias: bool = False,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        if output not in ("sigmoid", "tanh_bn", "bn"):
            raise ValueError(f"output must be 'sigmoid', 'tanh_bn' or 'bn', got {output!r}")
        self.nz, self.img_size, self.nc, self.output = nz, img_size, nc, output
        self.init_size = max(1, img_size // 4)
        w = ngf * mult
        self.project = nn.Linear(nz, w * self.init_size**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(w),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(w, w if mult == 2 else ngf * 2, 3, 1, 1, bias=conv_bias),
            nn.BatchNorm2d(w if mult == 2 else ngf * 2, eps=bn_eps),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(w if mult == 2 else ngf * 2, ngf, 3, 1, 1, bias=conv_bias),
            nn.BatchNorm2d(ngf, eps=bn_eps),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, nc, 3, 1, 1),
        )
        self.out_norm = nn.BatchNorm2d(nc, affine=output == "bn") if output in ("tanh_bn", "bn") else None

    @property
    def normalized_output(self) -> bool:
        """True when the output is already in the dataset's normalised space."""
        return self.output in ("tanh_bn", "bn")

    def forward(self, z):
        x = self.project(z).view(z.shape[0], -1, self.init_size, self.init_size)
        x = self.body(x)
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        if self.output == "sigmoid":
            return x.sigmoid()
        if self.output == "bn":
            return self.out_norm(x)
        return self.out_norm(x.tanh())

    def reinit_first(self) -> None:
        """Re-initialise the projection and the first BN (Fast-DFKD, after warm-up)."""
        self.project.reset_parameters()
        self.body[0].reset_parameters()


@GENERATORS.register("dcgan")
def dcgan(nz=256, ngf=64, img_size=32, nc=3, output="sigmoid", conv_bias=False, bn_eps=1e-5):
    """CMI's Generator: projection width 2 x ngf."""
    return DCGANGenerator(nz, ngf, img_size, nc, mult=2, output=output, conv_bias=conv_bias, bn_eps=bn_eps)


@GENERATORS.register("dcgan_large")
def dcgan_large(nz=256, ngf=64, img_size=32, nc=3, output="sigmoid", conv_bias=False, bn_eps=1e-5):
    """CMI's LargeGenerator (ZSKT/DFAD/DFQ/DAFL in the CMI scripts): projection width 4 x ngf."""
    return DCGANGenerator(nz, ngf, img_size, nc, mult=4, output=output, conv_bias=conv_bias, bn_eps=bn_eps)


class TransposedGenerator(nn.Module):
    """DFAD's ``GeneratorB`` (network/gan.py; DFAD_nyu_deeplab.py and DFAD_camvid_deeplab.py): a linear
    projection of z to an (8 ngf x size/16 x size/16) map, a BatchNorm, four (4x4 transposed conv at stride 2,
    BN, LeakyReLU 0.2) stages (8 ngf -> 4 ngf -> 2 ngf -> ngf -> ngf) and a biased 3x3 conv to the image
    channels, then tanh. Weights drawn as the reference draws them: N(0, 0.02) for the convolutions and the
    projection (biases 0), N(1, 0.02) for the BN scales.

    The reference feeds its tanh output to the teacher as normalised images, with NYUv2 normalised at mean
    and std 0.5; here the output is the pixel ``(tanh + 1) / 2`` in [0, 1], which the synthesizer normalises
    with the dataset's mean and std: the same images on NYUv2, and pixels that reach the whole range on a
    dataset normalised otherwise (``output: tanh``)."""

    normalized_output = False

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 128, nc: int = 3, slope: float = 0.2):
        super().__init__()
        self.img_size = img_size
        self.init_size = max(1, img_size // 16)
        self.project = nn.Linear(nz, ngf * 8 * self.init_size**2)
        layers = [nn.BatchNorm2d(ngf * 8)]
        for cin, cout in ((8, 4), (4, 2), (2, 1), (1, 1)):
            layers += [
                nn.ConvTranspose2d(ngf * cin, ngf * cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * cout),
                nn.LeakyReLU(slope, inplace=True),
            ]
        layers.append(nn.Conv2d(ngf, nc, 3, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.constant_(m.bias, 0)

    def forward(self, z):
        x = self.project(z.flatten(1)).view(z.shape[0], -1, self.init_size, self.init_size)
        x = self.main(x)
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x.tanh().add(1.0).mul(0.5)


@GENERATORS.register("dcgan_b")
def dcgan_b(nz=256, ngf=64, img_size=128, nc=3, output="tanh", conv_bias=False, bn_eps=1e-5):
    """DFAD's GeneratorB (its segmentation scripts' generator): :class:`TransposedGenerator`. Its layout is the
    reference's: ``output`` must be ``tanh`` and ``conv_bias`` false (only its last convolution has a bias)."""
    if output != "tanh" or conv_bias:
        raise ValueError(
            f"generator dcgan_b has DFAD's fixed layout: synth.output=tanh and synth.conv_bias=false "
            f"(got output={output!r}, conv_bias={conv_bias!r})"
        )
    return TransposedGenerator(nz, ngf, img_size, nc)
