"""Per-sample random augmentation of [0, 1] image batches on the device (kornia)."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


def crop_padding(size: int) -> int:
    """The usual crop padding: 4 px at 32x32 (size / 8), at least 1."""
    return max(1, size // 8)


def standard_augment(kind: str, size: int) -> nn.Module:
    """The training augmentation of a dataset spec: ``crop_flip``, ``crop`` or ``none``."""
    if kind == "none":
        return nn.Identity()
    ops = [K.RandomCrop((size, size), padding=crop_padding(size))]
    if kind == "crop_flip":
        ops.append(K.RandomHorizontalFlip())
    elif kind != "crop":
        raise ValueError(f"unknown augmentation {kind!r}: use crop_flip, crop or none")
    return nn.Sequential(*ops)


def local_view(size: int, flip: bool = True, scale=(0.25, 1.0)) -> nn.Module:
    """A random resized crop (CMI's local view)."""
    ops = [K.RandomResizedCrop((size, size), scale=scale)]
    if flip:
        ops.append(K.RandomHorizontalFlip())
    return nn.Sequential(*ops)


@torch.no_grad()
def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(255.0)
