"""The teacher zoo: ``model_zoo/<dataset>_<model>.pt`` and ``model_zoo/manifest.yaml``.

Weights are git-ignored and made by ``datafree train-teacher``; the manifest
(tracked) records for each one its accuracy, sha256, recipe and machine. A
teacher is named either by its model name (looked up in the zoo for the run's
dataset) or by a path to a checkpoint.
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
    with open(path) as f:
        return yaml.safe_load(f) or {}


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
        from .errors import UnknownNameError

        raise UnknownNameError("model", teacher, MODELS.list() + ["timm/<name>"])
    path = zoo_path(dataset, teacher, directory)
    if not os.path.isfile(path):
        raise DatafreeError(
            f"no {teacher} teacher for {dataset} in the zoo ({path} is missing). Train one with\n"
            f"  datafree train-teacher --dataset {dataset} --model {teacher}\n"
            f"or pass a checkpoint path: teacher=/path/to/model.pt"
        )
    return path


def teacher_record(path: str, directory: Optional[str] = None) -> Dict[str, Any]:
    """The manifest entry whose file is ``path`` (empty when it is not a zoo file)."""
    name = os.path.splitext(os.path.basename(path))[0]
    if os.path.abspath(os.path.dirname(path)) != zoo_dir(directory):
        return {}
    return read_manifest(directory).get(name, {})
