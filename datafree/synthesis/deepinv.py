"""DeepInversion / Adaptive DeepInversion (Yin et al., CVPR 2020).

Each round optimises a batch of pixels from Gaussian noise with Adam
(betas 0.5, 0.99) for ``iterations`` steps so that the teacher's BatchNorm
statistics on the batch match its running statistics (weight ``bn``), the
teacher predicts randomly drawn target labels (``oh``), the image priors hold
(total variation ``tv``, L2 ``l2``) and, for ADI, the student disagrees with
the teacher (minus the Jensen-Shannon divergence at temperature ``adv_T``,
weight ``adv``). Every step sees a randomly jittered view (roll by up to 1/8 of
the size), flipped half the time (``flip``: by default only where the dataset's
standard augmentation flips, so not for digits; the reference flips on every
dataset, deepinversion.py:11-23, :85, so ``synth.flip=true`` is its protocol on
MNIST); pixels are clipped to the valid range after each step. The last batch
(``keep_best: false``) or the lowest-loss one is added to the pool, from which
the student draws batches with the dataset's standard augmentation.

Defaults follow the CMI repository's DeepInversion script for CIFAR-10
(scripts/deepinv/deepinv_cifar10_wrn402_wrn161.sh: --g_steps 1000 iterations, bn 10, oh 1, adv 1, lr 0.1,
synthesis batch 256, KD at T=20; datafree_kd.py:252 passes tv 0.001, l2 0), with its competition term
(``adv_kind="js_clamped"``, criterions.py ``jsdiv``). The preset ``deepinv:paper`` runs the paper's 2000
iterations; ``synth.adv_kind=js`` gives the true Jensen-Shannon divergence.

The reference keeps ``best_inputs = inputs.data`` without a copy, so the
optimiser's in-place steps keep changing the "best" batch and the last iterate
is what it adds: the compared ``deepinv`` does the same (``keep_best: false``);
``deepinv:fixed`` keeps a copy of the lowest-loss batch (a test checks that a
kept batch does not change when synthesis continues).

A teacher without BatchNorm layers (LeNet-5) has no BN term; a warning says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch

from ..registry import SYNTHESIZERS
from . import losses
from .base import Synthesizer
from .common import PoolOptions, PoolSampling, TeacherTerms, random_targets, view_flips


def jitter_flip(x: torch.Tensor, lim: float, flip: bool, targets: Optional[torch.Tensor] = None):
    """Roll by a random offset of up to ``lim`` x size pixels, then flip half the time. With ``targets``, returns
    ``(view, targets)``: per-pixel targets (class maps, ``(N, H, W)``) take the same roll and flip, a class per
    image (``(N,)``) stays as it is."""
    per_pixel = targets is not None and targets.dim() == 3
    h, w = x.shape[-2:]
    lh, lw = int(h * lim), int(w * lim)
    off1, off2 = random.randint(-lh, lh), random.randint(-lw, lw)
    if off1 or off2:
        x = torch.roll(x, shifts=(off1, off2), dims=(2, 3))
        targets = torch.roll(targets, shifts=(off1, off2), dims=(1, 2)) if per_pixel else targets
    if flip and random.random() < 0.5:
        x = torch.flip(x, dims=(3,))
        targets = torch.flip(targets, dims=(2,)) if per_pixel else targets
    return x if targets is None else (x, targets)


@SYNTHESIZERS.register("deepinv")
class DeepInversion(PoolSampling, Synthesizer):
    @dataclass
    class Config(PoolOptions):
        iterations: int = 2000
        lr_g: float = 0.1
        betas: tuple = (0.5, 0.99)
        synthesis_batch_size: int = 256
        bn: float = 10.0
        oh: float = 1.0
        adv: float = 1.0
        adv_T: float = 3.0
        # the competition term: js_clamped, the reference code's form (losses.js_clamped), or js, the true JS
        adv_kind: str = "js_clamped"

        choices: ClassVar[Dict[str, tuple]] = {"adv_kind": ("js_clamped", "js")}

        tv: float = 1e-3
        l2: float = 0.0
        jitter: float = 0.125
        # null: flip when the dataset's standard augmentation flips (not for digits or MNIST); true/false force it
        flip: Optional[bool] = None
        keep_best: bool = True
        pool_size: int = 0  # 0: unbounded
        pool_dtype: str = "uint8"

    stateful = ("pool", "terms")
    synthesis_precision = "fp32"  # under amp=auto on CUDA, as the reference code (docs/precision.md)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        self.terms = TeacherTerms(self, self.cfg.bn)
        self.make_pool(self.cfg.pool_size, self.cfg.pool_dtype)
        self.flip = view_flips(ctx.spec, self.cfg.flip)

    def synthesize(self, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        c = self.cfg
        n = c.synthesis_batch_size
        shape = (n, *self.spec.shape)
        x = torch.randn(shape, device=self.device).requires_grad_(True)
        y = random_targets(n, self.spec, self.device) if targets is None else targets.to(self.device)
        opt = torch.optim.Adam([x], lr=c.lr_g, betas=tuple(c.betas))
        logs: Dict[str, torch.Tensor] = {}
        best_loss_t = torch.tensor(float("inf"), device=self.device)
        best = x.detach().clone()
        for _ in range(c.iterations):
            view, y_view = jitter_flip(x, c.jitter, self.flip, y)  # a class map moves with its view
            t, _, l_bn = self.terms(view)
            l_oh = losses.one_hot(t, y_view)
            loss = c.bn * l_bn + c.oh * l_oh
            if c.adv > 0:
                s = self.student_logits(view)
                l_adv = losses.adversarial(s, t, kind=c.adv_kind, T=c.adv_T)
                loss = loss + c.adv * l_adv
                logs["adv"] = l_adv.detach()
            if c.tv > 0:
                loss = loss + c.tv * losses.total_variation(x)
            if c.l2 > 0:
                loss = loss + c.l2 * losses.l2_prior(x)
            if c.keep_best:
                # a copy, taken before the in-place step below changes x (the reference kept a view)
                better = loss.detach() < best_loss_t
                best_loss_t = torch.where(better, loss.detach(), best_loss_t)
                best = torch.where(better, x.detach(), best)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.copy_(self.normalizer.clip(x))
        logs.update({"bn": l_bn.detach(), "oh": l_oh.detach(), "loss_g": loss.detach()})
        final = best if c.keep_best else x.detach()
        self.pool.add(self.normalizer.denormalize(final), y)
        self.images_synthesized += n
        return logs
