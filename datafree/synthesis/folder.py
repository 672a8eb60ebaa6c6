"""KD from a saved set of images: the ``folder`` synthesizer (method ``kd_folder``).

The student learns from a fixed folder of images, each labelled by the teacher's soft outputs (the KD
distiller at temperature T; the folder's class names are not used), as the CMI repository's
``vanilla_kd.py --transfer_set <folder>`` does: it reads every png/jpg image under the folder and trains
on shuffled batches with the dataset's training augmentation. Its README runs it on the pre-inverted
CIFAR-10 set of a non-adversarial CMI run ("non-adversarial CMI", about 87.38% for wrn40_2 -> wrn16_1).
Make such a folder from any finished run of a pool method with ``datafree export RUN_DIR --out DIR``.

The set is decoded once into memory at the run's spec (:func:`~datafree.data.image_set.read_image_set`)
and drawn in shuffled passes without replacement on the run's device; ``synthesize()`` does nothing, and
with ``ep_steps: null`` an epoch is one pass over the set (rounded up to whole batches: the last batch of
a pass is completed from the next pass, where the reference's DataLoader keeps a smaller last batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from ..data import Batches
from ..data.image_set import read_image_set
from ..registry import SYNTHESIZERS
from .base import Synthesizer


@SYNTHESIZERS.register("folder")
class FolderSet(Synthesizer):
    """A saved image set (``synth.folder``) served to the student with the dataset's augmentation."""

    @dataclass
    class Config:
        folder: Optional[str] = None  # the set's folder (``datafree export`` writes one)
        augment: str = ""  # "" = the dataset's standard augmentation (crop_flip | crop | none)

    stateful = ("batches",)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        self.images = read_image_set(self.cfg.folder, ctx.spec, dataset=ctx.cfg.dataset, what="synth.folder")
        self.batches = Batches(self.images.split, ctx.spec, ctx.device, train=True, augment=self.cfg.augment or None)
        self.epoch_length = len(self.images)

    def synthesize(self) -> Dict[str, float]:
        return {}

    def sample(self, n: int) -> torch.Tensor:
        x, _ = self.batches.sample(n)  # labels of the folder are not used: the teacher labels every batch
        return x

    @torch.no_grad()
    def preview(self, n: int) -> torch.Tensor:
        return self.normalizer(self.batches.split.images[:n].float().div_(255.0))

    def summary_extra(self) -> Dict[str, Any]:
        return self.images.record("transfer_set")
