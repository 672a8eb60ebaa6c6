"""Segmentation datasets. ``mnist_seg``: a segmentation test bed drawn from the real MNIST, for the CPU.

Each image is a 64x64 canvas holding one to three MNIST digits at random places; its target is a class per
pixel: ``d + 1`` on the object of digit ``d``, 0 for the background, and :data:`~datafree.tasks.IGNORE_INDEX`
(255, not scored) on a one-pixel ring around an object, as VOC's void border. A digit's object is its stroke
(pixels >= 128) grown by :data:`GROW` pixels (a square 7x7 dilation): a stroke is two or three pixels wide, too
thin for a segmenter at output stride 8 (an oracle that knows the targets, pooled to 8x8 cells and upsampled,
scores 16 mIoU on strokes and 82 on the grown objects). A later digit is drawn over an earlier one (the maximum
of the pixels; its object's class wins). The canvases are drawn with
numpy's PCG64 generator from a fixed seed per split (train: 10,000 canvases from MNIST's training images, seed
0; test: 2,000 from its test images, seed 1), so the same set comes out on any machine; only the MNIST files are
read (``<root>/mnist``, as the ``mnist`` dataset).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ..tasks import IGNORE_INDEX
from .datasets import ImageSplit, read_mnist, register_source
from .spec import DatasetSpec

#: canvases per split, and the seed each is drawn from
SPLITS = {"train": (10_000, 0), "test": (2_000, 1)}
CANVAS = 64
MAX_DIGITS = 3
STROKE = 128  # a pixel at or above this is its digit's stroke
GROW = 3  # an object is its stroke grown by this many pixels; a ring of one more pixel is not scored


def grow(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` (bool, (h, w)) dilated by a (2r+1)x(2r+1) square, on an array ``r`` pixels larger on each side."""
    h, w = mask.shape
    out = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
    rows = np.zeros((h + 2 * r, w), dtype=bool)
    for dy in range(2 * r + 1):
        rows[dy : dy + h] |= mask
    for dx in range(2 * r + 1):
        out[:, dx : dx + w] |= rows
    return out


def compose(
    digits: np.ndarray, labels: np.ndarray, n: int, seed: int, size: int = CANVAS, max_digits: int = MAX_DIGITS
) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` canvases (uint8, (n, size, size)) of 1..``max_digits`` of ``digits`` (uint8, (N, h, w)) each, and
    their per-pixel targets (uint8: 0 background, class + 1 on a digit's object, 255 on the ring around one)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    h, w = digits.shape[1:]
    r = GROW + 1
    images = np.zeros((n, size, size), dtype=np.uint8)
    # drawn on a canvas r pixels larger on each side, so that a grown object near the border needs no clipping
    targets = np.zeros((n, size + 2 * r, size + 2 * r), dtype=np.uint8)
    for i in range(n):
        for j in rng.integers(0, len(digits), int(rng.integers(1, max_digits + 1))):
            y0, x0 = (int(v) for v in rng.integers(0, size - h + 1, 2))
            patch = digits[j]
            img = images[i, y0 : y0 + h, x0 : x0 + w]
            np.maximum(img, patch, out=img)
            stroke = patch >= STROKE
            obj, ring = grow(stroke, GROW), grow(stroke, r)
            tgt = targets[i, y0 : y0 + h + 2 * r, x0 : x0 + w + 2 * r]
            tgt[ring & (tgt == 0)] = IGNORE_INDEX  # the ring is left out over background only
            tgt[1:-1, 1:-1][obj] = labels[j] + 1
    return images, np.ascontiguousarray(targets[:, r:-r, r:-r])


def _load_mnist_seg(root: str, split: str) -> ImageSplit:
    digits = read_mnist(root, split)  # a FileNotFoundError: not under this root
    n, seed = SPLITS[split]
    images, targets = compose(digits.images[:, 0].numpy(), digits.labels.numpy(), n, seed)
    return ImageSplit(torch.from_numpy(images)[:, None].contiguous(), torch.from_numpy(targets))


#: the training canvases' pixel mean and std (in [0, 1]), measured once from the set this module draws
MNIST_SEG_MEAN, MNIST_SEG_STD = (0.0484,), (0.1984,)

register_source(
    DatasetSpec(
        "mnist_seg",
        1,
        CANVAS,
        11,  # background + the ten digits
        MNIST_SEG_MEAN,
        MNIST_SEG_STD,
        augment="none",  # a crop or flip would have to move the target too: none
        train_size=SPLITS["train"][0],
        task="segmentation",
        ignore_index=IGNORE_INDEX,
    ),
    _load_mnist_seg,
    "the MNIST files, as the `mnist` dataset reads them (<root>/mnist/raw/train-images-idx3-ubyte[.gz], ...): "
    "the canvases are drawn from them",
)


# --------------------------------------------------------------------------- NYUv2 and CamVid, as DFAD reads them

#: the shorter side every NYUv2 / CamVid frame is resized to before cropping (DFAD dataloader.py:96, :118)
SEG_RESIZE = 256


def _resized_pair(image_path: str, target_path: str, lut: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB frame and its label map, the shorter side resized to :data:`SEG_RESIZE` (image bilinear, labels
    nearest, with PIL as DFAD's ``ExtResize`` does), the labels mapped through ``lut``."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    img = TF.resize(Image.open(image_path).convert("RGB"), SEG_RESIZE, InterpolationMode.BILINEAR)
    tgt = TF.resize(Image.open(target_path), SEG_RESIZE, InterpolationMode.NEAREST)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), lut[np.asarray(tgt, dtype=np.int64)]


def _label_lut(first: int, classes: int) -> np.ndarray:
    """A table from stored label values to classes: ``first .. first + classes - 1`` -> ``0 .. classes - 1``,
    every other value -> :data:`~datafree.tasks.IGNORE_INDEX`."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    lut[first : first + classes] = np.arange(classes)
    return lut


def _stack(pairs) -> ImageSplit:
    pairs = list(pairs)
    shapes = {p[0].shape for p in pairs}
    if len(shapes) != 1:  # one split, one frame size (NYUv2 is 480x640 throughout, CamVid 360x480)
        raise ValueError(f"frames of several sizes in one split: {sorted(shapes)}")
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))
    return ImageSplit(images, torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.uint8)))


def _load_nyuv2(root: str, split: str) -> ImageSplit:
    """NYUv2 in the layout DFAD's dataset/nyu.py reads (VainF c161591, :66-78): ``<root>/NYUv2/nyuv2-meta-data/
    splits.mat`` (``trainNdxs`` / ``testNdxs``: 1-based frame numbers), frames ``480_640/IMAGE/<n-1>.png`` and
    13-class labels ``nyuv2-meta-data/<split>_labels_13/new_nyu_class13_<n:04d>.png`` (0 unlabelled, 1..13);
    labels map 0 -> 255 and k -> k - 1 (:63, :96)."""
    import os

    base = os.path.join(root, "NYUv2")
    splits = os.path.join(base, "nyuv2-meta-data", "splits.mat")
    if not os.path.isfile(splits):
        raise FileNotFoundError(splits)
    from scipy.io import loadmat

    idxs = loadmat(splits)[f"{split}Ndxs"].reshape(-1).astype(int)
    lut = _label_lut(1, 13)
    labels = os.path.join(base, "nyuv2-meta-data", f"{split}_labels_13")
    return _stack(
        _resized_pair(
            os.path.join(base, "480_640", "IMAGE", f"{n - 1}.png"),
            os.path.join(labels, f"new_nyu_class13_{n:04d}.png"),
            lut,
        )
        for n in idxs
    )


def _load_camvid(root: str, split: str) -> ImageSplit:
    """CamVid in the SegNet tutorial's layout that DFAD's dataset/camvid.py reads (:43-47): ``<root>/CamVid/<split>/
    *.png`` and ``<root>/CamVid/<split>annot/*.png`` (sorted, paired by order), 11 classes, void (11) -> 255 (:62)."""
    import glob
    import os

    base = os.path.join(root, "CamVid")
    images = sorted(glob.glob(os.path.join(base, split, "*.png")))
    targets = sorted(glob.glob(os.path.join(base, f"{split}annot", "*.png")))
    if not images:
        raise FileNotFoundError(os.path.join(base, split))
    if len(images) != len(targets):
        raise ValueError(f"CamVid {split}: {len(images)} frames but {len(targets)} label maps under {base}")
    lut = _label_lut(0, 11)
    return _stack(_resized_pair(i, t, lut) for i, t in zip(images, targets))


_DFAD_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ExtNormalize((0.5,), (0.5,)): dataloader.py:122, :130

register_source(
    DatasetSpec(
        "nyuv2",
        3,
        128,  # the training crop and the generator's size (DFAD_nyu_deeplab.py:162); test frames are 256x341
        13,
        *_DFAD_NORM,
        augment="seg_crop_flip",
        train_size=795,
        task="segmentation",
        ignore_index=IGNORE_INDEX,
    ),
    _load_nyuv2,
    "<root>/NYUv2/nyuv2-meta-data/{splits.mat, train_labels_13/, test_labels_13/} (github.com/ankurhanda/"
    "nyuv2-meta-data, the label archives unpacked) and <root>/NYUv2/480_640/IMAGE/<n-1>.png, the 1,449 labelled "
    "frames of nyu_depth_v2_labeled.mat as 640x480 PNGs, as DFAD's dataset/nyu.py reads them",
)
register_source(
    DatasetSpec(
        "camvid",
        3,
        128,
        11,
        *_DFAD_NORM,
        augment="seg_crop_flip",
        train_size=367,
        task="segmentation",
        ignore_index=IGNORE_INDEX,
    ),
    _load_camvid,
    "<root>/CamVid/{train,trainannot,test,testannot}/*.png (the SegNet tutorial's CamVid, 11 classes, void 11), "
    "as DFAD's dataset/camvid.py reads them",
)
