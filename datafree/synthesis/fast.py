"""Fast-DFKD: Up to 100x Faster Data-free Knowledge Distillation (Fang et al., AAAI 2022).

A meta-generator is learned so that a few optimisation steps from it are enough
to synthesise a useful batch. Each synthesis round:

1. clones the meta-generator theta into a fast generator theta' and draws fresh
   latent codes z (and random target labels y);
2. optimises theta' and z together for ``g_steps`` Adam steps (lr ``lr_g`` for
   theta', ``lr_z`` for z, betas 0.5, 0.999) on

       L = bn * L_BN(x) + oh * CE(T(x), y) + adv * L_adv(x)

   where x is a randomly augmented view (the dataset's crop/flip) of theta'(z),
   L_BN matches the teacher's BatchNorm statistics against an exponential moving
   average target (momentum ``bn_momentum``: the batch statistics are mixed with
   the average of past rounds' statistics before comparison, and the average is
   updated after each round), and L_adv is minus the KL divergence between
   teacher and student, masked to samples on which the two agree (CMI's form).
   The adversarial term is off during the run's ``warmup`` epochs;
3. updates the meta-generator with a first-order meta-gradient: FOMAML (the sum
   of the fast generator's gradients over the inner steps, ``meta: fomaml``) or
   Reptile (theta - theta', ``meta: reptile``), applied by Adam with learning
   rate ``lr_g * g_steps`` and betas (0.5, 0.999); the fast generator is then
   discarded. ``meta: none`` optimises the generator itself with no clone (the
   reference's sequential ``fast`` ablation);
4. adds the batch with the lowest inner loss (un-augmented, in [0, 1]) to a
   device-resident pool; the student draws KD batches (T = 20) from all pooled
   images with the dataset's standard augmentation.

Once, ``reset_after`` epochs after the warm-up, the meta-generator's first
layer (the linear projection of z) and its first BatchNorm are re-drawn from
N(0, 0.02) with zero biases (the reference's ``reset_l0``).

Defaults: the reference repository's ``scripts/fast_cifar.sh`` and
``datafree_kd.py`` (Fast-10: g_steps 10, lr_z 0.01, lr_g 2e-3; bn 10,
bn_momentum 0.9, oh 0.4, adv 1.1 for the WRN pairs; synthesis batch 256;
warm-up 20 of 220 epochs; student SGD lr 0.2 with cosine floor 2e-4 stepped
after the warm-up; FOMAML). The presets ``fast1``, ``fast2``, ``fast5`` and
``fast10`` set g_steps and the learning rates.

Deviations from the reference code, each on purpose:

* the reference turns the adversarial term on one round before the warm-up
  ends (its round counter starts at 1 and compares ``>= warmup``) and resets
  the first layer on round ``120 + warmup`` (epoch index ``119 + warmup``); we
  align both to the warm-up boundary: the adversarial term is on from epoch
  index ``warmup`` (the first epoch the student trains) and the reset happens
  at the start of epoch index ``warmup + reset_after``;
* the reference's Reptile gradient is ``67 * (theta - theta')``; the factor is
  absorbed by Adam's normalisation (up to its epsilon), so we use
  ``theta - theta'``;
* the reference accepts a ``reset_bn`` flag that its meta synthesizer never
  reads; we do not offer it;
* the reset is recorded in the checkpoint, so a resumed run never re-initialises
  twice.

The meta-generator's BatchNorm running statistics are never updated (the clone's
are discarded with it), as in the reference; generators run in training mode, so
they are unused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..data.augment import standard_augment
from ..errors import ConfigError
from ..models import create_generator
from ..registry import SYNTHESIZERS
from . import losses
from .base import Synthesizer
from .common import PoolOptions, PoolSampling, TeacherTerms, random_targets

META_MODES = ("fomaml", "reptile", "none")


def first_layers(generator: nn.Module) -> Tuple[nn.Linear, nn.BatchNorm2d]:
    """The projection of z and the first BatchNorm: the reference's ``l1.0`` and ``conv_blocks.0``,
    which are ``project`` and ``body[0]`` of :class:`~datafree.models.generators.DCGANGenerator`."""
    project, body = getattr(generator, "project", None), getattr(generator, "body", None)
    first_bn = body[0] if isinstance(body, nn.Sequential) and len(body) else None
    if not isinstance(project, nn.Linear) or not isinstance(first_bn, nn.BatchNorm2d):
        raise TypeError(
            f"{type(generator).__name__} has no (project, body[0]) = (Linear, BatchNorm2d) to "
            "re-initialise: use a dcgan generator or set synth.reset_l0=false"
        )
    return project, first_bn


def reset_first_layers(generator: nn.Module, std: float = 0.02) -> None:
    """Re-draw the weights of :func:`first_layers` from N(0, std) and zero their biases (``reset_l0``)."""
    with torch.no_grad():
        for m in first_layers(generator):
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)


@SYNTHESIZERS.register("fast")
class FastDFKD(PoolSampling, Synthesizer):
    """Fast-DFKD (Fang et al., AAAI 2022): a meta-generator adapted for ``g_steps`` steps per batch.

    See the module docstring for the objective, the defaults and their source,
    and every deviation from the reference code.
    """

    @dataclass
    class Config(PoolOptions):
        generator: str = "dcgan"
        nz: int = 256
        ngf: int = 64
        output: str = "sigmoid"
        g_steps: int = 10  # inner steps per round (Fast-10)
        lr_g: float = 2e-3  # inner lr of the fast generator
        lr_z: float = 0.01  # inner lr of the latent codes
        betas: Tuple[float, float] = (0.5, 0.999)
        meta: str = "fomaml"  # fomaml | reptile | none (the reference's is_maml 1 / 0 / method fast)
        meta_lr: Optional[float] = None  # None: lr_g * g_steps (reference)
        synthesis_batch_size: int = 256
        bn: float = 10.0
        bn_momentum: float = 0.9
        oh: float = 0.4
        adv: float = 1.1
        augment: str = "auto"  # view seen by the losses: auto (the dataset's crop/flip) | crop_flip | crop | none
        keep_best: bool = True  # pool gets the inner step with the lowest loss (reference), else the last
        reset_l0: bool = True
        reset_after: int = 120  # epochs after the warm-up at which the first layer is re-initialised
        pool_size: int = 0  # 0: unbounded
        pool_dtype: str = "uint8"

    stateful = ("generator", "optimizer", "terms", "pool")
    synthesis_precision = "fp32"  # under amp=auto on CUDA, as the reference code (docs/precision.md)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c, spec = self.cfg, ctx.spec
        if c.meta not in META_MODES:
            raise ValueError(f"synth.meta must be one of {META_MODES}, got {c.meta!r}")
        if c.g_steps < 1:
            raise ValueError("synth.g_steps must be at least 1")
        self.generator = (
            create_generator(c.generator, nz=c.nz, ngf=c.ngf, img_size=spec.size, nc=spec.channels, output=c.output)
            .to(ctx.device)
            .train()
        )
        if c.reset_l0:
            first_layers(self.generator)  # fail now, not 120 epochs in
        #: the meta-optimiser (named ``optimizer`` like every generator method's, for checkpoints)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.meta_lr, betas=tuple(c.betas))
        self.terms = TeacherTerms(self, c.bn, momentum=c.bn_momentum)
        self.make_pool(c.pool_size, c.pool_dtype)
        if spec.task == "segmentation":  # per-pixel targets: the view must not move the image under them
            if c.augment not in ("auto", "none"):
                raise ConfigError(
                    f"synth.augment={c.augment} crops or flips the images but not their per-pixel targets: "
                    "a segmentation run of Fast-DFKD takes synth.augment=none (or auto, which is none there)"
                )
            kind = "none"
        else:
            kind = spec.augment if c.augment == "auto" else c.augment
        self.view = standard_augment(kind, spec.size)
        self.reset_done = False

    @property
    def meta_lr(self) -> float:
        c = self.cfg
        return c.meta_lr if c.meta_lr is not None else c.lr_g * c.g_steps

    @property
    def adversarial_on(self) -> bool:
        return self.cfg.adv > 0 and self.ctx.epoch >= self.ctx.cfg.warmup

    # -- schedule ----------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        c = self.cfg
        if c.reset_l0 and not self.reset_done and c.reset_after >= 0 and epoch >= self.ctx.cfg.warmup + c.reset_after:
            reset_first_layers(self.generator)
            self.reset_done = True

    # -- one round ---------------------------------------------------------
    def images(self, generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """[0, 1] images from ``generator`` (with gradient)."""
        with self.ctx.amp.autocast():
            x = generator(z)
        x = x.float()
        if getattr(generator, "normalized_output", False):
            x = self.normalizer.denormalize(x)
        return x

    def inner_loss(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.cfg
        view = self.normalizer(self.view(x))
        t, _, l_bn = self.terms(view)
        l_oh = losses.one_hot(t, y)
        if self.adversarial_on:
            l_adv = losses.adversarial(self.student_logits(view), t, kind="kl", masked=True)
        else:
            l_adv = t.new_zeros(())
        loss = c.bn * l_bn + c.oh * l_oh + c.adv * l_adv
        return loss, {"bn": l_bn, "oh": l_oh, "adv": l_adv}

    def clone(self) -> nn.Module:
        """The fast generator of a round (the meta-generator itself with ``meta: none``)."""
        return self.generator if self.cfg.meta == "none" else copy.deepcopy(self.generator)

    def synthesize(self) -> Dict[str, torch.Tensor]:
        c = self.cfg
        n = c.synthesis_batch_size
        self.generator.train()
        fast = self.clone()
        z = torch.randn(n, c.nz, device=self.device, requires_grad=True)
        y = random_targets(n, self.spec, self.device, sort=False)
        inner = torch.optim.Adam(
            [{"params": list(fast.parameters())}, {"params": [z], "lr": c.lr_z}], lr=c.lr_g, betas=tuple(c.betas)
        )
        fomaml = c.meta == "fomaml"
        meta_grads = [torch.zeros_like(p) for p in self.generator.parameters()] if fomaml else None
        best = best_loss = None
        for _ in range(c.g_steps):
            x = self.images(fast, z)
            loss, logs = self.inner_loss(x, y)
            if not c.keep_best or best is None:
                best, best_loss = x.detach(), loss.detach()
            else:
                better = loss.detach() < best_loss
                best = torch.where(better, x.detach(), best)
                best_loss = torch.where(better, loss.detach(), best_loss)
            inner.zero_grad(set_to_none=True)
            loss.backward()
            if fomaml:
                for g, p in zip(meta_grads, fast.parameters()):
                    if p.grad is not None:
                        g.add_(p.grad)
            inner.step()
        if self.terms.bn is not None and c.bn_momentum > 0:
            self.terms.bn.update_momentum()
        self.meta_update(fast, meta_grads)
        self.pool.add(best, y)
        self.images_synthesized += n
        logs = {k: v.detach() for k, v in logs.items()}
        logs["loss_g"] = loss.detach()
        return logs

    def meta_update(self, fast: nn.Module, meta_grads=None) -> None:
        """theta <- Adam step on the FOMAML gradient (summed inner gradients) or Reptile's theta - theta'."""
        if self.cfg.meta == "none":
            return
        for i, (p, q) in enumerate(zip(self.generator.parameters(), fast.parameters())):
            p.grad = meta_grads[i] if meta_grads is not None else (p.detach() - q.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- resumability ------------------------------------------------------
    def extra_state(self) -> Dict:
        return {"reset_done": self.reset_done}

    def load_extra_state(self, state: Dict) -> None:
        self.reset_done = bool(state.get("reset_done", False))
