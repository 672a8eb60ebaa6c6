"""CMI: Contrastive Model Inversion for Data-Free Knowledge Distillation
(Fang, Song, Wang, Shen, Wang and Song, IJCAI 2021).

Every synthesis round inverts the teacher into a new batch with a *fresh*
generator: the generator is re-initialised (DCGAN init: weights N(0, 0.02),
BN scales N(1, 0.02), biases 0) and optimised together with its latent codes
z and a batch of random target labels y for ``g_steps`` Adam steps on

    L = bn * BN-statistics(T, v_g) + oh * CE(T(v_g), y)
      + adv * ( -mean_i m_i KL(T(v_g)_i || S(v_g)_i) ) + cr * L_cr

where v_g is a *global view* of the generated batch (random crop with padding
size/8, 4 px at 32x32, plus a horizontal flip) and m_i = 1 where student and
teacher predict the same class (the agreement mask of the "decision
adversarial" term: the generator looks for samples the student still gets
wrong in distribution without leaving the teacher's decision region).

The contrastive term L_cr makes each new sample distinguishable from the other
samples of the batch and from all earlier ones. A sample is described by the
instance means (over H, W) of the inputs of the teacher's BatchNorm layers,
concatenated (``feature_layers: bn``; for the resnet34 teacher the reference
uses the inputs of the four residual stages instead: ``feature_layers:
stages``). Features of the global view and of a *local view* (random resized
crop, scale 0.25-1, plus flip) go through an MLP head (Linear d->d, ReLU,
Linear d->``head_dim``, L2-normalised). With the head outputs of the local
views as queries and those of the global views as keys (keys detached), row i
of the logits ``q . K^T / cr_T`` has its positive at column i and every other
key as negative; the keys are the current batch's plus ``n_neg`` entries
sampled from a memory bank of the raw features of the batches kept in earlier
rounds (bank rows are projected by the current head and act as queries too).
The loss is the cross-entropy mean over the current rows plus the mean over
the bank rows (:func:`losses.cross_view_info_nce`). The head is trained along,
by its own Adam (lr ``lr_head``, default ``lr_g`` as in the reference) that
persists across rounds.

The batch with the lowest total loss in a round is kept (a copy, together with
its features): the images join the device-resident pool (uint8), the features
join the memory bank (a ring of ``bank_size`` rows). The student distils from
the pool of all kept batches with the dataset's standard augmentation.

Defaults: the reference's ``scripts/cmi/scratch_cmi_cifar10_wrn402_wrn161.sh``
and ``datafree_kd.py`` (dcgan generator nz 256 ngf 64, lr_g 1e-3, betas
(0.5, 0.999), g_steps 200, synthesis batch 256, adv 0.5, bn 1, oh 1, cr 0.8,
cr_T 0.1, head_dim 256, bank 40960 entries, 4096 negatives; KD batch 128 at
T = 20, 400 student steps per round and per epoch, 200 epochs).

``synth.init_from`` (:class:`~datafree.synthesis.common.PoolOptions`) is the reference's ``--cmi_init``:
the folder's images join the data the student draws from (``contrastive.py`` concatenates them to the
inverted images before each round's KD loader); the memory bank, head and generator do not start from them.

Deviations and reference-code bugs fixed:

* the reference's memory bank, once it holds exactly ``bank_size`` entries
  (round 161 of the 200-round scratch script), returns *no* negatives; the
  bank half of the loss is then the mean of an empty tensor, NaN, which
  poisons the head through its Adam step, and every later round keeps the
  first-iteration output of a freshly initialised generator (almost uniform
  grey images). That shaped the published scratch-CMI number, so
  ``bank_full_nan`` (the ``cmi`` entry sets it on the compared CIFAR pairs) reproduces its consequence:
  from that round on, each round keeps its first step's batch and features and
  logs ``head_nan`` 1 (the remaining steps, which cannot change what is kept,
  are skipped; no NaN is computed). ``cmi:fixed`` samples from all valid rows
  and never stops optimising;
* the reference's kept batch ``inputs.data`` is the generator's fresh output of
  that step, which nothing changes later, so CMI does *not* share
  DeepInversion's no-copy trap; we keep an explicit copy anyway (tested);
* the best batch is tracked on the device with ``torch.where`` (no host sync
  per step); the bank lives on the run's device (the reference keeps it on the
  CPU and samples indices in Python);
* the generator's BN running statistics are reset with its weights (the
  reference keeps them, but they are never used: the generator always runs in
  training mode);
* teachers without BatchNorm (LeNet-5) have no BN features: ``feature_layers:
  bn`` then falls back to the outputs of the convolutions (what a BN after
  them would see) with a warning; flips are used in the views only when the
  dataset's standard augmentation flips (not for digits or MNIST).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..data.augment import crop_padding, local_view
from ..models import create_generator
from ..models.features import FeatureTap, bn_layers, conv_layers
from ..registry import SYNTHESIZERS
from . import losses
from .base import Synthesizer
from .common import PoolOptions, PoolSampling, TeacherTerms, random_labels, view_flips
from ..errors import UnknownNameError

_BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FeatureBank:
    """CMI's memory bank: a ring buffer of feature rows on the run's device.

    ``add`` overwrites the oldest rows once ``size`` rows are held;
    ``sample(k)`` returns ``min(k, len)`` distinct valid rows.
    """

    def __init__(self, size: int, dim: int, device, dtype: str = "float32"):
        if size <= 0:
            raise ValueError("bank_size must be positive")
        if dtype not in _BANK_DTYPES:
            raise ValueError(f"bank_dtype must be one of {sorted(_BANK_DTYPES)}, got {dtype!r}")
        self.size, self.dim, self.device = size, dim, torch.device(device)
        self.dtype = _BANK_DTYPES[dtype]
        self.data: Optional[torch.Tensor] = None  # allocated on the first add
        self._len = 0
        self._next = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self._len

    @torch.no_grad()
    def add(self, feats: torch.Tensor) -> None:
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"bank rows must be (N, {self.dim}), got {tuple(feats.shape)}")
        if self.data is None:
            self.data = torch.zeros(self.size, self.dim, dtype=self.dtype, device=self.device)
        feats = feats.detach()[-self.size :]
        n = feats.shape[0]
        idx = (torch.arange(n, device=self.device) + self._next) % self.size
        self.data[idx] = feats.to(self.device, self.dtype)
        self._next = (self._next + n) % self.size
        self._len = min(self.size, self._len + n)
        self.total_added += n

    def sample(self, k: int) -> torch.Tensor:
        """``min(k, len)`` distinct rows, drawn uniformly, as float32 (an empty (0, dim) tensor when empty)."""
        k = min(k, self._len)
        if k <= 0:
            return torch.zeros(0, self.dim, device=self.device)
        idx = torch.randperm(self._len, device=self.device)[:k]
        return self.data[idx].float()

    def state_dict(self) -> Dict:
        return {
            "data": None if self.data is None else self.data[: self._len].cpu(),
            "len": self._len,
            "next": self._next,
            "total_added": self.total_added,
        }

    def load_state_dict(self, state: Dict) -> None:
        self._len, self._next = int(state["len"]), int(state["next"])
        self.total_added = int(state["total_added"])
        self.data = None
        if state["data"] is not None:
            self.data = torch.zeros(self.size, self.dim, dtype=self.dtype, device=self.device)
            self.data[: self._len] = state["data"].to(self.device, self.dtype)


class ProjectionHead(nn.Module):
    """CMI's MLP head: Linear(d, hidden) -> ReLU -> Linear(hidden, dim), L2-normalised output."""

    def __init__(self, dim_in: int, dim: int = 256, hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or dim_in
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


@torch.no_grad()
def dcgan_init(model: nn.Module) -> None:
    """DCGAN initialisation (the reference's per-round reset): conv/linear weights N(0, 0.02),
    BN scales N(1, 0.02), biases 0; BN running statistics are reset too."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            if m.affine:
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


def _keep_lower(best: Optional[tuple], step: tuple) -> tuple:
    """The (loss, images, features) triple with the lower loss, chosen on the device (no host sync).

    The kept tensors are copies (``clone`` / ``torch.where`` allocate), so nothing
    a later step does can change them.
    """
    if best is None:
        return tuple(None if v is None else v.clone() for v in step)
    better = step[0] < best[0]
    return tuple(None if b is None else torch.where(better, v, b) for b, v in zip(best, step))


def _instance_mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(dim=(2, 3))


@SYNTHESIZERS.register("cmi")
class CMI(PoolSampling, Synthesizer):
    """Contrastive Model Inversion (Fang et al., IJCAI 2021); see the module docstring."""

    @dataclass
    class Config(PoolOptions):
        generator: str = "dcgan"
        nz: int = 256
        ngf: int = 64
        lr_g: float = 1e-3  # generator and z (one Adam, re-created every round)
        betas: Tuple[float, float] = (0.5, 0.999)
        g_steps: int = 200  # optimisation steps per round
        synthesis_batch_size: int = 256
        bn: float = 1.0
        oh: float = 1.0
        adv: float = 0.5
        cr: float = 0.8
        cr_T: float = 0.1
        head_dim: int = 256
        lr_head: Optional[float] = None  # null: lr_g (the reference)
        bank_size: int = 40960
        n_neg: int = 4096
        bank_dtype: str = "float32"  # float16/bfloat16 halve the bank's memory and checkpoint size
        feature_layers: str = "bn"  # bn: inputs of all BN layers | stages: inputs of model.stages() | conv
        local_scale: Tuple[float, float] = (0.25, 1.0)
        view_flip: Optional[bool] = None  # null: flip when the dataset's standard augmentation flips
        keep_best: bool = True
        # the reference's exactly-full bank (see the module docstring): every round from the one that starts with
        # bank_size rows on keeps its first step's batch. Only when bank_size is a multiple of the batch, as the
        # reference asserts (contrastive.py:149); false: the bug fixed (cmi:fixed)
        bank_full_nan: bool = False
        pool_size: int = 0  # 0: unbounded (the pool of all kept batches)
        pool_dtype: str = "uint8"

    stateful = ("pool", "bank", "head", "head_optimizer", "terms")
    synthesis_precision = "fp32"  # under amp=auto on CUDA, as the reference code (docs/precision.md)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c, spec = self.cfg, ctx.spec
        if c.g_steps <= 0:
            raise ValueError("g_steps must be positive")
        self.generator = create_generator(
            c.generator, nz=c.nz, ngf=c.ngf, img_size=spec.size, nc=spec.channels, output="sigmoid"
        ).to(ctx.device)
        if getattr(self.generator, "normalized_output", False):
            raise ValueError("CMI needs a generator with [0, 1] output (the views are cut in pixel space)")
        self.terms = TeacherTerms(self, c.bn)
        self.make_pool(c.pool_size, c.pool_dtype)
        flip = view_flips(spec, c.view_flip)
        self.global_view = self._global_view(spec.size, flip)
        self.local_view = local_view(spec.size, flip=flip, scale=tuple(c.local_scale))
        self.tap = FeatureTap(*self._feature_modules(c.feature_layers), transform=_instance_mean)
        dim = self._feature_dim()
        self.head = ProjectionHead(dim, c.head_dim).to(ctx.device)
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=c.lr_head or c.lr_g)
        self.bank = FeatureBank(c.bank_size, 2 * dim, ctx.device, c.bank_dtype)  # rows: [local, global]

    # -- construction helpers
    @staticmethod
    def _global_view(size: int, flip: bool) -> nn.Module:
        import kornia.augmentation as K

        ops: List[nn.Module] = [K.RandomCrop((size, size), padding=crop_padding(size))]
        if flip:
            ops.append(K.RandomHorizontalFlip())
        return nn.Sequential(*ops)

    def _feature_modules(self, kind: str):
        teacher = self.teacher
        if kind == "bn":
            layers = bn_layers(teacher)
            if layers:
                return layers, "input"
            warnings.warn(
                "CMI: the teacher has no BatchNorm layers; the contrastive features are the "
                "instance means of its convolutions' outputs instead",
                stacklevel=3,
            )
            kind = "conv"
        if kind == "stages":
            layers = list(teacher.stages()) if hasattr(teacher, "stages") else []
            if not layers:
                raise ValueError("feature_layers=stages needs a teacher with stages()")
            return layers, "input"
        if kind == "conv":
            return conv_layers(teacher), "output"

        raise UnknownNameError("feature_layers", kind, ["bn", "stages", "conv"])

    @torch.no_grad()
    def _feature_dim(self) -> int:
        x = torch.zeros(2, *self.spec.shape, device=self.device)
        with self.tap:
            self.teacher(x)
            return self._tapped().shape[1]

    # -- one round
    def _tapped(self) -> torch.Tensor:
        feats = torch.cat(self.tap.outputs, dim=1)
        self.tap.clear()
        return feats

    def _views(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        g, l = self.normalizer(self.global_view(x)), self.normalizer(self.local_view(x))
        if self.ctx.channels_last:
            g, l = (v.contiguous(memory_format=torch.channels_last) for v in (g, l))
        return g, l

    def reset_generator(self) -> None:
        dcgan_init(self.generator)

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """[0, 1] images from latent codes (with gradient)."""
        with self.ctx.amp.autocast():
            x = self.generator(z)
        return x.float()

    def contrastive(self, f_local: torch.Tensor, f_global: torch.Tensor) -> torch.Tensor:
        """CMI's InfoNCE of local-view queries against global-view keys, with bank rows."""
        cached = self.bank.sample(self.cfg.n_neg)
        c_local, c_global = cached.chunk(2, dim=1)
        with self.ctx.amp.autocast():
            proj = self.head(torch.cat([f_local, c_local, f_global, c_global], dim=0))
        p_local, p_global = proj.float().chunk(2, dim=0)
        return losses.cross_view_info_nce(p_local, p_global.detach(), T=self.cfg.cr_T, n_current=f_local.shape[0])

    def objective(self, x: torch.Tensor, y: torch.Tensor):
        """(total loss, named terms, [local, global] features) for a [0, 1] batch ``x`` and targets ``y``."""
        c = self.cfg
        g, l = self._views(x)
        use_cr = c.cr > 0
        if use_cr:
            self.tap.attach()
        try:
            t, _, l_bn = self.terms(g)
            f_global = self._tapped() if use_cr else None
            if use_cr:
                with self.ctx.amp.autocast():
                    self.teacher(l)
                f_local = self._tapped()
        finally:
            self.tap.detach()
            self.tap.clear()
        l_oh = losses.one_hot(t, y)
        loss = c.bn * l_bn + c.oh * l_oh
        logs = {"bn": l_bn, "oh": l_oh}
        if c.adv > 0:
            s = self.student_logits(g)
            logs["adv"] = losses.adversarial(s, t, kind="kl", masked=True)
            loss = loss + c.adv * logs["adv"]
        feats = None
        if use_cr:
            logs["cr"] = self.contrastive(f_local, f_global)
            loss = loss + c.cr * logs["cr"]
            feats = torch.cat([f_local, f_global], dim=1)
        return loss, logs, feats

    def synthesize(self, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        c = self.cfg
        n = c.synthesis_batch_size
        self.reset_generator()
        self.generator.train()
        self.head.train()
        z = torch.randn(n, c.nz, device=self.device).requires_grad_(True)
        y = random_labels(n, self.spec.num_classes, self.device) if targets is None else targets.to(self.device)
        optimizer = torch.optim.Adam(
            [{"params": self.generator.parameters()}, {"params": [z]}], lr=c.lr_g, betas=tuple(c.betas)
        )
        best = None  # (loss, images, features) of the lowest-loss step so far
        head_nan = self.head_is_nan_in_reference()
        for _ in range(1 if head_nan else c.g_steps):
            x = self.images(z)
            loss, logs, feats = self.objective(x, y)
            step = (loss.detach(), x.detach(), None if feats is None else feats.detach())
            best = _keep_lower(best, step) if c.keep_best else step
            if head_nan:  # the reference's loss is NaN from here on: it keeps this first step's batch
                logs["head_nan"] = torch.ones((), device=self.device)
                break
            optimizer.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if c.cr > 0:
                self.head_optimizer.step()
        best_loss, best_x, best_f = best
        self.pool.add(best_x, y)
        if best_f is not None:
            self.bank.add(best_f)
        self.images_synthesized += n
        out = {k: v.detach() for k, v in logs.items()}
        out.update({"loss_g": loss.detach(), "best_loss": best_loss})
        return out

    def head_is_nan_in_reference(self) -> bool:
        """True from the round that starts with exactly ``bank_size`` rows written, under ``bank_full_nan``.

        The reference's bank (contrastive.py:154-166) then samples from ``range(ptr)`` with ``ptr`` wrapped to
        0: no negatives, so ``loss_cr[N:].mean()`` (:324) is NaN, the head's Adam step makes the head NaN for
        good, and every later loss is NaN (``best_cost > nan`` is false: the first step's batch is kept)."""
        c = self.cfg
        n = c.synthesis_batch_size
        return bool(c.bank_full_nan and c.cr > 0 and c.bank_size % n == 0 and self.bank.total_added >= c.bank_size)

    def close(self) -> None:
        self.tap.detach()
        if self.terms.bn is not None:
            self.terms.bn.detach()
