"""What a teacher is called: its model name, and the label that names its runs' folders.

Pure string work (and, for a file, its sha256), so that method resolution and the run folders can name a
teacher without building it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

from .errors import CheckpointError
from .results import file_sha256

#: architecture names the reference repositories give networks that are ours under another name: DFAD's
#: ResNet*_8x (VainF/Data-Free-Adversarial-Distillation, network/resnet_8x.py: the CIFAR ResNet with a 3x3
#: stride-1 stem, four stages and a linear classifier, the CMI repository's resnet18/34/50) and its file names
#: (train_teacher.py saves "checkpoint/teacher/%s-%s.pt" % (dataset, model), e.g. cifar10-resnet34_8x.pt)
ARCH_ALIASES = {"resnet18_8x": "resnet18", "resnet34_8x": "resnet34", "resnet50_8x": "resnet50"}

#: file name endings that make a teacher a path rather than a model name
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def is_path(teacher: str) -> bool:
    """True when ``teacher`` names a file (an existing one, or one that looks like a path), not a model name."""
    teacher = str(teacher)
    if teacher.startswith("timm/") and not os.path.exists(teacher):
        return False
    return os.path.isfile(teacher) or teacher.endswith(CHECKPOINT_SUFFIXES) or os.sep in teacher


def name_from_file(teacher: Optional[str], dataset: Optional[str] = None) -> Optional[str]:
    """The model name a teacher is known by: ``resnet34`` for ``resnet34``, ``model_zoo/cifar10_resnet34.pth``
    or ``cifar10-resnet34_8x.pt`` (on cifar10); a path's file stem otherwise; ``timm/<name>`` as given."""
    if not teacher:
        return None
    teacher = str(teacher)
    if teacher.startswith("timm/") and not os.path.exists(teacher):
        return teacher
    name = os.path.splitext(os.path.basename(teacher))[0]
    if dataset:
        for sep in ("_", "-"):
            prefix = dataset.replace("/", "-") + sep
            if name.startswith(prefix):
                return name[len(prefix) :]
    return name


def label(teacher: Optional[str], dataset: Optional[str] = None) -> Optional[str]:
    """The teacher's part of a run folder's name: a model name as it is (``lenet5``, ``timm-resnet18``); for a
    file, its stem and the first 12 hex digits of its sha256 (``lenet5-3f2a9c1b0d4e``), so that two files never
    share a folder and no path becomes part of one. A file that does not exist has no label: the error says so."""
    if not teacher:
        return None
    if not is_path(teacher):
        return str(teacher).replace("/", "-")
    if not os.path.isfile(teacher):
        raise CheckpointError(f"teacher checkpoint {teacher!r} does not exist")
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", name_from_file(teacher, dataset) or "teacher")
    return f"{stem}-{file_sha256(teacher)[:12]}"


def origin(src: Optional[Dict[str, Any]]) -> str:
    """How a teacher file came to be, from a record or a run's ``teacher_source``: ``published (cmi layout)``,
    ``trained here, recipe cmi``, ``timm pretrained`` or ``unknown ...`` (the tables and the engine's log say it
    the same way)."""
    if not src:
        return "unknown"
    kind = src.get("kind")
    if kind == "published":
        return "published" + (f" ({src['layout']} layout)" if src.get("layout") else "")
    if kind == "trained":
        return f"trained here, recipe {src.get('recipe') or 'datafree'}"
    if kind == "pretrained":
        return "timm pretrained"
    if kind == "unknown":  # a bare state dict in our names says nothing of its origin; an old record says nothing
        return "unknown origin (a bare state dict)" if src.get("layout") else "unknown (the record does not say)"
    return str(kind)


def describe(record: Dict[str, Any]) -> str:
    """One line: ``published (cmi layout): cifar10_resnet34.pth (sha256 1a2b3c4d), resnet34, 10 classes``."""
    return (
        f"{origin(record)}: {record.get('file')} (sha256 {str(record.get('sha256'))[:8]}), "
        f"{record.get('arch')}, {record.get('num_classes')} classes"
    )


def source_of(record: Dict[str, Any]) -> Dict[str, Any]:
    """The ``teacher_source`` of a run record: which file produced the cell, and how it came to be."""
    return {k: record.get(k) for k in ("kind", "file", "sha256", "layout", "recipe", "arch")}
