"""CuDFKD: data-free KD by an easy-to-hard curriculum (Li et al., Information Sciences 2023).

J. Li, S. Zhou, L. Li, H. Wang, J. Bu, Z. Yu, "Dynamic Data-Free Knowledge
Distillation by Easy-to-Hard Learning Strategy", Information Sciences 2023
(arXiv 2208.13648, first titled "How to Teach: Learning Data-Free Knowledge
Distillation from Curriculum"). Reference code: github.com/ljrprocc/DataFree
(``datafree/synthesis/cudfkd.py``, ``datafree_kd.py``, ``scripts/cudfkd/``).

This module is the data side; the student side (self-paced KD with one weight
per sample) is the ``self_paced`` distiller in :mod:`datafree.distill.cudfkd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..registry import SYNTHESIZERS
from . import losses
from .common import GeneratorSynthesizer


def ramp_epochs(epochs: int, begin_fraction: float, end_fraction: float) -> int:
    """How many per-epoch increments the reference's ramp makes over a run of ``epochs``."""
    return max(int(epochs * end_fraction) - int(epochs * begin_fraction) - 1, 0)


def curriculum_adv_weight(
    epoch: int, epochs: int, start: float, grad: float, begin_fraction: float, end_fraction: float
) -> float:
    """The adversarial weight used during ``epoch`` (0-based) of ``epochs``.

    The reference adds ``grad`` to the weight at the end of every epoch e with
    ``floor(E * begin) < e < floor(E * end)``, so during epoch e the weight is
    ``start + grad * clamp(e - s - 1, 0, f - s - 1)`` with s = floor(E * begin),
    f = floor(E * end): ``start`` up to the ramp, then linear in the epoch, then
    constant at ``start + grad * (f - s - 1)``.
    """
    s = int(epochs * begin_fraction)
    n = min(max(epoch - s - 1, 0), ramp_epochs(epochs, begin_fraction, end_fraction))
    return start + grad * n


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): weights N(0, 0.02), BN scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.ConvTranspose2d, nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@SYNTHESIZERS.register("cudfkd")
class CuDFKD(GeneratorSynthesizer):
    """CuDFKD's generator: easy samples first, harder ones as training goes on.

    One DCGAN generator maps Gaussian codes z (nz 512) to images. Each round
    takes ``g_steps`` Adam steps (betas 0.9, 0.99, lr 1e-3) on

        L_G = ent_w * H(mean_i softmax(t_i / T)) + adv_w(epoch) * ( -mean_i m_i KL_3(t_i || s_i) )
              + oh * CE(t, argmax t) + bn * L_BN

    with t/s the teacher's/student's logits on G(z), H the entropy of the
    batch-mean teacher softmax at temperature ``T`` (the reference uses its
    KD temperature; our MNIST setting uses 1, see the YAML) (``ent_w`` = -20 makes
    minimising L_G maximise it: balanced classes), KL_3 the divergence at
    temperature ``adv_T`` = 3 times 9, m_i = 1 where student and teacher agree
    on the class (the masked adversarial term of CMI), and L_BN the
    DeepInversion BN-statistics term. The student sees fresh samples of the
    generator in eval mode (running BN statistics); there is no memory.

    Curriculum on the data side: the adversarial weight starts at ``adv``
    (0 in the reference's scripts, so early samples are easy: the student is
    not attacked) and grows by ``grad_adv`` per epoch during the middle
    fraction [``begin_fraction``, ``end_fraction``] of the run (0.25-0.75 on
    CIFAR-10), then stays at its final value: samples get harder as the
    student gets better. See :func:`curriculum_adv_weight` for the exact
    per-epoch form, which is the reference's. The weight is computed from the
    engine's epoch counter, so a resumed run continues the same schedule.
    ``adv_final`` (ours, off by default) sets the weight the ramp ends at
    instead of ``grad_adv``: the increment becomes (adv_final - adv) / (number
    of ramp epochs), so a shorter run keeps the published trajectory (the
    CIFAR-10 script ends at 0 + 0.5 x 124 = 62).

    Defaults are the reference's CIFAR-10 resnet34->resnet18 script
    (``scripts/cudfkd/cudfkd_cifar10_resnet34_resnet18.sh``): DCGAN generator
    with a 4 x ngf projection, ngf 64, sigmoid output (``dcgan_large``: the
    reference's ``DCGAN_Generator_CIFAR10`` at depth 2 has the same layers),
    DCGAN initialisation, batch 512, 1 generator step per 10 student steps,
    ent_w -20, oh 1, bn 1, T 20, adv 0 + 0.5 per epoch over epochs 25-75 %.

    Deviations from the reference code, on purpose:

    * the reference's ``memory`` pool is filled but never read by CuDFKD's
      training loop (``history`` is false for it), and its unused activation
      term (weight 0 in every script) is left out;
    * nothing else: the loss terms are the shared ones, with the reference's
      temperatures and reductions.
    """

    @dataclass
    class Config(GeneratorSynthesizer.Config):
        generator: str = "dcgan_large"
        nz: int = 512
        ngf: int = 64
        output: str = "sigmoid"
        lr_g: float = 1e-3
        betas: Tuple[float, float] = (0.9, 0.99)
        g_steps: int = 1
        synthesis_batch_size: int = 512
        sample_mode: str = "eval"
        bn: float = 1.0
        oh: float = 1.0
        ent_w: float = -20.0  # weight of the class entropy H(mean softmax(t/T)); negative maximises it
        T: float = 20.0  # temperature of the entropy term (the reference passes its KD temperature)
        adv: float = 0.0  # adversarial weight before the ramp
        grad_adv: float = 0.5  # added to the adversarial weight after each epoch inside the ramp
        adv_final: Optional[float] = None  # if set: the ramp's final weight, and grad_adv is derived from it
        begin_fraction: float = 0.25
        end_fraction: float = 0.75
        adv_T: float = 3.0
        dcgan_init: bool = True

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c = self.cfg
        if not 0.0 <= c.begin_fraction <= c.end_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= begin_fraction <= end_fraction <= 1, got {c.begin_fraction} and {c.end_fraction}"
            )

    def build_generator(self) -> nn.Module:
        g = super().build_generator()
        if self.cfg.dcgan_init:
            dcgan_init(g)
        return g

    @property
    def adv_weight(self) -> float:
        """The adversarial weight of the current epoch (the data-side curriculum)."""
        c = self.cfg
        return curriculum_adv_weight(
            self.ctx.epoch, self.ctx.epochs, c.adv, self.adv_increment, c.begin_fraction, c.end_fraction
        )

    @property
    def adv_increment(self) -> float:
        """The per-epoch increment: ``grad_adv``, or the one that ends the ramp at ``adv_final``."""
        c = self.cfg
        if c.adv_final is None:
            return c.grad_adv
        n = ramp_epochs(self.ctx.epochs, c.begin_fraction, c.end_fraction)
        return (c.adv_final - c.adv) / n if n > 0 else 0.0

    def generator_loss(self, x, z) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.cfg
        t, _, l_bn = self.terms(x)
        l_ent = losses.class_entropy(t, T=c.T)
        l_oh = losses.one_hot(t)
        adv_w = self.adv_weight
        if adv_w != 0:
            l_adv = losses.adversarial(self.student_logits(x), t, kind="kl", T=c.adv_T, masked=True)
        else:  # as the reference: no student pass while the weight is zero
            l_adv = t.new_zeros(())
        loss = c.ent_w * l_ent + adv_w * l_adv + c.oh * l_oh + c.bn * l_bn
        return loss, {"ent": l_ent, "oh": l_oh, "adv": l_adv, "bn": l_bn, "adv_w": torch.tensor(adv_w)}
