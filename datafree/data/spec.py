"""What a dataset looks like to a model: channels, size, classes, normalisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

import torch


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    size: int
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: str = "crop_flip"  # crop_flip | crop | none | seg_crop_flip (data/augment.py): the training augmentation
    train_size: int = 0  # images in the training split (0: unknown until loaded)
    task: str = "classification"  # classification | segmentation (datafree/tasks.py)
    ignore_index: int = 255  # segmentation: the target of a pixel that is not scored

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def as_dict(self) -> dict:
        """The spec as checkpoints store it; a classification spec as it was before tasks (no task keys), so
        that its checkpoints stay byte for byte what they were."""
        d = asdict(self)
        if self.task == "classification":
            d.pop("task"), d.pop("ignore_index")
        return d


class Normalizer:
    """Maps [0, 1] pixels to the normalised space of a dataset and back."""

    def __init__(self, spec: DatasetSpec, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def to(self, device) -> "Normalizer":
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)

    def bounds(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of valid normalised pixels, shaped (1, C, 1, 1)."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds()
        return torch.max(torch.min(x, hi.to(x.dtype)), lo.to(x.dtype))
