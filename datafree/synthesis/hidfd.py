"""HiDFD: Hybrid Data-Free Knowledge Distillation (Tang, Chen and Gong, AAAI 2025).

HiDFD uses a small collected real set Dc (labelled by the teacher) in three
stages, which we map onto the one engine loop:

1. teacher-guided generation, a class-conditional GAN trained on Dc: the
   ``warmup`` epochs (synthesis only) run the GAN's steps, spread evenly over
   the warm-up rounds (``gan_epochs`` passes over Dc in all, or ``gan_steps``);
2. the synthetic set: at the first student epoch, ``pool_size`` images with
   uniform labels are generated and ``synthetic_size`` of them kept;
3. student distillation on the inflated mix (Dc repeated ``repeat`` times plus
   the synthetic set, shuffled together; :class:`~datafree.data.collected.InflatedSet`)
   with classifier-sharing feature alignment (the ``feature_align`` distiller).

All GAN time is synthesis time. Everything (GAN, optimisers, the class
statistics, the synthetic set and the position in the shuffled pass) is
resumable, also in the middle of GAN training.

``collected`` is the reference row "KD with only the collected data": the
same Dc, served alone (repeated ``repeat`` times per epoch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..data.augment import local_view, standard_augment
from ..data.collected import Collected, CollectedConfig, InflatedSet, collect, teacher_labels
from ..data.datasets import Batches, ImageSplit
from ..data.spec import Normalizer
from ..errors import CheckpointError, ConfigError
from ..models.gan import ConditionalGenerator, SNDiscriminator, ema_update
from ..registry import SYNTHESIZERS
from . import losses
from .base import Synthesizer
from .common import TeacherTerms, random_labels

AUGMENTS = ("resized_crop_flip", "resized_crop", "standard", "none")
SYNTHETIC_RANGES = ("clamp", "minmax")


def clamped_uint8(x: torch.Tensor) -> torch.Tensor:
    """G's [-1, 1] output -> uint8 pixels: (x + 1) / 2 clipped to [0, 1], times 255, rounded."""
    return ConditionalGenerator.pixels(x.float()).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def minmax_uint8(x: torch.Tensor) -> torch.Tensor:
    """G's output -> uint8 pixels as the released ``generate_images`` writes them: each image min-max scaled to
    [0, 1] over all its channels and pixels, (x - min) / max(max - min, 1e-5), then floor(255 v + 0.5) clipped
    to [0, 255] (torchvision's ``save_image(img, normalize=True)``, one PNG per image)."""
    x = x.float()
    flat = x.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    v = (x - lo) / (hi - lo).clamp_min(1e-5)
    return v.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def build_augment(kind: str, spec, scale: Tuple[float, float]) -> nn.Module:
    """The student's augmentation: RandomResizedCrop (+ flip), the dataset's standard one, or none."""
    if kind not in AUGMENTS:
        raise ConfigError(f"synth.augment must be one of {AUGMENTS}, got {kind!r}")
    if kind.startswith("resized_crop"):
        return local_view(spec.size, flip=kind.endswith("flip"), scale=tuple(scale))
    return standard_augment("none" if kind == "none" else spec.augment, spec.size)


class FrequencySmoother:
    """Category frequency smoothing (HiDFD, after class-balancing GANs, Rangwani et al. 2021).

    Keeps per-class effective counts N_k (start ``init``) and the classes the
    teacher assigned to generated images since the last update, n_k. An update
    sets N_k = max(1, decay * N_k + (1 - decay) * n_k) and the class weights
    w_k proportional to (1 - beta) / (1 - beta^N_k), normalised to sum to K:
    classes generated rarely get larger weights. The loss term is
    :func:`~datafree.synthesis.losses.weighted_class_balance` with these weights.
    """

    def __init__(self, num_classes: int, beta: float = 0.99, init: float = 50.0, decay: float = 0.5, device="cpu"):
        self.num_classes, self.beta, self.decay = num_classes, beta, decay
        self.counts_ema = torch.full((num_classes,), float(init), device=device)
        self.pending = torch.zeros(num_classes, device=device)
        self.weights = self.class_weights()

    def class_weights(self) -> torch.Tensor:
        w = (1.0 - self.beta) / (1.0 - torch.pow(self.beta, self.counts_ema.double()))
        return (w / w.sum() * self.num_classes).float()

    @torch.no_grad()
    def observe(self, logits: torch.Tensor) -> None:
        """Count the teacher's predicted classes of a generated batch (stays on the device)."""
        self.pending += torch.bincount(logits.argmax(1), minlength=self.num_classes).to(self.pending)

    @torch.no_grad()
    def update(self) -> None:
        self.counts_ema = (self.decay * self.counts_ema + (1 - self.decay) * self.pending).clamp_min(1.0)
        self.pending.zero_()
        self.weights = self.class_weights()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"counts_ema": self.counts_ema.cpu(), "pending": self.pending.cpu()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.counts_ema = state["counts_ema"].to(self.counts_ema.device)
        self.pending = state["pending"].to(self.pending.device)
        self.weights = self.class_weights()


class CollectedSampling:
    """Mixin: Dc from :func:`~datafree.data.collected.collect`, and ``sample(n)`` from an InflatedSet.

    ``self.mix`` (an :class:`InflatedSet`) yields uint8 images; they are
    augmented on the device and normalised; labels are the teacher's labels of
    Dc and the generator's conditioning labels of synthetic images.
    """

    collected: Collected
    mix: Optional[InflatedSet] = None
    input_normalizer: Optional[Normalizer] = None  # the student's training inputs (None: the dataset's)

    def init_collected(self) -> None:
        ctx = self.ctx
        self.collected = collect(
            self.cfg,
            self.teacher,
            ctx.spec,
            ctx.device,
            dataset=ctx.cfg.dataset,
            run_seed=ctx.cfg.seed,
            data_root=ctx.cfg.data_root,
            autocast=ctx.amp.autocast,
        )
        self.real_data = self.collected.describe()
        self.augment = build_augment(self.cfg.augment, ctx.spec, self.cfg.crop_scale)
        if ctx.out_dir and ctx.rank == 0:
            self.collected.write(ctx.out_dir)

    @torch.no_grad()
    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.mix is None:
            raise RuntimeError(
                f"{type(self).__name__}: the student's data is not ready (sample() was called "
                "before the synthetic set was built)"
            )
        images, labels, _ = self.mix.sample(n)
        norm = self.input_normalizer or self.normalizer
        return norm(self.augment(images.float().div_(255.0))), labels

    def collected_state(self) -> Dict[str, Any]:
        return {
            "collected_indices": self.collected.indices.clone(),
            "mix": None if self.mix is None else self.mix.state_dict(),
        }

    def load_collected_state(self, state: Dict[str, Any]) -> None:
        saved = state.get("collected_indices")
        if saved is not None and not torch.equal(saved.cpu(), self.collected.indices.cpu()):
            raise CheckpointError(
                "cannot resume: the collected set rebuilt from its source differs from the one "
                "the run used (the source data or the teacher changed); see collected.json"
            )
        if state.get("mix") is not None:
            self.mix = InflatedSet.from_state(self.collected.split, state["mix"])

    def summary_extra(self) -> Dict[str, Any]:
        return self.collected.summary()


@SYNTHESIZERS.register("hidfd")
class HiDFD(CollectedSampling, Synthesizer):
    """HiDFD's data side: a teacher-guided conditional GAN on collected data, then data inflation.

    Tang, Chen and Gong, "Hybrid Data-Free Knowledge Distillation", AAAI 2025.

    GAN (ADC-GAN, Hou et al. 2022, with BigGAN's 32x32 generator and an
    SN-ResNet discriminator; :mod:`datafree.models.gan`), per step with a real
    batch (x, y) of Dc (teacher labels) and generated images x' = G(z, y'),
    y' uniform:

    * D minimises hinge(D(x), D(x')) + ``adc_d`` * [CE(aux(x), 2y) + CE(aux(x'), 2y' + 1)]
      + ``feat`` * FI, where the feature integration FI is the sum of four mean
      L2 distances between the frozen teacher's penultimate features T(.) and
      D's feature head H(.) (an MLP on D's pooled features to the teacher's
      width): |T(x) - H(x)| + |T(x) - H(x')| + |T(x') - H(x')| + |T(x') - H(x)|;
    * G minimises -D(x') + ``adc_g`` * [CE(aux(x'), 2y') - CE(aux(x'), 2y' + 1)]
      + ``freq`` * sum_k w_k p_k log p_k, p the batch-mean teacher softmax on x'
      and w the effective-number class weights of :class:`FrequencySmoother`.

    Defaults: the paper's (Adam, G lr 1e-4, D lr 4e-4, 500 epochs over Dc,
    lambda_d = lambda_g = 0.1, beta 0.99, N_k starting at 50); betas (0, 0.999),
    batch 100, z dim 128, width 64 and the N(0, 0.02) initialisation from the
    released script; data inflation N = 10 with 50,000 of 100,000 generated
    images (the paper's best setting). The collected set comes from another
    source than the teacher's data (``synth.source``; ImageNet for CIFAR).

    ``hidfd:released`` is the released code's protocol: its GAN optimiser
    (``train.sh``: 2e-4 for both, 400 epochs) and its way of making the
    synthetic set (``utils.generate_images``): the non-EMA G in eval mode
    (``sample_mode: eval``), each image min-max scaled to [0, 1] and written
    as uint8 (``synthetic_range: minmax``), and the student's training inputs
    normalised otherwise than the teacher's (``train_mean``/``train_std``):
    the released student normalises them with ImageNet32's statistics
    (``dataset/imagenet32_mix.py``), not those its teacher was trained with;
    the preset keeps that change of pixels. Evaluation keeps the dataset's.

    Reference-code bugs fixed (we follow the paper):

    * the feature-integration loss is computed under ``torch.no_grad()`` in the
      released code, so it never trains D or its head; here it does;
    * the class statistics N_k of the frequency smoothing are never updated in
      the released code (the weights stay uniform); here they are updated every
      ``freq_update_every`` GAN steps (default: once per pass over Dc);
    * the released feature head is two linear layers with nothing between
      them (a linear map); we put a ReLU between them, the MLP the paper describes.

    Other choices: D and the teacher see images in the dataset's normalised
    space (the released code feeds the GAN's [-1, 1] images to the teacher);
    by default synthetic images are generated with batch statistics (BigGAN's
    default sampling) in batches of ``gan_batch_size``, clipped to [0, 1].
    """

    @dataclass
    class Config(CollectedConfig):
        # the GAN
        nz: int = 128
        g_ch: int = 64  # BigGAN's G_ch: blocks are 4 x g_ch wide
        d_ch: int = 64
        feature_hidden: int = 1024  # width of D's feature head
        gan_batch_size: int = 100
        gan_epochs: int = 500  # passes over Dc
        gan_steps: int = 0  # > 0: this many GAN steps instead of gan_epochs passes
        d_steps: int = 1  # D steps per G step
        lr_g: float = 1e-4
        lr_d: float = 4e-4
        betas: Tuple[float, float] = (0.0, 0.999)
        adc_d: float = 1.0  # ADC-GAN's D_lambda
        adc_g: float = 1.0  # ADC-GAN's G_lambda
        feat: float = 0.1  # lambda_d: feature integration
        freq: float = 0.1  # lambda_g: category frequency smoothing
        freq_beta: float = 0.99
        freq_init: float = 50.0
        freq_decay: float = 0.5
        freq_update_every: int = 0  # GAN steps between updates of N_k (0: once per pass over Dc)
        ema: bool = False  # sample the synthetic set from an EMA of G (the released script)
        ema_decay: float = 0.9999
        ema_start: int = 1000  # GAN steps before the EMA starts averaging
        gan_amp: bool = False  # run G and D under the run's autocast (the released code trains them in fp32)
        # the synthetic set and data inflation
        pool_size: int = 100000  # images generated, uniform labels
        synthetic_size: int = 50000  # of which this many are drawn for the student
        repeat: int = 10  # N: Dc repeated N times in each student epoch
        sample_mode: str = "train"  # G's BN when generating the set: train (batch stats) | eval
        synthetic_range: str = "clamp"  # G's output -> pixels: clamp ((x + 1) / 2 clipped) | minmax (per image)
        augment: str = "resized_crop_flip"
        crop_scale: Tuple[float, float] = (0.08, 1.0)
        # the student's training inputs (Dc and synthetic) are normalised with these (None: the dataset's, as
        # in evaluation); the released student uses ImageNet32's (dataset/imagenet32_mix.py), see hidfd:released
        train_mean: Optional[Tuple[float, ...]] = None
        train_std: Optional[Tuple[float, ...]] = None

    stateful = ("generator", "discriminator", "opt_g", "opt_d", "generator_ema", "real_batches", "smoother")

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c, spec = self.cfg, ctx.spec
        self._check_config()
        if c.train_mean is not None:
            self.input_normalizer = Normalizer(
                replace(spec, mean=tuple(c.train_mean), std=tuple(c.train_std)), ctx.device
            )
        self.init_collected()
        self.terms = TeacherTerms(self, 0.0)
        self.feature_dim = self._teacher_feature_dim()
        self.generator = ConditionalGenerator(c.nz, c.g_ch, spec.size, spec.channels, spec.num_classes).to(ctx.device)
        self.discriminator = SNDiscriminator(
            c.d_ch,
            spec.size,
            spec.channels,
            spec.num_classes,
            feature_dim=self.feature_dim if c.feat > 0 else 0,
            feature_hidden=c.feature_hidden,
        ).to(ctx.device)
        self.generator_ema = None
        if c.ema:
            self.generator_ema = ConditionalGenerator(c.nz, c.g_ch, spec.size, spec.channels, spec.num_classes).to(
                ctx.device
            )
            self.generator_ema.load_state_dict(self.generator.state_dict())
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=c.lr_g, betas=tuple(c.betas))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=c.lr_d, betas=tuple(c.betas))
        self.real_batches = Batches(self.collected.split, spec, ctx.device, train=True, augment="none")
        self.smoother = FrequencySmoother(spec.num_classes, c.freq_beta, c.freq_init, c.freq_decay, ctx.device)
        self.gan_steps_done = 0
        self.label_agreement: Optional[float] = None
        self.epoch_length = c.repeat * len(self.collected) + c.synthetic_size

    def _check_config(self) -> None:
        c = self.cfg
        if c.synthetic_size > c.pool_size:
            raise ConfigError(
                f"synth.synthetic_size ({c.synthetic_size}) cannot exceed synth.pool_size ({c.pool_size})"
            )
        if c.sample_mode not in ("train", "eval"):
            raise ConfigError("synth.sample_mode must be train or eval")
        if c.synthetic_range not in SYNTHETIC_RANGES:
            raise ConfigError(f"synth.synthetic_range must be one of {SYNTHETIC_RANGES}, got {c.synthetic_range!r}")
        if (c.train_mean is None) != (c.train_std is None):
            raise ConfigError(
                "synth.train_mean and synth.train_std go together: give both, or neither (the dataset's normalisation)"
            )
        if c.train_mean is not None:
            k = self.spec.channels
            if len(c.train_mean) != k or len(c.train_std) != k or min(c.train_std) <= 0:
                raise ConfigError(
                    f"synth.train_mean and synth.train_std need {k} value(s) for "
                    f"{self.spec.name}'s {k} channel(s), the stds positive; got {list(c.train_mean)} "
                    f"and {list(c.train_std)}"
                )
        if c.repeat < 1 or c.gan_batch_size < 1 or c.d_steps < 1:
            raise ConfigError("synth.repeat, synth.gan_batch_size and synth.d_steps must be at least 1")

    @torch.no_grad()
    def _teacher_feature_dim(self) -> int:
        x = torch.zeros(2, *self.spec.shape, device=self.device)
        _, feats, _ = self.terms(x, features=True)
        return int(feats.shape[1])

    # -- schedule ---------------------------------------------------------
    @property
    def steps_per_gan_epoch(self) -> int:
        return max(1, math.ceil(len(self.collected) / self.cfg.gan_batch_size))

    @property
    def total_gan_steps(self) -> int:
        return self.cfg.gan_steps if self.cfg.gan_steps > 0 else self.cfg.gan_epochs * self.steps_per_gan_epoch

    @property
    def gan_done(self) -> bool:
        return self.gan_steps_done >= self.total_gan_steps

    def _rounds_per_epoch(self) -> int:
        """Synthesis rounds the engine runs per epoch (as ``Engine.ep_steps`` and ``kd_steps`` give them)."""
        cfg = self.ctx.cfg
        steps = cfg.ep_steps or math.ceil(self.epoch_length / cfg.batch_size)
        return max(1, math.ceil(steps / (cfg.kd_steps or steps)))

    def _gan_target(self) -> int:
        """GAN steps that should be done after this round: evenly spread over the warm-up rounds."""
        warm_rounds = self.ctx.cfg.warmup * self._rounds_per_epoch()
        if self.ctx.epoch >= self.ctx.cfg.warmup or warm_rounds <= 0:
            return self.total_gan_steps
        return min(self.total_gan_steps, math.ceil(self.total_gan_steps * (self.ctx.round + 1) / warm_rounds))

    # -- the GAN ----------------------------------------------------------
    def gan_autocast(self):
        return self.ctx.amp.autocast() if self.cfg.gan_amp else contextlib.nullcontext()

    def latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.nz, device=self.device)

    def generate(self, z: torch.Tensor, y: torch.Tensor, generator: Optional[nn.Module] = None) -> torch.Tensor:
        """Normalised images G(z, y) (with gradient when enabled)."""
        g = generator or self.generator
        with self.gan_autocast():
            x = g(z, y)
        return self.normalizer(g.pixels(x.float()))

    def discriminator_step(self) -> Dict[str, torch.Tensor]:
        c, b = self.cfg, self.cfg.gan_batch_size
        x_real, y_real = self.real_batches.sample(b)
        y_fake = random_labels(b, self.spec.num_classes, self.device, sort=False)
        with torch.no_grad():
            x_fake = self.generate(self.latent(b), y_fake)
        with self.gan_autocast():
            out, aux, head = self.discriminator(torch.cat([x_real, x_fake]))
        out_r, out_f = out.float().split(b)
        aux_r, aux_f = aux.float().split(b)
        l_adv = losses.hinge_discriminator(out_r, out_f)
        l_adc = losses.adc_discriminator(aux_r, y_real, aux_f, y_fake)
        loss = l_adv + c.adc_d * l_adc
        logs = {"d_adv": l_adv.detach(), "d_adc": l_adc.detach()}
        if c.feat > 0:
            with torch.no_grad():
                _, t_feats, _ = self.terms(torch.cat([x_real, x_fake]), features=True)
            t_r, t_f = t_feats.float().split(b)
            h_r, h_f = head.float().split(b)
            l_feat = losses.feature_integration(t_r, t_f, h_r, h_f)  # with gradient into D (the reference had none)
            loss = loss + c.feat * l_feat
            logs["d_feat"] = l_feat.detach()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self.images_synthesized += b
        logs["loss_d"] = loss.detach()
        return logs

    def generator_step(self) -> Dict[str, torch.Tensor]:
        c, b = self.cfg, self.cfg.gan_batch_size
        y = random_labels(b, self.spec.num_classes, self.device, sort=False)
        x = self.generate(self.latent(b), y)
        self.discriminator.requires_grad_(False)  # BigGAN's toggle_grads; D stays in train mode (SN updates)
        try:
            with self.gan_autocast():
                out, aux, _ = self.discriminator(x, with_features=False)
        finally:
            self.discriminator.requires_grad_(True)
        l_adv = losses.hinge_generator(out.float())
        l_adc = losses.adc_generator(aux.float(), y)
        loss = l_adv + c.adc_g * l_adc
        logs = {"g_adv": l_adv.detach(), "g_adc": l_adc.detach()}
        if c.freq > 0:
            t, _, _ = self.terms(x)
            l_freq = losses.weighted_class_balance(t, self.smoother.weights)
            self.smoother.observe(t.detach())
            loss = loss + c.freq * l_freq
            logs["g_freq"] = l_freq.detach()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.images_synthesized += b
        logs["loss_g"] = loss.detach()
        return logs

    def gan_step(self) -> Dict[str, torch.Tensor]:
        """D steps then one G step, the EMA of G and the class-statistics update."""
        self.generator.train()
        self.discriminator.train()
        logs: Dict[str, torch.Tensor] = {}
        for _ in range(self.cfg.d_steps):
            logs.update(self.discriminator_step())
        logs.update(self.generator_step())
        self.gan_steps_done += 1
        if self.generator_ema is not None:
            decay = 0.0 if self.gan_steps_done < self.cfg.ema_start else self.cfg.ema_decay
            ema_update(self.generator_ema, self.generator, decay)
        every = self.cfg.freq_update_every or self.steps_per_gan_epoch
        if self.gan_steps_done % every == 0:
            self.smoother.update()
        return logs

    # -- the synthetic set ------------------------------------------------
    @torch.no_grad()
    def build_synthetic(self) -> ImageSplit:
        """Generate ``pool_size`` images with uniform labels and keep a random ``synthetic_size`` of them."""
        c, k = self.cfg, self.spec.num_classes
        g = self.generator_ema if self.generator_ema is not None else self.generator
        g.train(c.sample_mode == "train")
        labels = (torch.arange(c.pool_size, device=self.device) % k)[torch.randperm(c.pool_size).to(self.device)]
        keep = torch.zeros(c.pool_size, dtype=torch.bool, device=self.device)
        keep[torch.randperm(c.pool_size)[: c.synthetic_size].to(self.device)] = True
        images, kept_labels = [], []
        for i in range(0, c.pool_size, c.gan_batch_size):
            y = labels[i : i + c.gan_batch_size]
            with self.gan_autocast():
                x = g(self.latent(y.shape[0]), y)
            sel = keep[i : i + c.gan_batch_size]
            images.append((minmax_uint8 if c.synthetic_range == "minmax" else clamped_uint8)(x[sel]))
            kept_labels.append(y[sel])
            self.images_synthesized += y.shape[0]
        g.train()
        return ImageSplit(torch.cat(images), torch.cat(kept_labels))

    @torch.no_grad()
    def teacher_agreement(self, synthetic: ImageSplit) -> Optional[float]:
        """How often the teacher's class of a synthetic image is its conditioning label (once per run)."""
        if len(synthetic) == 0:
            return None
        predicted, _ = teacher_labels(self.teacher, synthetic.images, self.spec, self.device, self.ctx.amp.autocast)
        return float((predicted.to(synthetic.labels.device) == synthetic.labels).float().mean())

    # -- the contract -------------------------------------------------------
    def synthesize(self) -> Dict[str, torch.Tensor]:
        """GAN steps up to this round's share; once the GAN is trained, build the student's data once."""
        logs: List[Dict[str, torch.Tensor]] = []
        target = self._gan_target()
        while self.gan_steps_done < target:
            logs.append(self.gan_step())
        if self.gan_done and self.mix is None and self.ctx.epoch >= self.ctx.cfg.warmup:
            synthetic = self.build_synthetic()
            self.label_agreement = self.teacher_agreement(synthetic)
            self.mix = InflatedSet(self.collected.split, synthetic, self.cfg.repeat)
        if not logs:
            return {}
        return {k: torch.stack([l[k] for l in logs]).mean() for k in logs[-1]}

    @torch.no_grad()
    def preview(self, n: int) -> torch.Tensor:
        """Synthetic images (first half) and collected ones (second half), without augmentation."""
        real = self.collected.split.images[: n - n // 2]
        if self.mix is not None and self.mix.n_synthetic:
            real = torch.cat([self.mix.synthetic().images[: n // 2], real])
        return self.normalizer(real.float().div_(255.0))

    def extra_state(self) -> Dict[str, Any]:
        return {
            "gan_steps_done": self.gan_steps_done,
            "label_agreement": self.label_agreement,
            **self.collected_state(),
        }

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        self.gan_steps_done = int(state["gan_steps_done"])
        self.label_agreement = state.get("label_agreement")
        self.load_collected_state(state)

    def summary_extra(self) -> Dict[str, Any]:
        out = self.collected.summary()
        out.update(
            {
                "gan_steps": self.gan_steps_done,
                "synthetic_images": 0 if self.mix is None else self.mix.n_synthetic,
                "inflation_repeat": self.cfg.repeat,
                "synthetic_label_agreement": self.label_agreement,
            }
        )
        return out


@SYNTHESIZERS.register("collected")
class CollectedOnly(CollectedSampling, Synthesizer):
    """Only the collected real set Dc, labelled by the teacher (HiDFD's "collected data only" reference).

    The same Dc as :class:`HiDFD` (same source, rho or count, selection and
    seed), repeated ``repeat`` times per epoch, shuffled, with the student's
    augmentation; ``synthesize()`` does nothing. Batches carry the teacher's
    labels (a KD distiller with ``ce > 0`` uses them).
    """

    @dataclass
    class Config(CollectedConfig):
        repeat: int = 10
        augment: str = "resized_crop_flip"
        crop_scale: Tuple[float, float] = (0.08, 1.0)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        if self.cfg.repeat < 1:
            raise ConfigError("synth.repeat must be at least 1")
        self.init_collected()
        self.mix = InflatedSet(self.collected.split, None, self.cfg.repeat)
        self.epoch_length = len(self.mix)

    def synthesize(self) -> Dict[str, float]:
        return {}

    @torch.no_grad()
    def preview(self, n: int) -> torch.Tensor:
        return self.normalizer(self.collected.split.images[:n].float().div_(255.0))

    def extra_state(self) -> Dict[str, Any]:
        return self.collected_state()

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        self.load_collected_state(state)
