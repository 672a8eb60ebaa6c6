"""Saved synthetic sets: folders of image files, read at a run's data spec.

``datafree export`` writes a run's synthetic pool as ``<dir>/train/<class>/<index>.png`` (one PNG per
image, the class being the teacher's argmax, class folders zero-padded so that sorting them sorts the
numbers) plus ``<dir>/manifest.json``: the layout torchvision's ``ImageFolder`` and our
``imagefolder:<dir>`` source read. Two things read such a set back, both through
:func:`read_image_set`: the ``folder`` synthesizer (method ``kd_folder``, KD from the set) and
``synth.init_from`` of the pool methods (the set pre-fills the pool).

Any folder of images is accepted, as the CMI repository's ``UnlabeledImageDataset`` accepts one (it walks
the folder for png/jpg/jpeg files): an exported set, a class-folder tree, or a flat folder such as the CMI
repository's pre-inverted set. ``<dir>/train/`` is read when it exists, else ``<dir>`` itself, recursively.
An image's label is its class folder's name when that is a number (what the export writes), else -1 (none);
KD learns from the teacher's outputs either way. Images are decoded to the run's channel count (grey or RGB)
and resized to its image size when they differ (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError, DataNotFoundError
from .datasets import ImageSplit
from .spec import DatasetSpec
from .collected import adapt_images

MANIFEST = "manifest.json"
SET_FORMAT = "datafree-synthetic-set/1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
HOW_TO_MAKE = (
    "make one from a finished run of a pool method (cmi, deepinv, fast, ...) with `datafree export RUN_DIR --out DIR`"
)


def class_folder(label: int, num_classes: int) -> str:
    """The folder name of class ``label``: zero-padded to the width of the largest class (``07`` of 100)."""
    return str(int(label)).zfill(len(str(max(0, num_classes - 1))))


def set_root(path: str) -> str:
    """Where a set's images are: ``<path>/train`` (the export's and ImageFolder's layout) or ``<path>``."""
    train = os.path.join(path, "train")
    return train if os.path.isdir(train) else path


def list_images(path: str) -> List[Tuple[str, int]]:
    """``(file, label)`` of every image under :func:`set_root`, sorted by relative path (so: by class, then
    by file name). The label is the name of the top-level folder the image lies in when it is a number, else -1."""
    root = set_root(path)
    found: List[Tuple[str, str, int]] = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0] if rel != "." else ""
        label = int(top) if top.isdigit() else -1
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                relpath = os.path.normpath(os.path.join(rel, f))
                found.append((relpath, os.path.join(dirpath, f), label))
    found.sort(key=lambda t: t[0])
    return [(p, y) for _, p, y in found]


def pixel_digest(images: torch.Tensor) -> str:
    """sha256 of a uint8 (N, C, H, W) image tensor's bytes, in its order (the export writes the same digest
    over its images in file order, so a set read back intact has the digest of its manifest)."""
    return hashlib.sha256(np.ascontiguousarray(images.cpu().numpy()).tobytes()).hexdigest()


def read_manifest(path: str) -> Optional[Dict[str, Any]]:
    """The set's ``manifest.json``, or None when it has none (or an unreadable one)."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


@dataclass
class ImageSet:
    """A saved set, decoded: uint8 images at the run's spec with their folder labels (-1: none)."""

    path: str  # absolute
    split: ImageSplit
    digest: str
    manifest: Optional[Dict[str, Any]] = None
    adapted: bool = False  # decoded at another channel count or size than the files hold

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labelled(self) -> int:
        return int((self.split.labels >= 0).sum())

    def record(self, prefix: str) -> Dict[str, Any]:
        """Flat summary fields naming the set: ``<prefix>`` (path), ``_images``, ``_digest``, ``_fingerprint``
        (of the run the set was exported from, when its manifest says)."""
        m = self.manifest or {}
        return {
            prefix: self.path,
            f"{prefix}_images": len(self),
            f"{prefix}_digest": self.digest,
            f"{prefix}_fingerprint": m.get("fingerprint"),
        }

    def describe(self) -> str:
        m = self.manifest or {}
        origin = (
            f"exported from a {m.get('method')} run on {m.get('dataset')}"
            if m.get("format") == SET_FORMAT
            else "no export manifest"
        )
        return f"{len(self)} images from {self.path} ({origin}; {self.labelled} with a class folder)"


def _decode(path: str, channels: int) -> np.ndarray:
    from PIL import Image

    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ConfigError(f"image files can be read for 1- or 3-channel data only, not {channels} channels")
    with Image.open(path) as im:
        a = np.asarray(im.convert(mode))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _check_manifest(manifest: Dict[str, Any], spec: DatasetSpec, dataset: Optional[str], where: str) -> bool:
    """Warn when the set was exported for other data; True when its images have this run's shape."""
    s = manifest.get("spec") or {}
    theirs = (s.get("channels"), s.get("size"), s.get("num_classes"))
    ours = (spec.channels, spec.size, spec.num_classes)
    if None not in theirs and theirs != ours:
        warnings.warn(
            f"{where} was exported from {manifest.get('dataset')} data ({theirs[0]}x{theirs[1]}x{theirs[1]}, "
            f"{theirs[2]} classes); this run's data is {ours[0]}x{ours[1]}x{ours[1]}, {ours[2]} classes: "
            "the images are converted",
            stacklevel=4,
        )
        return False
    if dataset and manifest.get("dataset") and manifest["dataset"] != dataset:
        warnings.warn(
            f"{where} was exported from a run on {manifest['dataset']}, this run's dataset is {dataset}", stacklevel=4
        )
    return True


def read_image_set(
    path: Optional[str], spec: DatasetSpec, dataset: Optional[str] = None, what: str = "the synthetic set"
) -> ImageSet:
    """Decode the images of the folder ``path`` at ``spec``'s channels and size (see the module docstring).

    ``what`` names the option the folder came from (``synth.folder``) in errors: an unset option, a folder that
    is not there or holds no images are one-line :class:`~datafree.errors.DatafreeError` s saying how to make one.
    """
    if not path:
        raise ConfigError(
            f"{what} is not set: give the folder of a saved synthetic set ({what}=/path/to/set); " + HOW_TO_MAKE
        )
    full = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(full):
        raise DataNotFoundError(f"{what}={path}: there is no such folder; " + HOW_TO_MAKE)
    files = list_images(full)
    if not files:
        raise DataNotFoundError(f"{what}={path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); " + HOW_TO_MAKE)
    manifest = read_manifest(full)
    same_shape = manifest is not None and _check_manifest(manifest, spec, dataset, f"{what}={path}")

    size = spec.size
    images = torch.empty((len(files), spec.channels, size, size), dtype=torch.uint8)
    labels = torch.tensor([y if y < spec.num_classes else -1 for _, y in files], dtype=torch.long)
    adapted = 0
    for i, (f, _) in enumerate(files):
        try:
            a = torch.from_numpy(np.array(_decode(f, spec.channels), dtype=np.uint8, order="C"))
        except (OSError, ValueError) as e:
            raise DataNotFoundError(f"{what}={path}: {f} is not a readable image ({type(e).__name__}: {e})") from e
        if a.shape[-2:] != (size, size):
            a = adapt_images(a[None], spec)[0]
            adapted += 1
        images[i] = a
    if adapted:
        warnings.warn(f"{what}={path}: {adapted} of {len(files)} images were resized to {size}x{size}", stacklevel=2)
    digest = pixel_digest(images)
    if (
        same_shape
        and manifest.get("format") == SET_FORMAT
        and not adapted
        and manifest.get("digest")
        and manifest.get("images") == len(files)
        and manifest["digest"] != digest
    ):
        warnings.warn(
            f"{what}={path}: the images differ from the ones its manifest records (edited since the export?)",
            stacklevel=2,
        )
    return ImageSet(full, ImageSplit(images, labels), digest, manifest, adapted=bool(adapted))
