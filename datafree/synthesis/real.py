"""Real data as a synthesizer: the reference rows that train on a dataset's own images.

:class:`RealData` serves shuffled, augmented batches of a dataset's training split with their labels;
``synthesize()`` does nothing. With the ``ce`` distiller this trains a model from scratch (``datafree
train-teacher`` and the ``scratch`` reference row); with ``kd`` it is KD with the original data (``kd_real``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch

from ..data import Batches, get_source
from ..registry import SYNTHESIZERS
from .base import Synthesizer


@SYNTHESIZERS.register("real")
class RealData(Synthesizer):
    """Batches of a real dataset's training split (no synthesis).

    ``dataset`` defaults to the run's dataset; ``limit`` keeps only the first
    N images of a fixed random permutation (seeded by ``subset_seed``).
    """

    @dataclass
    class Config:
        dataset: str = ""
        augment: str = ""  # "" = the dataset's standard augmentation
        limit: int = 0
        subset_seed: int = 0

    stateful = ("batches",)
    needs_teacher = False

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        name = self.cfg.dataset or ctx.cfg.dataset
        source = get_source(name)
        split = source.load("train", ctx.cfg.data_root)
        if self.cfg.limit:
            g = torch.Generator().manual_seed(self.cfg.subset_seed)
            split = split.subset(torch.randperm(len(split), generator=g)[: self.cfg.limit])
        self.batches = Batches(split, ctx.spec, ctx.device, train=True, augment=self.cfg.augment or None)
        self.epoch_length = len(split)
        self.real_data = f"{name} train split, {len(split):,} images (labels used)"

    def synthesize(self) -> Dict[str, float]:
        return {}

    def sample(self, n: int):
        return self.batches.sample(n)

    def summary_extra(self) -> Dict[str, Any]:
        return {"real_images": self.epoch_length}
