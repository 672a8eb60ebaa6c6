"""ZSKT: Zero-shot Knowledge Transfer via Adversarial Belief Matching
(Micaelli & Storkey, NeurIPS 2019).

Also holds :class:`AdversarialGenerator`, the part ZSKT shares with DFAD
(Fang et al. 2019, :mod:`datafree.synthesis.dfad`): a generator whose only
objective is to make the student disagree with the teacher, with the
generator's own learning-rate schedule and optional gradient clipping.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..registry import SYNTHESIZERS
from . import losses
from .common import GeneratorSynthesizer
from ..models import create_generator

G_SCHEDULES = ("constant", "cosine", "multistep")


def clip_before_step(params: Iterable[nn.Parameter], max_norm: float) -> Callable:
    """An optimiser step pre-hook clipping the gradients' total L2 norm to ``max_norm`` (no host sync).

    It runs inside ``optimizer.step()``, after a GradScaler has unscaled the gradients.
    """
    params = list(params)

    def hook(optimizer, args, kwargs) -> None:
        nn.utils.clip_grad_norm_(params, max_norm)

    return hook


class AdversarialGenerator(GeneratorSynthesizer):
    """A generator trained to maximise a student-teacher divergence (the base of ZSKT and DFAD).

    Adds to :class:`GeneratorSynthesizer`: ``conv_bias`` (both papers' generators
    have biased convolutions), a per-epoch learning-rate schedule for the
    generator (``g_schedule``: constant, cosine to zero over the run, or
    multistep at ``g_milestones`` -- epochs, or fractions of the run when < 1,
    read as ``optim.milestones`` -- times ``g_gamma``), and gradient-norm
    clipping of the generator (``clip_grad`` > 0). The schedule is a closed
    form of the epoch, so a resumed run sets the same rate.
    """

    @dataclass
    class Config(GeneratorSynthesizer.Config):
        conv_bias: bool = True
        g_schedule: str = "constant"
        g_milestones: List[float] = field(default_factory=list)
        g_gamma: float = 0.1
        clip_grad: float = 0.0

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c = self.cfg
        if c.g_schedule not in G_SCHEDULES:
            raise ValueError(f"g_schedule must be one of {G_SCHEDULES}, got {c.g_schedule!r}")
        if c.clip_grad > 0:
            self.optimizer.register_step_pre_hook(clip_before_step(self.generator.parameters(), c.clip_grad))

    def build_generator(self) -> nn.Module:
        c, spec = self.cfg, self.ctx.spec
        return create_generator(
            c.generator,
            nz=c.nz,
            ngf=c.ngf,
            img_size=spec.size,
            nc=spec.channels,
            output=c.output,
            conv_bias=c.conv_bias,
        )

    def lr_factor(self, epoch: int) -> float:
        c, epochs = self.cfg, max(1, self.ctx.epochs)
        if c.g_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        if c.g_schedule == "multistep":
            ms = [int(round(m * epochs)) if m < 1 else int(m) for m in c.g_milestones]
            return c.g_gamma ** sum(epoch >= m for m in ms)
        return 1.0

    def on_epoch_start(self, epoch: int) -> None:
        lr = self.cfg.lr_g * self.lr_factor(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr


@SYNTHESIZERS.register("zskt")
class ZSKT(AdversarialGenerator):
    """ZSKT (Micaelli & Storkey, NeurIPS 2019): an adversarial generator for zero-shot KD.

    What it optimises. A generator G maps z ~ N(0, I) to images; it
    *maximises* the forward KL divergence D_KL(T(x) || S(x)) between the
    teacher's and the student's softmax at temperature ``T`` on x = G(z), i.e.
    it minimises ``-KL`` (the ``adv`` log). The student then minimises the same
    KL plus beta times the attention-transfer term on the same kind of images;
    that objective is the ``kd_at`` distiller (:mod:`datafree.distill.zskt`).
    Per round: ``g_steps`` generator steps, then ``kd_steps`` student steps,
    either on fresh samples (``reuse_batch: false``) or all on the round's one
    pseudo batch (``reuse_batch: true``: the round's latent codes pushed through
    the updated generator once, the same tensor for every student step, as the
    authors' loader repeats its batch).

    Two protocols (``datafree/configs/methods/zskt.yaml``; docs/methods/zskt.md):

    * ``zskt``, the protocol behind the CMI table's ZSKT row (zju-vipa/CMI,
      ``scripts/zskt/zskt_cifar10_wrn402_wrn161.sh`` run by ``datafree_kd.py``):
      CMI's LargeGenerator (``dcgan_large``, nz 256, sigmoid output, no conv
      bias), Adam (0.5, 0.999), KL at T = 1 with a batch mean for the generator
      and the student (the script's ``--T 20`` never reaches either), no
      attention term, 5 student steps on fresh samples drawn with the generator
      in eval mode;
    * ``zskt:paper``, the authors' protocol (polo5/ZeroShotKnowledgeTransfer):
      the paper's generator (``dcgan``, ``output: bn``, biased convolutions),
      z dim 100, batch 128, Adam with cosine annealing, gradient norms clipped
      at 5, KL at T = 1 in ``F.kl_div``'s default reduction (mean over batch and
      classes: ``kl_reduction: mean``), AT beta 250, n_s = 10 student steps on
      one pseudo batch.

    The ``Config`` defaults below are the authors' values with the KL the
    paper writes (``kl_reduction: batchmean``, per-sample sum over classes);
    the method entries set every value they run.

    ``kl_reduction: mean`` divides the KL by the number of classes K, the scale
    of ``F.kl_div(..., reduction='mean')`` in the authors' code (with Adam, it
    changes mainly how often the norm clipping at 5 bites, and, for the student,
    the weight of the attention term against the KL).

    Deviations from the authors' code, on purpose (we know of none from the CMI protocol):

    * the learning-rate schedules are annealed per epoch instead of per pseudo
      batch (the same cosine, sampled at epoch boundaries);
    * the student is frozen (eval mode) while the generator's loss runs it; the
      authors' code leaves it in train mode, so its BN layers use the generator
      batch's statistics there and their running statistics move with it (the
      CMI code puts it in eval mode, as we do).
    """

    @dataclass
    class Config(AdversarialGenerator.Config):
        generator: str = "dcgan"
        nz: int = 100
        ngf: int = 64
        output: str = "bn"
        lr_g: float = 1e-3
        betas: Tuple[float, float] = (0.9, 0.999)
        synthesis_batch_size: int = 128
        g_steps: int = 1
        sample_mode: str = "train"
        g_schedule: str = "cosine"
        clip_grad: float = 5.0
        T: float = 1.0
        kl_reduction: str = "batchmean"  # "mean": F.kl_div's default in the authors' code, the KL / num_classes
        reuse_batch: bool = True

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        if self.cfg.kl_reduction not in ("batchmean", "mean"):
            raise ValueError(f"kl_reduction must be batchmean or mean, got {self.cfg.kl_reduction!r}")
        self._z: Optional[torch.Tensor] = None
        self._batch: Optional[torch.Tensor] = None
        self._warned = False

    def generator_loss(self, x, z) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        t, _, l_bn = self.terms(x)
        s = self.student_logits(x)
        l_adv = losses.adversarial(s, t, kind="kl", T=self.cfg.T)
        if self.cfg.kl_reduction == "mean":
            l_adv = l_adv / t.shape[1]
        logs = {"adv": l_adv}
        if self.cfg.bn > 0:
            logs["bn"] = l_bn
        return l_adv + self.cfg.bn * l_bn, logs

    def after_generator_step(self, x, z):
        self._z, self._batch = z.detach(), None

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        if not self.cfg.reuse_batch or self._z is None:
            return super().sample(n)
        if self._z.shape[0] < n:
            if not self._warned:
                warnings.warn(
                    f"zskt: the student batch ({n}) is larger than synthesis_batch_size "
                    f"({self._z.shape[0]}), so each student step draws fresh codes instead of "
                    "reusing the round's pseudo batch",
                    stacklevel=2,
                )
                self._warned = True
            return super().sample(n)
        if self._batch is None:  # the updated generator on the round's codes, made once per round
            self._batch = self._regenerate()
        return self._batch if self._batch.shape[0] == n else self._batch[:n]

    def _regenerate(self) -> torch.Tensor:
        self.generator.train(self.cfg.sample_mode == "train")
        x = self.generate(self._z)
        self.generator.train()
        return x
