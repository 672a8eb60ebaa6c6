"""DFAD: Data-Free Adversarial Distillation (Fang et al., arXiv 1912.11006, 2019)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..registry import SYNTHESIZERS
from . import losses
from .zskt import AdversarialGenerator


@SYNTHESIZERS.register("dfad")
class DFAD(AdversarialGenerator):
    """DFAD (Fang, Song, Shen, Wang, Chen & Song, 2019): a min-max game on the logits' L1 distance.

    What it optimises. A generator G maps z ~ N(0, I) to images and
    *maximises* the mean absolute difference between the teacher's and the
    student's logits on them (it minimises ``-L1``, the ``adv`` log); the
    student minimises that same L1 (the ``l1`` distiller,
    :mod:`datafree.distill.dfad`). Every student step and every generator
    step draws fresh codes, with the generator's BatchNorm in train mode.

    Order. The reference's iteration is 5 student steps, then 1 generator
    step; the engine's round is ``synthesize()`` then ``kd_steps`` student
    steps. With ``student_first`` (default) the first round skips its
    generator step, so the sequence of updates is exactly the reference's
    (S x5, G, S x5, G, ...; only the reference's last generator step, which no
    student step follows, is not taken).

    Defaults (``DFAD_cifar.py`` with ``--scheduler`` as its README runs it):
    the reference's ``GeneratorA`` (linear to 128 x (size/4)^2, two
    upsample-conv-BN-LeakyReLU stages, a conv to the image channels, tanh and
    an affine-free BatchNorm: ``dcgan``, ngf 64, ``output: tanh_bn``, biased
    convolutions), nz 256, batch 256, Adam lr 1e-3 (default betas) decayed
    x0.1 at epochs 100 and 200 of 500 (each epoch 50 iterations = 250 student
    steps). Student: SGD lr 0.1, momentum 0.9, weight decay 5e-4, same
    milestones (in the YAML entry). ``DFAD_mnist.py``: nz 100, batch 512,
    student SGD lr 0.01, weight decay 1e-4, 40 epochs, no schedule.

    The student runs in train mode while the generator's loss uses it, as in the
    reference (DFAD_cifar.py:19 sets ``student.train()`` for the whole iteration):
    its BN layers use the generator batch's statistics and their running
    statistics move with it; its weights get no gradient from that loss.
    ``student_mode: eval`` freezes it in eval mode instead.

    Deviations, on purpose:

    * BN statistics, one-hot and other priors are off (``bn`` 0), as in the
      paper; ``bn`` > 0 adds the DeepInversion term (a DFQ-like variant).
    """

    @dataclass
    class Config(AdversarialGenerator.Config):
        generator: str = "dcgan"
        nz: int = 256
        ngf: int = 64
        output: str = "tanh_bn"
        lr_g: float = 1e-3
        betas: Tuple[float, float] = (0.9, 0.999)
        synthesis_batch_size: int = 256
        g_steps: int = 1
        sample_mode: str = "train"
        g_schedule: str = "multistep"
        g_milestones: List[float] = field(default_factory=lambda: [100, 200])
        g_gamma: float = 0.1
        student_first: bool = True
        student_mode: str = "train"  # the student in the generator loss: "train" (the reference) or "eval"
        #: the generator's loss on the L1 distance d: None or "neg" (-d, DFAD_cifar.py / DFAD_mnist.py) or
        #: "neg_log1p" (-log(d + 1), DFAD_nyu_deeplab.py:45 and DFAD_camvid_deeplab.py, the segmentation scripts).
        #: None, not "neg", by default: a key whose value is None stays out of a run's identity, so the records
        #: made before it existed remain the runs they were (datafree/identity.py)
        adv_form: Optional[str] = None

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        if self.cfg.adv_form not in (None, "neg", "neg_log1p"):
            raise ValueError(f"synth.adv_form must be 'neg' or 'neg_log1p', got {self.cfg.adv_form!r}")

    def generator_loss(self, x, z) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        t, _, l_bn = self.terms(x)
        s = self.student_logits(x)
        l_adv = losses.adversarial(s, t, kind="l1")
        if self.cfg.adv_form == "neg_log1p":
            l_adv = -torch.log1p(-l_adv)
        logs = {"adv": l_adv}
        if self.cfg.bn > 0:
            logs["bn"] = l_bn
        return l_adv + self.cfg.bn * l_bn, logs

    def synthesize(self) -> Dict[str, torch.Tensor]:
        if self.cfg.student_first and self.ctx.round == 0:
            return {}
        return super().synthesize()
