"""Collected real data (HiDFD): a small set of real images labelled by the teacher.

HiDFD (Tang et al., AAAI 2025) assumes a small collected set Dc of real images
from some source other than the teacher's training set (ImageNet for CIFAR),
labelled by the teacher. Its size is ``rho = |Dc| / |Do|`` with ``|Do|`` the
teacher's training-set size (``spec.train_size``), or an absolute ``count``.

* :class:`CollectedConfig`: which source and split, how many images, how they
  are chosen (a seeded uniform random subset, or the teacher's most confident
  images per class, balanced over classes).
* :func:`collect`: loads the source split at the run's image size and channel
  count, labels images with the teacher (the source's own labels are never
  used) and selects Dc. :class:`Collected` records which images were used
  (indices into the source split) and writes ``collected.json``.
* :class:`InflatedSet`: HiDFD's data inflation, Dc repeated N times
  concatenated with a synthetic set, drawn in shuffled passes without
  replacement; resumable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .datasets import ImageSplit, ShuffledPasses, get_source, imagefolder_source
from .spec import DatasetSpec, Normalizer

SELECTIONS = ("random", "confident")
COLLECTED_FILE = "collected.json"


@dataclass
class CollectedConfig:
    """Where the collected set comes from and how it is chosen (fields of a synthesizer's ``synth`` section)."""

    source: str = ""  # a dataset name or imagefolder:<path>; "" = the run's own dataset
    source_split: str = "train"
    rho: float = 0.1  # |Dc| / |Do|, Do = the teacher's training set (spec.train_size)
    count: int = 0  # absolute |Dc|; wins over rho when > 0
    selection: str = "random"  # random (seeded uniform subset) | confident (top teacher confidence per class)
    collect_seed: Optional[int] = None  # seed of the random choices; None = the run's seed
    candidates: int = 0  # confident selection: score at most this many random source images (0: all)


# --------------------------------------------------------------------------- sizes and sources


def collected_count(rho: float, count: int, train_size: int) -> int:
    """|Dc|: ``count`` when positive, else ``round(rho * train_size)`` (at least 1)."""
    if count > 0:
        return int(count)
    if rho <= 0:
        raise ConfigError(f"the collected set needs synth.rho > 0 or synth.count > 0 (got rho={rho}, count={count})")
    if train_size <= 0:
        raise ConfigError("rho needs the size of the teacher's training set (spec.train_size), which this "
                         "dataset does not declare: give an absolute count instead (synth.count=N)")
    return max(1, int(round(rho * train_size)))


def adapt_images(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> the spec's channel count and size (grey <-> RGB, antialiased resize)."""
    c = images.shape[1]
    if c != spec.channels:
        if c == 3 and spec.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif c == 1:
            images = images.expand(-1, spec.channels, -1, -1).contiguous()
        else:
            raise ConfigError(f"cannot map {c}-channel source images to {spec.channels} channels")
    if images.shape[-1] != spec.size or images.shape[-2] != spec.size:
        from torchvision.transforms.functional import resize

        images = resize(images, [spec.size, spec.size], antialias=True)
    return images.contiguous()


def load_source(name: str, split: str, spec: DatasetSpec, data_root: Optional[str] = None) -> ImageSplit:
    """A source split at the run's channel count and image size (image folders decode at that size)."""
    if name.startswith("imagefolder:"):
        source = imagefolder_source(name.split(":", 1)[1], size=spec.size)
    else:
        source = get_source(name)
    data = source.load(split, data_root)
    return ImageSplit(adapt_images(data.images, spec), data.labels)


# --------------------------------------------------------------------------- teacher labels and selection


@torch.no_grad()
def teacher_labels(teacher: nn.Module, images: torch.Tensor, spec: DatasetSpec, device, autocast=None,
                   batch_size: int = 512) -> Tuple[torch.Tensor, torch.Tensor]:
    """(argmax class, max softmax probability) of the teacher on uint8 images, on the CPU."""
    norm = Normalizer(spec, device)
    labels, conf = [], []
    for i in range(0, images.shape[0], batch_size):
        x = norm(images[i:i + batch_size].to(device).float().div_(255.0))
        if autocast is not None:
            with autocast():
                logits = teacher(x)
        else:
            logits = teacher(x)
        p, y = F.softmax(logits.float(), dim=1).max(1)
        labels.append(y.cpu())
        conf.append(p.cpu())
    return torch.cat(labels), torch.cat(conf)


def select_random(n_total: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniform random subset of ``n`` of ``range(n_total)``, sorted."""
    return torch.randperm(n_total, generator=generator)[:n].sort()[0]


def select_confident(labels: torch.Tensor, confidence: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """The teacher's most confident images, balanced per class; positions into ``labels``, sorted.

    Each class gets ``n // K`` images (the first ``n % K`` classes one more);
    a class with too few images gives all it has and the shortfall is filled
    with the most confident remaining images of any class. Ties go to the
    lower position, so the choice is deterministic.
    """
    n = min(n, labels.numel())
    base, extra = divmod(n, num_classes)
    order = torch.argsort(-confidence.double(), stable=True)  # most confident first
    ranked_labels = labels[order]
    chosen = torch.zeros(labels.numel(), dtype=torch.bool)
    for k in range(num_classes):
        quota = base + (1 if k < extra else 0)
        positions = order[ranked_labels == k][:quota]
        chosen[positions] = True
    missing = n - int(chosen.sum())
    if missing > 0:
        rest = order[~chosen[order]][:missing]
        chosen[rest] = True
    return chosen.nonzero().squeeze(1)


# --------------------------------------------------------------------------- the collected set


@dataclass
class Collected:
    """The collected set Dc: uint8 images with teacher labels, and where they came from."""

    split: ImageSplit  # images (uint8, on the run's device) and teacher labels
    indices: torch.Tensor  # positions in the source split
    confidence: torch.Tensor  # the teacher's max softmax probability on each image
    source: str
    source_split: str
    rho: float  # effective |Dc| / |Do| (0 when |Do| is unknown)
    selection: str
    seed: int
    num_classes: int

    def __len__(self) -> int:
        return len(self.split)

    def describe(self) -> str:
        """``mnist train, 600 images (rho 0.01), teacher labels`` (the tables' real-data note)."""
        rho = f" (rho {self.rho:.3g})" if self.rho > 0 else ""
        how = ", the teacher's most confident per class" if self.selection == "confident" else ""
        return f"{self.source} {self.source_split}, {len(self):,} images{rho}, teacher labels{how}"

    def class_counts(self) -> list:
        return torch.bincount(self.split.labels.cpu(), minlength=self.num_classes).tolist()

    def record(self) -> Dict[str, Any]:
        """What ``collected.json`` holds: enough to rebuild Dc from the source."""
        return {
            "source": self.source, "split": self.source_split, "count": len(self), "rho": self.rho,
            "selection": self.selection, "seed": self.seed, "labels": "teacher",
            "class_counts": self.class_counts(),
            "indices": self.indices.tolist(),
            "teacher_labels": self.split.labels.cpu().tolist(),
        }

    def summary(self) -> Dict[str, Any]:
        """Flat keys for summary.json."""
        return {"real_images": len(self), "collected_source": f"{self.source} {self.source_split}",
                "collected_rho": self.rho, "collected_selection": self.selection, "collected_seed": self.seed,
                "collected_file": COLLECTED_FILE}

    def write(self, out_dir: str) -> str:
        from ..results import atomic_write_json

        path = os.path.join(out_dir, COLLECTED_FILE)
        atomic_write_json(path, self.record())
        return path


def collect(cfg: CollectedConfig, teacher: nn.Module, spec: DatasetSpec, device, *, dataset: str,
            run_seed: int, data_root: Optional[str] = None, autocast=None) -> Collected:
    """Build Dc as ``cfg`` says: load the source, choose images, label them with the teacher."""
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f"synth.selection must be one of {SELECTIONS}, got {cfg.selection!r}")
    name = cfg.source or dataset
    data = load_source(name, cfg.source_split, spec, data_root)
    n = collected_count(cfg.rho, cfg.count, spec.train_size)
    if n > len(data):
        raise ConfigError(f"the collected set needs {n} images but {name} {cfg.source_split} has {len(data)}: "
                          "lower synth.rho or synth.count")
    seed = run_seed if cfg.collect_seed is None else cfg.collect_seed
    g = torch.Generator().manual_seed(int(seed))
    if cfg.selection == "random":
        index = select_random(len(data), n, g)
        labels, conf = teacher_labels(teacher, data.images[index], spec, device, autocast)
    else:
        pool = torch.arange(len(data))
        if 0 < cfg.candidates < len(data):
            pool = select_random(len(data), max(cfg.candidates, n), g)
        labels, conf = teacher_labels(teacher, data.images[pool], spec, device, autocast)
        keep = select_confident(labels, conf, n, spec.num_classes)
        index, labels, conf = pool[keep], labels[keep], conf[keep]
    rho = len(index) / spec.train_size if spec.train_size > 0 else 0.0
    split = ImageSplit(data.images[index].contiguous(), labels.long()).to(device)
    return Collected(split, index, conf, name, cfg.source_split, round(rho, 6), cfg.selection, int(seed),
                     spec.num_classes)


# --------------------------------------------------------------------------- data inflation


class InflatedSet:
    """HiDFD's data inflation: Dc repeated ``repeat`` times, then a synthetic set, shuffled together.

    Items ``[0, repeat * |Dc|)`` are Dc (item i is image ``i mod |Dc|``), the
    rest are the synthetic images. :meth:`sample` walks a random permutation of
    all items (a new one after each pass), so an epoch of ``len(self)`` items
    sees every collected image exactly ``repeat`` times and every synthetic
    image once. The synthetic images and the position in the pass are part of
    :meth:`state_dict`; Dc is not (it is rebuilt from its source).
    """

    def __init__(self, real: ImageSplit, synthetic: Optional[ImageSplit] = None, repeat: int = 1):
        if repeat < 1:
            raise ConfigError("repeat must be at least 1")
        self.device = real.images.device
        self.n_real = len(real)
        self.repeat = int(repeat)
        self.n_synthetic = 0 if synthetic is None else len(synthetic)
        parts = [real] if synthetic is None else [real, synthetic.to(self.device)]
        self.images = torch.cat([p.images for p in parts])
        self.labels = torch.cat([p.labels for p in parts])
        self.order = ShuffledPasses(len(self), self.device)

    def __len__(self) -> int:
        return self.repeat * self.n_real + self.n_synthetic

    def storage_index(self, items: torch.Tensor) -> torch.Tensor:
        """Item numbers -> rows of the stored images (Dc once, then the synthetic images)."""
        n_rep = self.repeat * self.n_real
        return torch.where(items < n_rep, items % self.n_real, items - n_rep + self.n_real)

    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 images, labels, is-real mask) of the next ``n`` items of the shuffled pass."""
        items = self.order.next(n)
        rows = self.storage_index(items)
        return self.images[rows], self.labels[rows], rows < self.n_real

    def synthetic(self) -> ImageSplit:
        return ImageSplit(self.images[self.n_real:], self.labels[self.n_real:])

    def state_dict(self) -> Dict[str, Any]:
        syn = self.synthetic()
        return {"synthetic_images": syn.images.cpu(), "synthetic_labels": syn.labels.cpu(), "repeat": self.repeat,
                **self.order.state_dict()}

    def load_position(self, state: Dict[str, Any]) -> None:
        self.order.load_state_dict(state)

    @classmethod
    def from_state(cls, real: ImageSplit, state: Dict[str, Any]) -> "InflatedSet":
        syn = ImageSplit(state["synthetic_images"], state["synthetic_labels"])
        out = cls(real, syn if len(syn) else None, int(state["repeat"]))
        out.load_position(state)
        return out

