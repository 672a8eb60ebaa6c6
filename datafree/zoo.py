"""The teacher zoo: ``model_zoo/<dataset>_<model>.pt`` and ``model_zoo/manifest.yaml``.

Weights are made by ``datafree train-teacher``; the manifest records for each
one its accuracy, sha256, recipe (and the recipe's fingerprint) and machine.
Both are local to a machine and git-ignored: teacher training is not
bit-identical across CPUs, so a tracked manifest would be rewritten by every
fresh ``make demo``. ``model_zoo/reference_manifest.yaml`` (tracked) records
the teachers behind the committed results.

A teacher is named either by its model name (looked up in the zoo for the
run's dataset) or by a path to a checkpoint. Its test accuracy is measured by
the engine, never taken from the file, and cached by (sha256, dataset) in
``model_zoo/measured.yaml``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import yaml

from .errors import CheckpointError, DatafreeError
from .registry import MODELS


def zoo_dir(explicit: Optional[str] = None) -> str:
    return os.path.abspath(explicit or os.environ.get("DATAFREE_ZOO") or "model_zoo")


def zoo_key(dataset: str, model: str) -> str:
    return f"{dataset}_{model.replace('/', '-')}"


def zoo_path(dataset: str, model: str, directory: Optional[str] = None) -> str:
    return os.path.join(zoo_dir(directory), zoo_key(dataset, model) + ".pt")


def read_manifest(directory: Optional[str] = None) -> Dict[str, Any]:
    path = os.path.join(zoo_dir(directory), "manifest.yaml")
    if not os.path.isfile(path):
        return {}
    fix = (f"fix or delete {path}: it is local to this machine, and `datafree train-teacher ... --force` "
           "writes a teacher's entry again")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise DatafreeError(f"the zoo manifest is not valid YAML ({str(e).splitlines()[0]}): {fix}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DatafreeError(f"the zoo manifest must map names to entries: {fix}")
    return data


def write_manifest_entry(dataset: str, model: str, entry: Dict[str, Any], directory: Optional[str] = None) -> None:
    from .results import atomic_write_yaml

    manifest = read_manifest(directory)
    manifest[zoo_key(dataset, model)] = entry
    atomic_write_yaml(os.path.join(zoo_dir(directory), "manifest.yaml"), dict(sorted(manifest.items())))


def resolve_teacher(teacher: str, dataset: str, directory: Optional[str] = None) -> str:
    """A checkpoint path for ``teacher``: a path as given, else the zoo's file for (dataset, name)."""
    if os.path.isfile(teacher):
        return teacher
    if teacher.endswith((".pt", ".pth", ".ckpt")) or os.sep in teacher and not teacher.startswith("timm/"):
        raise CheckpointError(f"teacher checkpoint {teacher!r} does not exist")
    if not teacher.startswith("timm/") and teacher not in MODELS:
        raise MODELS.unknown(teacher, MODELS.list() + ["timm/<name>"])
    path = zoo_path(dataset, teacher, directory)
    if not os.path.isfile(path):
        raise DatafreeError(
            f"no {teacher} teacher for {dataset} in the zoo ({path} is missing). Train one with\n"
            f"  datafree train-teacher --dataset {dataset} --model {teacher}\n"
            f"or pass a checkpoint path: teacher=/path/to/model.pt"
        )
    return path


MEASURED = "measured.yaml"


def _measured_path(directory: Optional[str] = None) -> str:
    return os.path.join(zoo_dir(directory), MEASURED)


def _cache_key(sha256: str, dataset: str, amp: str = "off") -> str:
    return f"{sha256}/{dataset}" + ("" if amp == "off" else f"/{amp}")


def measured_accuracy(sha256: str, dataset: str, directory: Optional[str] = None, amp: str = "off") -> Optional[float]:
    """The cached measured test accuracy of the teacher with this sha256 on ``dataset`` (evaluated in float32,
    or under ``amp``), or None."""
    try:
        with open(_measured_path(directory)) as f:
            cache = yaml.safe_load(f) or {}
        if not isinstance(cache, dict) or not isinstance(cache.get(_cache_key(sha256, dataset, amp), {}), dict):
            return None  # a damaged cache only means measuring again (and rewriting it)
        acc = cache.get(_cache_key(sha256, dataset, amp), {}).get("accuracy")
        return float(acc) if acc is not None else None
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def remember_accuracy(sha256: str, dataset: str, accuracy: float, path: str, directory: Optional[str] = None,
                      amp: str = "off") -> None:
    """Cache a measured teacher accuracy (best effort: a read-only zoo only means measuring again)."""
    import datetime

    from .results import atomic_write_yaml

    target = _measured_path(directory)
    try:
        cache = {}
        if os.path.isfile(target):
            with open(target) as f:
                cache = yaml.safe_load(f) or {}
        if not isinstance(cache, dict):
            cache = {}
        cache[_cache_key(sha256, dataset, amp)] = {"accuracy": round(float(accuracy), 4), "file": os.path.basename(path),
                                       "date": datetime.date.today().isoformat()}
        atomic_write_yaml(target, dict(sorted(cache.items())))
    except (OSError, yaml.YAMLError):
        pass
