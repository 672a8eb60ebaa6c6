"""Building blocks shared by synthesizers: teacher passes with the terms
attached, generator-based synthesis, and pool-based sampling."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..data.augment import standard_augment
from ..data.image_set import read_image_set
from ..models import create_generator
from ..results import POOL
from .base import Synthesizer
from .losses import BNStatistics
from .pool import DataPool


def view_flips(spec, choice: Optional[bool]) -> bool:
    """Whether synthesis views flip: ``choice`` when it is set, else as the dataset's standard augmentation does
    (``crop_flip``; digits and MNIST do not flip)."""
    return spec.augment in ("crop_flip", "seg_crop_flip") if choice is None else bool(choice)


def random_labels(n: int, num_classes: int, device, sort: bool = True) -> torch.Tensor:
    y = torch.randint(0, num_classes, (n,))
    return (y.sort()[0] if sort else y).to(device)


#: the cells a side of a segmentation target layout (:func:`random_layouts`)
LAYOUT_GRID = 2


def random_layouts(n: int, num_classes: int, size: int, device, grid: int = LAYOUT_GRID) -> torch.Tensor:
    """``n`` random class maps (``(n, size, size)``, long): a ``grid`` x ``grid`` layout of cells, each of a
    class drawn uniformly, upsampled to ``size`` (nearest). The per-pixel form of random target classes
    (DeepInversion, Fast-DFKD): a class drawn for each pixel alone would ask a segmenter for a class change at
    every pixel, which one at output stride 8 cannot give; cells of a side ``size / grid`` give each class its
    share of pixels at a scale the teacher resolves (docs/segmentation.md)."""
    cells = torch.randint(0, num_classes, (n, 1, grid, grid)).float()
    maps = torch.nn.functional.interpolate(cells, size=(size, size), mode="nearest")
    return maps[:, 0].long().to(device)


def random_targets(n: int, spec, device, sort: bool = True) -> torch.Tensor:
    """Random targets of the spec's task: a class per image (:func:`random_labels`), or for segmentation a
    class map per image (:func:`random_layouts`)."""
    if spec.task == "segmentation":
        return random_layouts(n, spec.num_classes, spec.size, device)
    return random_labels(n, spec.num_classes, device, sort=sort)


class TeacherTerms:
    """Runs the teacher on a batch with the BN-statistics hooks attached when needed.

    ``teacher_bn_missing`` is set (and a warning issued once) when the teacher
    has no BatchNorm layers: the BN term is then zero, e.g. for LeNet-5.
    """

    def __init__(self, synth: Synthesizer, bn_weight: float, momentum: float = 0.0):
        self.synth = synth
        self.bn: Optional[BNStatistics] = None
        self.bn_missing = False
        if bn_weight > 0:
            try:
                self.bn = BNStatistics(synth.teacher, momentum=momentum)
            except ValueError:
                self.bn_missing = True
                warnings.warn(
                    f"{type(synth).__name__}: the teacher has no BatchNorm layers, "
                    "so the BN-statistics term is zero for this run",
                    stacklevel=3,
                )

    def __call__(self, x: torch.Tensor, features: bool = False):
        """(logits, features or None, bn loss) of the teacher on ``x``."""
        teacher = self.synth.teacher
        with self.synth.ctx.amp.autocast():
            if self.bn is not None:
                with self.bn:
                    out = teacher(x, return_features=features)
                bn_loss = self.bn.loss()
            else:
                out = teacher(x, return_features=features)
                bn_loss = x.new_zeros(())
        logits, feats = out if features else (out, None)
        return logits.float(), feats, bn_loss.float()

    def state_dict(self) -> Dict:
        return {} if self.bn is None else self.bn.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        if self.bn is not None and state:
            self.bn.load_state_dict(state)


#: the file a finished run of a pool method keeps its pool in (``datafree export`` reads it)
POOL_FORMAT = "datafree-pool/1"
#: images per chunk when a saved set is copied into a pool (bounds the float copy's memory)
_FILL_CHUNK = 4096


@dataclass
class PoolOptions:
    """Options every pool method's ``Config`` inherits (CMI, DeepInversion, Fast-DFKD).

    ``init_from``: a folder of images (a set written by ``datafree export``, or any image folder such as the
    CMI repository's pre-inverted set) that fills the pool before the first round, as the CMI repository's
    ``--cmi_init`` adds its pre-inverted set to the student's training data. The student then draws from
    those images and every batch the run synthesises. None (the default) starts from an empty pool.
    """

    init_from: Optional[str] = None


class PoolSampling:
    """Mixin: ``sample(n)`` draws from ``self.pool`` with the dataset's standard augmentation.

    With ``init_from`` in the method's config (:class:`PoolOptions`) the pool starts filled from that folder.
    A run's pool is also kept after the run as ``pool.pt`` (:meth:`final_files`).
    """

    pool: DataPool
    init_set = None  # the ImageSet the pool started from (init_from), if any

    def make_pool(self, capacity: Optional[int], dtype: str) -> DataPool:
        self.pool = DataPool(capacity=capacity or None, dtype=dtype, device=self.ctx.device)
        self.augment = standard_augment(self.ctx.spec.augment, self.ctx.spec.size)
        init_from = getattr(self.cfg, "init_from", None)
        if init_from:
            self.fill_pool(init_from)
        return self.pool

    @torch.no_grad()
    def fill_pool(self, folder: str) -> int:
        """Add every image of a saved set to the pool, with its folder labels; returns how many.

        These images were not synthesised by this run: ``images_synthesized`` does not count them. A bounded
        pool (``pool_size``) keeps the last ``pool_size`` of them, and new batches replace the oldest first.
        """
        s = read_image_set(folder, self.ctx.spec, dataset=self.ctx.cfg.dataset, what="synth.init_from")
        images, labels = s.split.images, s.split.labels
        for i in range(0, len(s), _FILL_CHUNK):
            self.pool.add(
                images[i : i + _FILL_CHUNK].to(self.ctx.device).float().div_(255.0), labels[i : i + _FILL_CHUNK]
            )
        self.init_set = s
        return len(s)

    def summary_extra(self) -> Dict:
        out = {"pool_images": len(self.pool)}
        if self.init_set is not None:
            out.update(self.init_set.record("init_from"))
        return out

    def final_files(self) -> Dict:
        """``pool.pt``: the pool's images ([0, 1] pixels, as stored) and labels, with the data spec."""
        return {
            POOL: {
                "format": POOL_FORMAT,
                "pool": self.pool.state_dict(),
                "dtype": self.pool.dtype,
                "spec": self.ctx.spec.as_dict(),
                "method": self.ctx.cfg.method,
                "images_synthesized": self.images_synthesized,
                "init_images": 0 if self.init_set is None else len(self.init_set),
            }
        }

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        x, _ = self.pool.sample(n)
        return self.normalizer(self.augment(x))

    @torch.no_grad()
    def preview(self, n: int) -> torch.Tensor:
        return self.normalizer(self.pool.latest(n))


class GeneratorSynthesizer(Synthesizer):
    """A generator trained by ``g_steps`` Adam steps per round on :meth:`generator_loss`.

    Subclasses define ``Config`` (which must include the fields below) and
    :meth:`generator_loss`. The student is frozen (eval mode, no parameter
    gradients) whenever a synthesis loss runs it. :meth:`sample` draws fresh
    latent codes with the generator in ``sample_mode`` ("train": batch
    statistics, as the batch the student sees in DAFL/DFAD; "eval": running
    statistics).
    """

    @dataclass
    class Config:
        generator: str = "dcgan"
        nz: int = 256
        ngf: int = 64
        output: str = "sigmoid"
        lr_g: float = 1e-3
        betas: Tuple[float, float] = (0.5, 0.999)
        g_steps: int = 1
        synthesis_batch_size: int = 256
        sample_mode: str = "train"
        bn: float = 0.0

    stateful = ("generator", "optimizer", "terms")

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c = self.cfg
        if c.sample_mode not in ("train", "eval"):
            raise ValueError("sample_mode must be train or eval")
        self.generator = self.build_generator().to(ctx.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=c.lr_g, betas=tuple(c.betas))
        self.terms = TeacherTerms(self, c.bn, momentum=getattr(c, "bn_momentum", 0.0))

    def build_generator(self) -> nn.Module:
        c, spec = self.cfg, self.ctx.spec
        return create_generator(c.generator, nz=c.nz, ngf=c.ngf, img_size=spec.size, nc=spec.channels, output=c.output)

    def latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.nz, device=self.device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised images from latent codes (with gradient)."""
        with self.ctx.amp.autocast():
            x = self.generator(z)
        x = x.float()
        if getattr(self.generator, "normalized_output", False):
            return x
        return self.normalizer(x)

    def generator_loss(self, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def synthesize(self) -> Dict[str, torch.Tensor]:
        self.generator.train()
        logs: Dict[str, torch.Tensor] = {}
        for _ in range(self.cfg.g_steps):
            z = self.latent(self.cfg.synthesis_batch_size)
            x = self.generate(z)
            loss, logs = self.generator_loss(x, z)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.images_synthesized += x.shape[0]
            self.after_generator_step(x.detach(), z)
        logs = {k: v.detach() for k, v in logs.items()}
        logs["loss_g"] = loss.detach()
        return logs

    def after_generator_step(self, x: torch.Tensor, z: torch.Tensor) -> None:
        """Hook for subclasses (memory buffers, replay models)."""

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        self.generator.train(self.cfg.sample_mode == "train")
        x = self.generate(self.latent(n))
        self.generator.train()
        return x
