"""Supervised training on real data: teachers, scratch students, KD with real data.

Real data enters the one engine loop as a synthesizer, :class:`RealData`,
that serves shuffled, augmented batches of a dataset's training split with
their labels; ``synthesize()`` does nothing. With the ``ce`` distiller this
trains a model from scratch (``datafree train-teacher`` and the ``scratch``
reference row); with ``kd`` it is KD with the original data (``kd_real``).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from .config import resolve
from .data import Batches, get_source
from .registry import SYNTHESIZERS
from .synthesis.base import Synthesizer


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


def train_teacher(dataset: str, model: str, overrides: Optional[Dict[str, Any]] = None, zoo: Optional[str] = None,
                  force: bool = False, resume: bool = True, log=print) -> Dict[str, Any]:
    """Train ``model`` on ``dataset`` from scratch and add it to the zoo. Returns its manifest entry.

    The recipe is the ``scratch`` method's entry for the dataset (cosine SGD,
    the dataset's standard augmentation), changed by ``overrides``. An
    existing zoo entry is reused unless ``force``.
    """
    from . import engine
    from .models import save_model
    from .results import machine
    from .zoo import read_manifest, write_manifest_entry, zoo_key, zoo_path

    path = zoo_path(dataset, model, zoo)
    key = zoo_key(dataset, model)
    if os.path.isfile(path) and not force:
        entry = read_manifest(zoo).get(key, {})
        log(f"teacher {path} exists (accuracy {entry.get('accuracy', '?')}); reusing it (--force retrains)")
        return entry
    user = {"method": "scratch", "dataset": dataset, "student": model, "teacher": None}
    user.update(overrides or {})
    cfg = resolve(user)
    if not cfg.out:
        cfg.out = os.path.join("results", "teachers", key)
    summary = engine.Engine(cfg, resume=resume and not force, overwrite=force).run()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ckpt = torch.load(os.path.join(cfg.out, "student.pt"), map_location="cpu", weights_only=True)
    from .models import create_model, load_state

    spec = get_source(dataset).spec
    net = create_model(model, spec.num_classes, spec.channels, spec.size)
    load_state(net, ckpt["state_dict"], "the trained teacher")
    recipe = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "optimizer": cfg.optim.name, "lr": cfg.optim.lr,
              "momentum": cfg.optim.momentum, "weight_decay": cfg.optim.weight_decay,
              "schedule": cfg.optim.schedule, "augment": spec.augment, "seed": cfg.seed}
    sha = save_model(path, net, model, dataset, spec.as_dict(), extra={"accuracy": summary["last_acc"], "recipe": recipe})
    entry = {
        "dataset": dataset, "arch": model, "file": os.path.basename(path), "accuracy": round(summary["last_acc"], 2),
        "best_accuracy": round(summary["best_acc"], 2), "sha256": sha, "recipe": recipe,
        "seconds": round(summary["total_seconds"], 1), "machine": machine(),
        "date": datetime.date.today().isoformat(), "run_dir": os.path.relpath(cfg.out),
    }
    write_manifest_entry(dataset, model, entry, zoo)
    log(f"teacher {model} on {dataset}: {summary['last_acc']:.2f}% -> {path}")
    return entry
