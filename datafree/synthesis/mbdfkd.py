"""MB-DFKD: Preventing Catastrophic Forgetting and Distribution Mismatch in
Knowledge Distillation via Synthetic Data (Binici, Pham, Mitra and Leman, WACV 2022).

Also home of :class:`AdversarialReplaySynthesizer`, the generator that MB-DFKD
and PRE-DFKD (``predfkd.py``) share: DAFL's distribution-matching terms plus an
adversarial student-teacher term (by default the released code's clamped form),
with student batches that mix fresh ("novel") samples and replayed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import torch
from torch import nn

from ..models import create_generator
from ..registry import SYNTHESIZERS
from . import losses
from .common import GeneratorSynthesizer
from .pool import DataPool


def uniform_init_(module: nn.Module, bound: float) -> None:
    """Weights of every Conv2d / Linear ~ U(-bound, bound), biases 0 (the Binici et al. code's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def spectral_norm_convs_(module: nn.Module) -> None:
    """Spectral normalisation on every Conv2d of ``module`` (the novel generator of Binici et al.)."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d):
            nn.utils.parametrizations.spectral_norm(m)


class AdversarialReplaySynthesizer(GeneratorSynthesizer):
    """The novel-sample generator of Binici et al. (MB-DFKD, PRE-DFKD) and the replay mix.

    Generator loss on a batch x = G(z), minimised:

        L_G = oh * CE(T(x), argmax T(x)) + ie * sum_k p_k log_b p_k + act * ( -mean |f_T(x)| ) + adv * L_adv

    (DAFL's three terms keep the images close to the teacher's data; the
    adversarial term, against the student, seeks samples the student has not
    learnt yet). By default every part is the released code's
    (kuluhan/PRE-DFKD distillation.py:45-70, utils/aux.py:70-85,
    networks/generator.py:5-50):

    * ``adv_kind="released"``: L_adv = 1 - clamp(D, 0, 1) with D the clamped
      0.5 KL(M||P) + 0.5 KL(M||Q) averaged over batch x classes
      (:func:`~datafree.synthesis.losses.adversarial_elementmean`, T = 3);
      any divergence of :data:`~datafree.synthesis.losses.DIVERGENCES` gives
      L_adv = -mean_i D(S(x_i), T(x_i)) instead (``js``: the true
      Jensen-Shannon divergence, the ``:fixed`` presets);
    * ``ie_log="10"``: the class-balance term in base 10 (``torch.log10``);
    * ``bn_eps=0.8``: the generator's ``BatchNorm2d(C, 0.8)`` (eps 0.8 on its
      two inner BNs; momentum was probably meant);
    * ``student_mode="train"``: the student runs in train mode in the
      generator loss, as in the released loop (batch statistics, and its BN
      running statistics move); its parameters get no gradient.
      ``"eval"`` freezes it, as the rest of this toolkit does.

    The teacher's logits are a fixed target in the adversarial term (no
    gradient through the teacher's side), as in the released code. A
    BN-statistics term (``bn``, default 0) is not part of either method and
    is off unless asked for.

    :meth:`sample` returns ``n`` fresh generator samples followed by
    ``int(n * replay_ratio)`` replayed ones from :meth:`replay` once the
    subclass has something to replay (the released code: 1024 novel + 128
    replayed). No augmentation, as in the released code.
    """

    @dataclass
    class Config(GeneratorSynthesizer.Config):
        generator: str = "dcgan"  # DAFL's generator: 2 x ngf = 128 wide projection
        nz: int = 1000
        ngf: int = 64
        output: str = "tanh_bn"
        conv_bias: bool = True
        bn_eps: float = 0.8  # the released BatchNorm2d(C, 0.8) (networks/generator.py:17,22); 1e-5: PyTorch's
        spectral_norm: bool = True
        init_range: float = 0.08  # U(-0.08, 0.08) weights as in the released code; 0: PyTorch's init
        lr_g: float = 0.02
        betas: Tuple[float, float] = (0.9, 0.999)
        g_steps: int = 1
        synthesis_batch_size: int = 1024
        sample_mode: str = "train"
        oh: float = 1.0
        ie: float = 5.0
        act: float = 0.1
        adv: float = 1.0
        adv_T: float = 3.0
        # "released": the released code's 1 - clamp(KLDivLoss-mean form) (losses.adversarial_elementmean);
        # a key of losses.DIVERGENCES ("js": the true Jensen-Shannon divergence) for -mean_i D_i
        adv_kind: str = "released"
        ie_log: str = "10"  # the class-balance logarithm: "10" (the released torch.log10) or "e" (natural)
        student_mode: str = "train"  # the student in the generator loss: "train" (released) or "eval" (frozen)
        replay_ratio: float = 0.125  # replayed samples per novel sample in a student batch

        choices: ClassVar[Dict[str, tuple]] = {"adv_kind": ("released", *sorted(losses.DIVERGENCES))}

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        if self.cfg.replay_ratio < 0:
            raise ValueError("replay_ratio must be >= 0")
        #: (novel, replayed) counts of the last batch sample() returned
        self.last_mix: Tuple[int, int] = (0, 0)

    def build_generator(self) -> nn.Module:
        g = self.build_decoder()
        if self.cfg.spectral_norm:
            spectral_norm_convs_(g)
        return g

    def build_decoder(self) -> nn.Module:
        """The generator architecture without spectral normalisation (PRE-DFKD's VAE decoder too)."""
        c, spec = self.cfg, self.ctx.spec
        g = create_generator(
            c.generator,
            nz=c.nz,
            ngf=c.ngf,
            img_size=spec.size,
            nc=spec.channels,
            output=c.output,
            conv_bias=c.conv_bias,
            bn_eps=c.bn_eps,
        )
        if c.init_range > 0:
            uniform_init_(g, c.init_range)
        return g

    def decode(self, module: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Normalised images from ``module(z)`` (generator-like modules only)."""
        with self.ctx.amp.autocast():
            x = module(z)
        x = x.float()
        return x if getattr(module, "normalized_output", False) else self.normalizer(x)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(self.generator, z)

    def generator_loss(self, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.cfg
        t, feats, l_bn = self.terms(x, features=c.act > 0)
        l_oh = losses.one_hot(t)
        l_ie = losses.class_balance(t, log=c.ie_log)
        loss = c.oh * l_oh + c.ie * l_ie
        logs = {"oh": l_oh, "ie": l_ie}
        if c.bn > 0:  # not part of the method (default 0); available for BN teachers
            loss = loss + c.bn * l_bn
            logs["bn"] = l_bn
        if c.act > 0:
            l_act = losses.activation(feats)
            loss = loss + c.act * l_act
            logs["act"] = l_act
        if c.adv > 0:
            s = self.student_logits(x)
            if c.adv_kind == "released":
                l_adv = losses.adversarial_elementmean(s, t.detach(), T=c.adv_T)
            else:
                l_adv = losses.adversarial(s, t.detach(), kind=c.adv_kind, T=c.adv_T)
            loss = loss + c.adv * l_adv
            logs["adv"] = l_adv
        return loss, logs

    # -- the replay mix
    def replay_count(self, n: int) -> int:
        return int(n * self.cfg.replay_ratio)

    def can_replay(self) -> bool:
        raise NotImplementedError

    def replay(self, m: int) -> torch.Tensor:
        """``m`` normalised replayed images on the device."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        novel = super().sample(n)
        m = self.replay_count(n)
        if m <= 0 or not self.can_replay():
            self.last_mix = (n, 0)
            return novel
        self.last_mix = (n, m)
        return torch.cat([novel, self.replay(m)], dim=0)

    @torch.no_grad()
    def preview(self, n: int) -> torch.Tensor:
        """``n`` images: novel ones, then the replayed ones of the same student batch."""
        x = self.sample(n)
        m = min(self.last_mix[1], n // 2)
        return torch.cat([x[: n - m], x[x.shape[0] - m :]], dim=0) if m else x[:n]


@SYNTHESIZERS.register("mbdfkd")
class MBDFKD(AdversarialReplaySynthesizer):
    """MB-DFKD (Binici et al., WACV 2022): adversarial generator plus a memory buffer of past samples.

    The generator is :class:`AdversarialReplaySynthesizer`'s (DAFL terms plus
    the adversarial term). Every ``push_every`` epochs a batch of
    ``int(batch_size * replay_ratio)`` generator samples enters a ring buffer
    (a :class:`~datafree.synthesis.pool.DataPool`) that keeps the latest
    ``memory_capacity`` such batches; the oldest batch leaves when a new one
    arrives. Each student batch is ``batch_size`` fresh samples plus
    ``int(batch_size * replay_ratio)`` samples drawn from the buffer, and the
    student minimises the L1 distance between its logits and the teacher's
    (the ``l1`` distiller) on the whole batch.

    Defaults and their source: the authors released no MB-DFKD code (their
    public repositories hold PRE-DFKD's only). The memory settings follow the
    MB-DFKD configuration of Patel et al.'s LRA code (CVPR 2023,
    gaurav104/LRA ``src/configs/MB-DFKD.json``, ``src/agents/predfkd_memory.py``),
    which re-implements MB-DFKD on Binici et al.'s PRE-DFKD code: memory of 10
    batches of batch_size / 8 images, a push after every 5th epoch (after
    epochs 0, 5, 10, ...), one replayed batch of batch_size / 8 per student
    step. The generator, its loss and the student settings are those of
    PRE-DFKD's released code, which LRA's MB-DFKD agent keeps unchanged
    (the same ``JS_divergence``, log10 class balance, BN eps 0.8, student in
    train mode): CIFAR-100 resnet34 -> resnet18, batch 1024, nz 1000,
    generator Adam lr 0.02, oh 1, ie 5, act 0.1, adv 1 (the released
    adversarial term at T = 3), 400 epochs x 36 rounds x 10 student steps,
    SGD 0.1, wd 5e-4, cosine. ``mbdfkd:fixed`` swaps in the true JS, the
    natural log, eps 1e-5 and a frozen student (docs/methods/mbdfkd.md).

    Assumptions and deviations:

    * the pushed batch is a fresh generator batch drawn at the start of the
      next epoch (the generator has not changed since the epoch's last
      round), not the first images of the epoch's last student batch: the
      same distribution, and it makes the buffer depend only on checkpointed
      state, so a resumed run pushes exactly what an uninterrupted one does;
    * replayed images are drawn uniformly from the whole buffer (the
      re-implementation replays one randomly chosen stored batch per step);
    * the buffer is part of the checkpoint (the re-implementation re-creates
      an empty memory when it resumes);
    * the buffer stores float32 images (as the code's CPU tensors):
      generators whose output is already normalised (DAFL's tanh + BN) are
      stored as sigmoid(x) and mapped back with the logit, so replayed images
      are the images the student saw, not pixels clipped to [0, 1]
      (``memory_dtype: uint8`` or ``float16`` trade precision for memory);
    * the pool's label slot holds the epoch each image was stored after
      (for analysis and tests; the student never sees it).
    """

    @dataclass
    class Config(AdversarialReplaySynthesizer.Config):
        memory_capacity: int = 10  # stored batches (a batch is int(batch_size * replay_ratio) images)
        push_every: int = 5  # epochs between pushes
        memory_dtype: str = "float32"

    stateful = AdversarialReplaySynthesizer.stateful + ("memory",)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c = self.cfg
        if c.memory_capacity <= 0 or c.push_every <= 0:
            raise ValueError("memory_capacity and push_every must be positive")
        self.push_size = max(1, self.replay_count(ctx.cfg.batch_size))
        self.memory = DataPool(capacity=c.memory_capacity * self.push_size, dtype=c.memory_dtype, device=ctx.device)
        #: epoch tags of the replayed images in the last student batch (device tensor)
        self.last_replay_tags: Optional[torch.Tensor] = None

    # images in the pool are in [0, 1]
    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.generator, "normalized_output", False):
            return torch.sigmoid(x)
        return self.normalizer.denormalize(x)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        if getattr(self.generator, "normalized_output", False):
            return torch.logit(u, eps=1e-6)
        return self.normalizer(u)

    @torch.no_grad()
    def push(self, tag: int) -> None:
        """Store ``push_size`` fresh generator samples, tagged ``tag``."""
        n = max(self.ctx.cfg.batch_size, self.push_size)
        self.generator.train(self.cfg.sample_mode == "train")
        x = self.generate(self.latent(n))[: self.push_size]
        self.generator.train()
        tags = torch.full((x.shape[0],), tag, dtype=torch.long, device=self.device)
        self.memory.add(self.to_unit(x), tags)

    def on_epoch_start(self, epoch: int) -> None:
        finished = epoch - 1
        if finished >= 0 and finished % self.cfg.push_every == 0:
            self.push(finished)

    def can_replay(self) -> bool:
        return len(self.memory) > 0

    def replay(self, m: int) -> torch.Tensor:
        u, tags = self.memory.sample(m)
        self.last_replay_tags = tags
        return self.from_unit(u)
