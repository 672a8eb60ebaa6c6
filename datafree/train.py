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
                  force: bool = False, resume: bool = True, log=print,
                  other_recipe: str = "error") -> Dict[str, Any]:
    """Train ``model`` on ``dataset`` from scratch and add it to the zoo. Returns its manifest entry.

    The recipe is the ``scratch`` method's entry for the dataset (cosine SGD,
    the dataset's standard augmentation), changed by ``overrides``. An
    existing zoo entry is reused only when its recipe fingerprint (the
    resolved scratch config, seed included) is this one; another recipe is
    an error unless ``force``. A teacher run of another recipe left in
    ``results/teachers/`` is set aside, never resumed under the new label.
    ``other_recipe="retrain"`` retrains instead of raising (the demo's own teacher).
    """
    from . import engine
    from .models import save_model
    from .results import machine
    from .zoo import read_manifest, write_manifest_entry, zoo_key, zoo_path

    from .errors import ConfigError
    from .identity import differences, matches, read_identity, run_identity, set_aside

    path = zoo_path(dataset, model, zoo)
    key = zoo_key(dataset, model)
    user = {"method": "scratch", "dataset": dataset, "student": model, "teacher": None}
    user.update(overrides or {})
    cfg = resolve(user)
    if not cfg.out:
        cfg.out = os.path.join("results", "teachers", key)
    recipe_id = run_identity(cfg, teacher_file=None)
    if os.path.isfile(path) and not force:
        entry = read_manifest(zoo).get(key, {})
        if entry.get("fingerprint") == recipe_id.fingerprint:
            log(f"teacher {path} exists (accuracy {entry.get('accuracy', '?')}); reusing it (--force retrains)")
            return entry
        from .identity import Identity

        if other_recipe == "retrain":
            log(f"teacher {path} was trained with another recipe: retraining it")
            return train_teacher(dataset, model, overrides, zoo=zoo, force=True, resume=resume, log=log)
        old = Identity(entry["fingerprint"], entry.get("recipe_fields", {})) if entry.get("fingerprint") else None
        raise ConfigError(
            f"teacher {path} exists but was trained with another recipe "
            f"({differences(old, recipe_id) if old else 'the manifest does not record its recipe fingerprint'}). "
            f"Use --force to retrain and replace it, or --zoo DIR for a zoo of its own")
    if os.path.isdir(cfg.out) and not force and not matches(cfg.out, recipe_id) and os.listdir(cfg.out):
        old_dir = set_aside(cfg.out)  # another recipe or seed: its weights must not be relabelled
        log(f"teacher run {cfg.out} was another recipe ({differences(read_identity(old_dir), recipe_id)}); "
            f"kept as {old_dir}")
    summary = engine.Engine(cfg, resume=resume and not force, overwrite=force).run()
    if summary.get("status") in ("diverged", "collapsed") or summary.get("last_acc") is None:
        from .errors import DatafreeError

        raise DatafreeError(f"training the {model} teacher on {dataset} {summary.get('status', 'failed')} "
                            f"({summary.get('diverged', {}).get('reason', 'accuracy at chance')}); nothing was "
                            f"added to the zoo. Try another recipe (e.g. a lower optim.lr); the run is in {cfg.out}")
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
        "fingerprint": recipe_id.fingerprint, "recipe_fields": recipe_id.fields,
    }
    write_manifest_entry(dataset, model, entry, zoo)
    log(f"teacher {model} on {dataset}: {summary['last_acc']:.2f}% -> {path}")
    return entry
