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

import datetime
import os
from typing import Any, Dict, Optional

import yaml

from .errors import CheckpointError, DatafreeError
from .models.timm_models import fetch_hint, name_of_cached, pretrained_file
from .names import ARCH_ALIASES
from .registry import MODELS
from .results import atomic_write_yaml


def zoo_dir(explicit: Optional[str] = None) -> str:
    return os.path.abspath(explicit or os.environ.get("DATAFREE_ZOO") or "model_zoo")


def where_zoo(explicit: Optional[str] = None) -> str:
    """Where the zoo was looked for and how to point elsewhere, for the messages of a missing teacher."""
    if explicit:
        return f" The zoo here is {zoo_dir(explicit)} (model_zoo= / --zoo)."
    if os.environ.get("DATAFREE_ZOO"):
        return f" The zoo here is {zoo_dir()} ($DATAFREE_ZOO)."
    return (
        f" The zoo is model_zoo/ under the current folder ({os.getcwd()}): run from the repository root, or "
        "point at one with model_zoo=DIR (--zoo DIR for train-teacher) or $DATAFREE_ZOO."
    )


def zoo_key(dataset: str, model: str) -> str:
    return f"{dataset}_{model.replace('/', '-')}"


def zoo_path(dataset: str, model: str, directory: Optional[str] = None) -> str:
    return os.path.join(zoo_dir(directory), zoo_key(dataset, model) + ".pt")


def read_manifest(directory: Optional[str] = None) -> Dict[str, Any]:
    path = os.path.join(zoo_dir(directory), "manifest.yaml")
    if not os.path.isfile(path):
        return {}
    fix = (
        f"fix or delete {path}: it is local to this machine, and `datafree train-teacher ... --force` "
        "writes a teacher's entry again"
    )
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise DatafreeError(f"the zoo manifest is not valid YAML ({str(e).splitlines()[0]}): {fix}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DatafreeError(f"the zoo manifest must map names to entries: {fix}")
    return data


def write_manifest_entry(dataset: str, model: str, entry: Dict[str, Any], directory: Optional[str] = None) -> None:
    manifest = read_manifest(directory)
    manifest[zoo_key(dataset, model)] = entry
    atomic_write_yaml(os.path.join(zoo_dir(directory), "manifest.yaml"), dict(sorted(manifest.items())))


#: the file names the reference repositories publish teachers under, tried before our own ``<key>.pt``: the CMI
#: repository's ``cifar10_resnet34.pth`` (README, "pretrained teachers"; also Fast-Datafree and ljrprocc/DataFree)
#: and DFAD's ``cifar10-resnet34_8x.pt`` (train_teacher.py: "%s-%s.pt" % (dataset, model))
PUBLISHED_NAMES = ("{key}.pth", "{dataset}-{model}_8x.pt", "{dataset}-{model}.pt")


def published_path(dataset: str, model: str, directory: Optional[str] = None) -> Optional[str]:
    """A reference repository's teacher file for (dataset, model) in the zoo, or None."""
    for pattern in PUBLISHED_NAMES:
        path = os.path.join(
            zoo_dir(directory),
            pattern.format(key=zoo_key(dataset, model), dataset=dataset, model=model.replace("/", "-")),
        )
        if os.path.isfile(path):
            return path
    return None


def resolve_teacher(teacher: str, dataset: str, directory: Optional[str] = None) -> str:
    """A checkpoint path for ``teacher``: a path as given; else, for a model name, the zoo's published file
    (:data:`PUBLISHED_NAMES`), then its own ``<dataset>_<name>.pt``; for ``timm/<name>`` without either,
    timm's pretrained weights in the local cache."""
    if os.path.isfile(teacher):
        return teacher
    if teacher.endswith((".pt", ".pth", ".ckpt")) or os.sep in teacher and not teacher.startswith("timm/"):
        raise CheckpointError(f"teacher checkpoint {teacher!r} does not exist")
    if not teacher.startswith("timm/") and teacher not in MODELS and teacher not in ARCH_ALIASES:
        raise MODELS.unknown(teacher, MODELS.list() + list(ARCH_ALIASES) + ["timm/<name>"])
    teacher = ARCH_ALIASES.get(teacher, teacher)  # DFAD's resnet34_8x is our resnet34 (and its file name says so)
    published = published_path(dataset, teacher, directory)
    if published:
        return published
    path = zoo_path(dataset, teacher, directory)
    if os.path.isfile(path):
        return path
    hint = ""
    if teacher.startswith("timm/"):
        name = teacher.split("/", 1)[1]
        try:
            cached = pretrained_file(name)
        except CheckpointError:  # timm has no pretrained weights for it: only a trained teacher will do
            cached = None
        else:
            if cached:
                return cached
            hint = f"\nor, for timm's pretrained weights: {fetch_hint(name)}"
    raise DatafreeError(
        f"no {teacher} teacher for {dataset} in the zoo ({path} is missing). Train one with\n"
        f"  datafree train-teacher --dataset {dataset} --model {teacher}\n"
        f"or pass a checkpoint path: --teacher /path/to/model.pt.{where_zoo(directory)}" + hint
    )


def timm_pretrained_file(path: str) -> Optional[str]:
    """The timm model name (with its tag) when ``path`` is timm's pretrained weights in the cache, else None."""
    return name_of_cached(path)


MEASURED = "measured.yaml"


def _measured_path(directory: Optional[str] = None) -> str:
    return os.path.join(zoo_dir(directory), MEASURED)


def _cache_key(sha256: str, dataset: str, amp: str = "off", arch: Optional[str] = None) -> str:
    # the architecture too: one bare state dict can load into two networks of the same names and shapes
    return f"{sha256}/{dataset}" + (f"/{arch}" if arch else "") + ("" if amp == "off" else f"/{amp}")


def measured_accuracy(
    sha256: str, dataset: str, directory: Optional[str] = None, amp: str = "off", arch: Optional[str] = None
) -> Optional[float]:
    """The cached measured test accuracy of the teacher with this sha256 on ``dataset`` (evaluated in float32,
    or under ``amp``), or None."""
    try:
        with open(_measured_path(directory)) as f:
            cache = yaml.safe_load(f) or {}
        key = _cache_key(sha256, dataset, amp, arch)
        if not isinstance(cache, dict) or not isinstance(cache.get(key, {}), dict):
            return None  # a damaged cache only means measuring again (and rewriting it)
        acc = cache.get(key, {}).get("accuracy")
        return float(acc) if acc is not None else None
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def remember_accuracy(
    sha256: str,
    dataset: str,
    accuracy: float,
    path: str,
    directory: Optional[str] = None,
    amp: str = "off",
    arch: Optional[str] = None,
) -> None:
    """Cache a measured teacher accuracy (best effort: a read-only zoo only means measuring again)."""
    target = _measured_path(directory)
    try:
        cache = {}
        if os.path.isfile(target):
            with open(target) as f:
                cache = yaml.safe_load(f) or {}
        if not isinstance(cache, dict):
            cache = {}
        cache[_cache_key(sha256, dataset, amp, arch)] = {
            "accuracy": round(float(accuracy), 4),
            "file": os.path.basename(path),
            "date": datetime.date.today().isoformat(),
        }
        atomic_write_yaml(target, dict(sorted(cache.items())))
    except (OSError, yaml.YAMLError):
        pass
