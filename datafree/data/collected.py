"""Collected real data (HiDFD): a small set of real images labelled by the teacher.

HiDFD (Tang et al., AAAI 2025) assumes a small collected set Dc of real images
from some source other than the teacher's training set (ImageNet for CIFAR),
labelled by the teacher. Its size is ``rho = |Dc| / |Do|`` with ``|Do|`` the
teacher's training-set size (``spec.train_size``), or an absolute ``count``.

* :class:`CollectedConfig`: which source and split, how many images, how they
  are chosen (a seeded uniform random subset, or the teacher's most confident
  images per class, balanced over classes). The source must be named: a
  registered dataset (``digits``) or ``imagefolder:<path>``, where a relative
  path is looked for in the working directory and then in the data roots
  (``imagefolder:imagenet32`` = ``<root>/imagenet32/train/<class>/<image>``).
  A source equal to the run's dataset is *in-distribution* (the teacher's own
  data); the record, the summary and the tables say which.
* :func:`collect`: opens the source split at the run's image size and channel
  count (an image folder decodes only the images it needs), labels images
  with the teacher (the source's own labels are never used) and selects Dc.
  :class:`Collected` records which images were used (indices into the source
  split) and writes ``collected.json``.
* :class:`InflatedSet`: HiDFD's data inflation, Dc repeated N times
  concatenated with a synthetic set, drawn in shuffled passes without
  replacement; resumable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DataNotFoundError
from .datasets import ImageSplit, ShuffledPasses, data_roots, decode_images, get_source
from .spec import DatasetSpec, Normalizer
from ..results import atomic_write_json

SELECTIONS = ("random", "confident")
COLLECTED_FILE = "collected.json"
FOLDER_PREFIX = "imagefolder:"
#: the words the run's real-data note (``uses_real_data``) uses; report.py marks table rows from them
IN_DISTRIBUTION = "in-distribution"
OUT_OF_DISTRIBUTION = "out-of-distribution"


@dataclass
class CollectedConfig:
    """Where the collected set comes from and how it is chosen (fields of a synthesizer's ``synth`` section)."""

    source: str = ""  # a dataset name or imagefolder:<path> (required; the run's own dataset = in-distribution)
    source_split: str = "train"
    rho: float = 0.1  # |Dc| / |Do|, Do = the teacher's training set (spec.train_size)
    count: int = 0  # absolute |Dc|; wins over rho when > 0
    selection: str = "random"  # random (seeded uniform subset) | confident (top teacher confidence per class)
    collect_seed: Optional[int] = None  # seed of the random choices; None = the run's seed
    candidates: int = 0  # confident selection: score at most this many random source images (0: all)
    # the side, in pixels of the run's image size, of the box each source image is resized into before it is
    # centred on a black canvas of the run's size (a digit source framed as MNIST frames its digits); None: the
    # source image fills the frame
    source_box: Optional[int] = None


# --------------------------------------------------------------------------- sizes and sources


def collected_count(rho: float, count: int, train_size: int) -> int:
    """|Dc|: ``count`` when positive, else ``round(rho * train_size)`` (at least 1)."""
    if count > 0:
        return int(count)
    if rho <= 0:
        raise ConfigError(f"the collected set needs synth.rho > 0 or synth.count > 0 (got rho={rho}, count={count})")
    if train_size <= 0:
        raise ConfigError(
            "rho needs the size of the teacher's training set (spec.train_size), which this "
            "dataset does not declare: give an absolute count instead (synth.count=N)"
        )
    return max(1, int(round(rho * train_size)))


def check_box(box: Optional[int], spec: DatasetSpec) -> None:
    if box is not None and not 1 <= int(box) <= spec.size:
        raise ConfigError(
            f"synth.source_box must be between 1 and the run's image size {spec.size} "
            f"(got {box}); leave it unset to let the source images fill the frame"
        )


def adapt_images(images: torch.Tensor, spec: DatasetSpec, box: Optional[int] = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> the spec's channel count and size (grey <-> RGB, antialiased resize).
    ``box``: resize to ``box`` x ``box`` instead and centre that on a black canvas of the spec's size."""
    c = images.shape[1]
    if c != spec.channels:
        if c == 3 and spec.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif c == 1:
            images = images.expand(-1, spec.channels, -1, -1).contiguous()
        else:
            raise ConfigError(f"cannot map {c}-channel source images to {spec.channels} channels")
    side = spec.size if box is None else int(box)
    if images.shape[-1] != side or images.shape[-2] != side:
        from torchvision.transforms.functional import resize

        images = resize(images, [side, side], antialias=True)
    if side != spec.size:
        before = (spec.size - side) // 2
        after = spec.size - side - before
        images = F.pad(images, (before, after, before, after))
    return images.contiguous()


def missing_source_error(dataset: str) -> ConfigError:
    return ConfigError(
        f"the collected set has no source (synth.source is empty). HiDFD and collected_kd collect real images from "
        f"a source other than the teacher's training data (the paper: ImageNet for CIFAR): name one, e.g. "
        f"synth.source=imagefolder:imagenet32 (<data root>/imagenet32/train/<class>/<image>), "
        f"synth.source=imagefolder:/path/to/folder or synth.source=digits; synth.source={dataset} uses the "
        f"teacher's own training split ({IN_DISTRIBUTION}, marked so in the tables)"
    )


def folder_candidates(path: str, data_root: Optional[str] = None) -> List[str]:
    """Where ``imagefolder:<path>`` may be: itself when absolute, else the working directory, then each data root."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return [os.path.normpath(path)]
    out = [os.path.abspath(path)] + [os.path.join(r, path) for r in data_roots(data_root)]
    return list(dict.fromkeys(os.path.normpath(p) for p in out))


def folder_split_dir(folder: str, split: str) -> Optional[str]:
    """``<folder>/train`` (``val`` or ``test`` for the test split); for train, a folder of class folders itself."""
    for name in ["train"] if split == "train" else ["val", "test"]:
        if os.path.isdir(os.path.join(folder, name)):
            return os.path.join(folder, name)
    if split == "train" and os.path.isdir(folder) and any(e.is_dir() for e in os.scandir(folder)):
        return folder
    return None


def folder_not_found(name: str, split: str, tried: List[str]) -> DataNotFoundError:
    where = ", ".join(tried)
    sub = "train" if split == "train" else "val"
    return DataNotFoundError(
        f"the collected set's image folder {name!r} ({split} split) was not found; looked for "
        f"<folder>/{sub}/<class>/<image> (or, for train, <folder>/<class>/<image>) at: {where}. "
        f"HiDFD collects its real images from another source than the teacher's data (the paper: ImageNet for "
        f"CIFAR): put ImageNet training images there in class folders (any size, decoded at the run's size; e.g. "
        f"ILSVRC2012's train/, or the 32x32 downsampled ImageNet written out as class folders), or point "
        f"synth.source=imagefolder:/path at such a folder; synth.source=<the run's dataset> uses the teacher's "
        f"own training split instead ({IN_DISTRIBUTION}, marked so in the tables)"
    )


class SourceImages:
    """A source split, indexable without decoding all of it: ``len()`` and ``take(index)`` -> uint8 images at
    the run's channel count and size. Datasets load whole (they are small); an image folder lists its files
    (sorted, as torchvision's ImageFolder does) and decodes only the images taken."""

    def __init__(
        self,
        spec: DatasetSpec,
        images: Optional[torch.Tensor] = None,
        samples: Optional[List[Tuple[str, int]]] = None,
        location: str = "",
        box: Optional[int] = None,
    ):
        self.spec, self.images, self.samples, self.box = spec, images, samples, box
        self.location = location  # the folder an image folder was found in

    def __len__(self) -> int:
        return self.images.shape[0] if self.images is not None else len(self.samples)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        if self.images is not None:
            return self.images[index]
        data = decode_images([self.samples[int(i)] for i in index], self.spec.size)
        return adapt_images(data.images, self.spec, self.box)


def open_source(
    name: str, split: str, spec: DatasetSpec, data_root: Optional[str] = None, box: Optional[int] = None
) -> SourceImages:
    """A source split at the run's channel count and image size: a dataset name or ``imagefolder:<path>``;
    ``box`` as :func:`adapt_images` takes it."""
    check_box(box, spec)
    if not name.startswith(FOLDER_PREFIX):
        data = get_source(name).load(split, data_root)
        return SourceImages(spec, images=adapt_images(data.images, spec, box), box=box)
    import torchvision

    tried = folder_candidates(name[len(FOLDER_PREFIX) :], data_root)
    for folder in tried:
        split_dir = folder_split_dir(folder, split)
        if split_dir is None:
            continue
        try:
            samples = torchvision.datasets.ImageFolder(split_dir).samples
        except FileNotFoundError as e:  # class folders without images
            raise DataNotFoundError(f"the collected set's image folder {split_dir} holds no images: {e}") from e
        return SourceImages(spec, samples=list(samples), location=split_dir, box=box)
    raise folder_not_found(name, split, tried)


def same_source(source: str, dataset: str) -> bool:
    """Whether the collected set comes from the run's own dataset (in-distribution): the same dataset name, or
    the same image folder (relative paths taken from the working directory)."""
    if source.startswith(FOLDER_PREFIX) and dataset.startswith(FOLDER_PREFIX):
        return folder_candidates(source[len(FOLDER_PREFIX) :])[0] == folder_candidates(dataset[len(FOLDER_PREFIX) :])[0]
    return source == dataset


# --------------------------------------------------------------------------- teacher labels and selection


@torch.no_grad()
def teacher_labels(
    teacher: nn.Module, images: torch.Tensor, spec: DatasetSpec, device, autocast=None, batch_size: int = 512
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(argmax class, max softmax probability) of the teacher on uint8 images, on the CPU."""
    norm = Normalizer(spec, device)
    labels, conf = [], []
    for i in range(0, images.shape[0], batch_size):
        x = norm(images[i : i + batch_size].to(device).float().div_(255.0))
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
    dataset: str = ""  # the run's dataset (the teacher's)
    location: str = ""  # where an image folder source was found
    box: Optional[int] = None  # synth.source_box: the side of the box the source images were centred in

    def __len__(self) -> int:
        return len(self.split)

    @property
    def in_distribution(self) -> bool:
        """Dc comes from the teacher's own dataset (not the paper's protocol, which collects from another source)."""
        return same_source(self.source, self.dataset)

    def distribution(self) -> str:
        if self.in_distribution:
            return f"{IN_DISTRIBUTION}: the teacher's own dataset"
        return f"{OUT_OF_DISTRIBUTION}: another source than the teacher's {self.dataset}"

    def describe(self) -> str:
        """``digits train, 600 images (rho 0.01), teacher labels; out-of-distribution: another source than the
        teacher's mnist`` (the tables' real-data note)."""
        rho = f" (rho {self.rho:.3g})" if self.rho > 0 else ""
        how = ", the teacher's most confident per class" if self.selection == "confident" else ""
        box = f" in a {self.box} px box" if self.box is not None else ""
        return (
            f"{self.source} {self.source_split}, {len(self):,} images{box}{rho}, teacher labels{how}; "
            f"{self.distribution()}"
        )

    def class_counts(self) -> list:
        return torch.bincount(self.split.labels.cpu(), minlength=self.num_classes).tolist()

    def record(self) -> Dict[str, Any]:
        """What ``collected.json`` holds: enough to rebuild Dc from the source."""
        return {
            "source": self.source,
            "split": self.source_split,
            "dataset": self.dataset,
            "in_distribution": self.in_distribution,
            **({"location": self.location} if self.location else {}),
            **({"source_box": self.box} if self.box is not None else {}),
            "count": len(self),
            "rho": self.rho,
            "selection": self.selection,
            "seed": self.seed,
            "labels": "teacher",
            "class_counts": self.class_counts(),
            "indices": self.indices.tolist(),
            "teacher_labels": self.split.labels.cpu().tolist(),
        }

    def summary(self) -> Dict[str, Any]:
        """Flat keys for summary.json."""
        return {
            "real_images": len(self),
            "collected_source": f"{self.source} {self.source_split}",
            "collected_in_distribution": self.in_distribution,
            "collected_rho": self.rho,
            "collected_selection": self.selection,
            "collected_seed": self.seed,
            "collected_file": COLLECTED_FILE,
        }

    def write(self, out_dir: str) -> str:
        path = os.path.join(out_dir, COLLECTED_FILE)
        atomic_write_json(path, self.record())
        return path


def collect(
    cfg: CollectedConfig,
    teacher: nn.Module,
    spec: DatasetSpec,
    device,
    *,
    dataset: str,
    run_seed: int,
    data_root: Optional[str] = None,
    autocast=None,
) -> Collected:
    """Build Dc as ``cfg`` says: open the source, choose images, label them with the teacher."""
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f"synth.selection must be one of {SELECTIONS}, got {cfg.selection!r}")
    name = cfg.source
    if not name:
        raise missing_source_error(dataset)
    n = collected_count(cfg.rho, cfg.count, spec.train_size)
    data = open_source(name, cfg.source_split, spec, data_root, cfg.source_box)
    if n > len(data):
        raise ConfigError(
            f"the collected set needs {n} images but {name} {cfg.source_split} has {len(data)}: "
            "lower synth.rho or synth.count"
        )
    seed = run_seed if cfg.collect_seed is None else cfg.collect_seed
    g = torch.Generator().manual_seed(int(seed))
    if cfg.selection == "random":
        index = select_random(len(data), n, g)
        images = data.take(index)
        labels, conf = teacher_labels(teacher, images, spec, device, autocast)
    else:
        pool = torch.arange(len(data))
        if 0 < cfg.candidates < len(data):
            pool = select_random(len(data), max(cfg.candidates, n), g)
        images = data.take(pool)
        labels, conf = teacher_labels(teacher, images, spec, device, autocast)
        keep = select_confident(labels, conf, n, spec.num_classes)
        index, images, labels, conf = pool[keep], images[keep], labels[keep], conf[keep]
    rho = len(index) / spec.train_size if spec.train_size > 0 else 0.0
    split = ImageSplit(images.contiguous(), labels.long()).to(device)
    return Collected(
        split,
        index,
        conf,
        name,
        cfg.source_split,
        round(rho, 6),
        cfg.selection,
        int(seed),
        spec.num_classes,
        dataset,
        data.location,
        cfg.source_box,
    )


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
        return ImageSplit(self.images[self.n_real :], self.labels[self.n_real :])

    def state_dict(self) -> Dict[str, Any]:
        syn = self.synthetic()
        return {
            "synthetic_images": syn.images.cpu(),
            "synthetic_labels": syn.labels.cpu(),
            "repeat": self.repeat,
            **self.order.state_dict(),
        }

    def load_position(self, state: Dict[str, Any]) -> None:
        self.order.load_state_dict(state)

    @classmethod
    def from_state(cls, real: ImageSplit, state: Dict[str, Any]) -> "InflatedSet":
        syn = ImageSplit(state["synthetic_images"], state["synthetic_labels"])
        out = cls(real, syn if len(syn) else None, int(state["repeat"]))
        out.load_position(state)
        return out
