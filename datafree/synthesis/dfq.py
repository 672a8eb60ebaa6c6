"""DFQ: Data-Free Network Quantization With Adversarial Knowledge Distillation
(Choi, Choi, El-Khamy and Lee, CVPR Workshops 2020).

A generator is trained against the student: it maximises the student-teacher
divergence on its images (the adversarial term) while auxiliary terms keep
the images close to the teacher's training data: the BatchNorm statistics of
the teacher on the batch match its running statistics, the teacher is
confident on every image, and its batch-mean prediction covers the classes
evenly. The student minimises KD on fresh generator samples, ``kd_steps``
student steps per generator step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from ..registry import SYNTHESIZERS
from . import losses
from .common import GeneratorSynthesizer


@SYNTHESIZERS.register("dfq")
class DFQ(GeneratorSynthesizer):
    """DFQ (Choi et al., CVPRW 2020) as reproduced for the CMI tables.

    Generator loss, minimised over the generator for each batch x = G(z):

        L_G = adv * ( -KL(T(x) || S(x); T=adv_T) )          adversarial, every sample
            + bn  * sum_l ||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2   BN statistics
            + oh  * CE(T(x), argmax T(x))                     one-hot (confidence)
            + balance * sum_k p_k log p_k                      class balance, p = mean softmax
            + act * ( -mean |f_T(x)| )                         activation (0: off, as in DFQ)

    The student (frozen inside this loss: gradients reach only the images)
    is trained by the ``kd`` distiller on fresh samples of the generator in
    eval mode (``sample_mode: eval``, as CMI's ``GenerativeSynthesizer``).

    Defaults: the CMI repository's DFQ scripts (``scripts/dfq/dfq_cifar10_wrn402_wrn161.sh``):
    CMI's ``LargeGenerator`` (``dcgan_large``, nz 256, ngf 64, sigmoid output),
    Adam lr 1e-3 betas (0.5, 0.999), synthesis batch 256 (= the student batch),
    1 generator step per 10 student steps, adv 1, bn 1, oh 1, balance 20,
    act 0; the adversarial divergence is CMI's ``KLDiv()`` at T = 1, unmasked
    (the masked form is CMI's own method, not DFQ); student KD at T = 1.

    Deviations and reference-code traps:

    * the CMI code builds ``criterion = KLDiv()`` (T = 1) for the DFQ run and
      uses it for the student too (``datafree_kd.py:259``, ``:341``, ``:384``),
      so its ``--T 20`` flag never reached the student. The CMI table's DFQ
      numbers come from T = 1, and ``dfq`` runs T = 1 (``distill.T: 1``); the
      preset ``dfq:fixed`` trains the student at the script's ``--T`` (20 on
      CIFAR-10, 1 on CIFAR-100);
    * the paper's own auxiliary loss is, as we read it (not re-checked against
      the PDF), a KL divergence between Gaussians for the BN statistics, the
      mean per-sample entropy of the teacher's softmax instead of the one-hot
      CE, and minus the entropy of the batch-mean softmax; it also ensembles
      several generators and students. We follow the CMI reproduction (L2 BN
      distances, one-hot CE, one generator and one student), whose numbers
      are the ones the benchmark tables compare with;
    * a teacher without BatchNorm layers (LeNet-5) has no BN term: the run
      warns and the term is zero.
    """

    synthesis_precision = "fp32"  # under amp=auto on CUDA, as the reference code (docs/precision.md)

    @dataclass
    class Config(GeneratorSynthesizer.Config):
        generator: str = "dcgan_large"
        sample_mode: str = "eval"
        adv: float = 1.0
        adv_div: str = "kl"  # kl | js | l1
        adv_T: float = 1.0
        adv_masked: bool = False
        bn: float = 1.0
        oh: float = 1.0
        balance: float = 20.0
        act: float = 0.0

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        if self.cfg.adv_div not in losses.DIVERGENCES:
            raise ValueError(f"adv_div must be one of {sorted(losses.DIVERGENCES)}, got {self.cfg.adv_div!r}")

    def generator_loss(self, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.cfg
        t, feats, l_bn = self.terms(x, features=c.act > 0)
        l_oh = losses.one_hot(t)
        l_bal = losses.class_balance(t)
        loss = c.bn * l_bn + c.oh * l_oh + c.balance * l_bal
        logs = {"bn": l_bn, "oh": l_oh, "balance": l_bal}
        if c.adv > 0:
            s = self.student_logits(x)
            l_adv = losses.adversarial(s, t, kind=c.adv_div, T=c.adv_T, masked=c.adv_masked)
            loss = loss + c.adv * l_adv
            logs["adv"] = l_adv
        if c.act > 0:
            l_act = losses.activation(feats)
            loss = loss + c.act * l_act
            logs["act"] = l_act
        return loss, logs
