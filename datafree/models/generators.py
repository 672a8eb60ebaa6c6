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
