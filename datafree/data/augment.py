"""Per-sample random augmentation of [0, 1] image batches on the device (kornia)."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


def crop_padding(size: int) -> int:
    """The usual crop padding: 4 px at 32x32 (size / 8), at least 1."""
    return max(1, size // 8)


def standard_augment(kind: str, size: int) -> nn.Module:
    """The training augmentation of images alone: ``crop_flip``, ``crop`` or ``none``. ``seg_crop_flip`` (a
    segmentation set's: :func:`paired_crop_flip` on real frames and their maps) is ``crop_flip`` on images that
    have no map (a synthetic pool, whose targets the teacher gives on the view itself)."""
    if kind == "none":
        return nn.Identity()
    ops = [K.RandomCrop((size, size), padding=crop_padding(size))]
    if kind in ("crop_flip", "seg_crop_flip"):
        ops.append(K.RandomHorizontalFlip())
    elif kind != "crop":
        raise ValueError(f"unknown augmentation {kind!r}: use crop_flip, crop, seg_crop_flip or none")
    return nn.Sequential(*ops)


def paired_crop_flip(x: torch.Tensor, y: torch.Tensor, size: int, flip: bool = True):
    """Real segmentation frames ``x`` (N, C, H, W) and their class maps ``y`` (N, H, W): the same random
    ``size`` x ``size`` window of each frame and its map, then the same horizontal flip half the time (DFAD's
    ``ExtRandomCrop`` and ``ExtRandomHorizontalFlip``, dataloader.py:119-120). Frames smaller than ``size``
    are an error: the loaders store them resized to a shorter side of 256."""
    n, _, h, w = x.shape
    if h < size or w < size:
        raise ValueError(f"frames of {h}x{w} are smaller than the {size}x{size} crop")
    top = torch.randint(0, h - size + 1, (n,)).tolist()
    left = torch.randint(0, w - size + 1, (n,)).tolist()
    flips = (torch.rand(n) < 0.5).tolist() if flip else [False] * n
    xs, ys = [], []
    for i in range(n):
        xi = x[i, :, top[i] : top[i] + size, left[i] : left[i] + size]
        yi = y[i, top[i] : top[i] + size, left[i] : left[i] + size]
        if flips[i]:
            xi, yi = xi.flip(-1), yi.flip(-1)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def local_view(size: int, flip: bool = True, scale=(0.25, 1.0)) -> nn.Module:
    """A random resized crop (CMI's local view)."""
    ops = [K.RandomResizedCrop((size, size), scale=scale)]
    if flip:
        ops.append(K.RandomHorizontalFlip())
    return nn.Sequential(*ops)


@torch.no_grad()
def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(255.0)
