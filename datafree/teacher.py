"""Loading a teacher: :func:`load_teacher`, the one function the CLI, the engine and users call.

A teacher is named by a checkpoint path or by a model name looked up in the zoo
(:func:`datafree.zoo.resolve_teacher`: a published file such as
``model_zoo/cifar10_resnet34.pth`` first, then our own ``cifar10_resnet34.pt``,
then, for ``timm/<name>``, timm's pretrained weights in the local cache).

Accepted files (all read with ``torch.load(weights_only=True)``):

* our checkpoints (``datafree train-teacher``): architecture, dataset and spec inside;
* the reference repositories' checkpoints, e.g. the CMI repository's
  ``{'epoch', 'arch', 'state_dict', 'best_acc1', ...}``, with or without ``module.``
  prefixes; their parameter names are mapped by :mod:`datafree.models.layouts`;
* a bare state dict (DFAD's ``cifar10-resnet34_8x.pt``, ``torch.save(model.state_dict())``),
  whose architecture comes from ``arch=`` (``teacher_arch=`` in a run config) or,
  failing that, from a registered model name in the file name.

The record says what was loaded: architecture and where that came from, class
and channel counts, the detected layout, the sha256, and whether the file is a
published one (a reference layout), trained here (with which recipe) or unknown.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .data import get_source, get_spec, iterate_eval
from .errors import CheckpointError
from .models import arch_of_checkpoint, build_from_checkpoint, create_model, read_checkpoint
from .models.layouts import read_counts, to_datafree
from .models.timm_models import TimmClassifier, pretrained_classes
from .names import ARCH_ALIASES, name_from_file
from .registry import DATASETS, MODELS, load_builtins
from .results import file_sha256
from .tasks import get_task
from .zoo import resolve_teacher, timm_pretrained_file


def arch_from_file(path: str, dataset: Optional[str] = None) -> Optional[str]:
    """A registered architecture named by the file (``cifar10_wrn40_2.pth`` -> ``wrn40_2``), or None."""
    load_builtins()
    name = name_from_file(path, dataset) or ""
    candidates = [name] + [
        name[len(d) + 1 :]
        for d in sorted(DATASETS.list(), key=len, reverse=True)
        if name.startswith((f"{d}_", f"{d}-"))
    ]
    for c in candidates:
        c = ARCH_ALIASES.get(c, c)
        if c in MODELS:
            return c
    return None


def _fits(path: str, ckpt: Dict[str, Any], spec, dataset: str, arch: Optional[str]) -> None:
    """Refuse a teacher of another dataset before building it: its name, classes, channels, size."""
    own = ckpt.get("spec") or {}
    ds = ckpt.get("dataset")
    fix = (
        f"pick a teacher trained on {dataset}, e.g. `datafree train-teacher --dataset {dataset} "
        f"--model {arch or '<model>'}`"
    )
    diffs = [
        (key, own[key], want)
        for key, want in (("num_classes", spec.num_classes), ("channels", spec.channels), ("size", spec.size))
        if key in own and own[key] != want
    ]
    other = isinstance(ds, str) and ds and ds != dataset
    if other or diffs:
        theirs = ", ".join(f"{k}={a}" for k, a, _ in diffs)
        ours = ", ".join(f"{k}={b}" for k, _, b in diffs)
        raise CheckpointError(
            f"teacher {path} was trained on {ds or 'another dataset'}"
            + (f" ({theirs})" if diffs else "")
            + f", but this run's dataset is {dataset}"
            + (f" ({ours})" if diffs else "")
            + f": {fix}"
        )
    if own or (arch or "").startswith("timm/"):
        return
    try:  # a reference file says neither: read them off it, in our names
        classes, channels = read_counts(to_datafree(arch, ckpt["state_dict"])[0])
    except Exception:  # noqa: BLE001 (names of no known layout: the strict load explains the mismatch)
        return
    if classes is not None and spec.num_classes and classes != spec.num_classes:
        raise CheckpointError(
            f"teacher {path} has {classes} classes (its classifier's rows), but {dataset} has {spec.num_classes}: {fix}"
        )
    if channels is not None and channels != spec.channels:
        raise CheckpointError(
            f"teacher {path} takes {channels}-channel images, but {dataset} has {spec.channels} channels: {fix}"
        )


def load_teacher(
    path_or_name: str,
    dataset: Optional[str] = None,
    arch: Optional[str] = None,
    model_zoo: Optional[str] = None,
    device: Any = "cpu",
    spec=None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a teacher; return ``(module in eval mode without gradients, record)``.

    ``path_or_name``: a checkpoint path, or a model name looked up in the zoo for ``dataset``.
    ``dataset``: the dataset the teacher is for; its spec sets class and channel counts and is checked against
    the file. Without it they are read off the checkpoint. ``arch``: the architecture of a file that does
    not name one (a bare state dict); it overrides the file's. ``spec``: the dataset's spec when already at hand.

    The record: ``path``, ``file``, ``sha256``, ``arch``, ``arch_from`` (argument / checkpoint / file name),
    ``layout`` (``datafree``, ``cmi``, ``dfad``, ``dafl``, ``timm``), ``kind`` (trained / published /
    pretrained / unknown), ``recipe`` (for a teacher trained here), ``num_classes``, ``channels``, ``size``,
    ``dataset`` (that the checkpoint names, if any) and ``stored_accuracy`` (what the file claims, not measured).
    """
    if not os.path.isfile(path_or_name):
        if (
            str(path_or_name).endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors"))
            or os.sep in str(path_or_name)
            and not str(path_or_name).startswith("timm/")
        ):
            raise CheckpointError(f"teacher checkpoint {path_or_name!r} does not exist")
        if dataset is None:
            raise CheckpointError(
                f"teacher {path_or_name!r} is not a file; a model name is looked up in the zoo "
                "for a dataset: pass dataset=... (--dataset)"
            )
        path = resolve_teacher(path_or_name, dataset, model_zoo)
    else:
        path = path_or_name
    if spec is None and dataset is not None:
        spec = get_spec(dataset)
    record: Dict[str, Any] = {"path": path, "file": os.path.basename(path), "sha256": file_sha256(path)}

    pretrained = timm_pretrained_file(path)
    if pretrained is not None:  # timm's own pretrained weights from its cache
        model = _timm_pretrained(pretrained, path, spec, dataset)
        record.update(
            arch=f"timm/{pretrained}",
            arch_from="timm cache",
            layout="timm",
            kind="pretrained",
            recipe=None,
            dataset=None,
            stored_accuracy=None,
        )
    else:
        ckpt = read_checkpoint(path)
        chosen, source = arch, "argument"
        if not chosen and ckpt.get("arch"):
            chosen, source = arch_of_checkpoint(ckpt), "checkpoint"
        if not chosen and str(path_or_name).startswith("timm/"):
            chosen, source = str(path_or_name), "name"
        if not chosen:
            chosen, source = arch_from_file(path, dataset), "file name"
        if not chosen:
            raise CheckpointError(
                f"checkpoint {path} does not say its architecture (a bare state dict): name it with "
                f"teacher_arch=<model> (`datafree inspect --arch`, load_teacher(..., arch=...)), e.g. "
                f"teacher_arch=resnet34; `datafree list models` lists them"
            )
        chosen = ARCH_ALIASES.get(chosen, chosen)
        if spec is not None:
            _fits(path, ckpt, spec, dataset, chosen)
        counts = (spec.num_classes, spec.channels, spec.size) if spec is not None else (None, None, None)
        model, layout = build_from_checkpoint(ckpt, path, chosen, *counts)
        datafree_file = str(ckpt.get("format", "")).startswith("datafree-model")
        recipe = ckpt.get("recipe") if isinstance(ckpt.get("recipe"), dict) else {}
        stored = ckpt.get("accuracy", ckpt.get("best_acc1"))
        if isinstance(stored, torch.Tensor) and stored.numel() == 1:
            stored = float(stored)
        own = ckpt.get("spec") or {}
        classes, channels = read_counts(model.state_dict())
        if isinstance(model, TimmClassifier):  # timm's names: its own counts
            classes, channels = model.num_classes, model.in_channels
        record.update(
            arch=chosen,
            arch_from=source,
            layout=layout,
            kind="trained" if datafree_file else ("published" if layout not in ("datafree", "timm") else "unknown"),
            recipe=(recipe.get("name") or "datafree") if datafree_file else None,
            dataset=ckpt.get("dataset") if isinstance(ckpt.get("dataset"), str) else None,
            stored_accuracy=float(stored) if isinstance(stored, (int, float)) else None,
            num_classes=classes,
            channels=channels,
            size=spec.size if spec is not None else own.get("size"),
        )
    if pretrained is not None:
        record.update(
            num_classes=model.num_classes,
            channels=spec.channels if spec is not None else 3,
            size=spec.size if spec is not None else None,
        )
    model = model.to(device).eval().requires_grad_(False)
    return model, record


def _timm_pretrained(name: str, path: str, spec, dataset: Optional[str]) -> nn.Module:
    """timm's pretrained ``name`` from its local weights file ``path`` (nothing downloaded)."""
    classes = pretrained_classes(name)
    if spec is not None and classes and classes != spec.num_classes:
        raise CheckpointError(
            f"timm's pretrained {name} has {classes} classes, but {dataset} has {spec.num_classes}: its classifier "
            f"would be new and untrained. Fine-tune it into a teacher first (datafree train-teacher --dataset "
            f"{dataset} --model timm/{name}) or use a dataset of its {classes} classes"
        )
    return create_model(
        f"timm/{name}",
        num_classes=classes or (spec.num_classes if spec else 1000),
        in_channels=spec.channels if spec is not None else 3,
        image_size=spec.size if spec is not None else 224,
        pretrained_file=path,
    )


@torch.no_grad()
def test_accuracy(
    model: nn.Module, dataset: str, data_root: Optional[str] = None, device: Any = "cpu", batch_size: int = 512
) -> float:
    """The task's score (%) of ``model`` on ``dataset``'s test split, in float32, as the engine measures it:
    top-1 accuracy for a classifier, mIoU for a segmenter."""
    source = get_source(dataset)
    spec = source.spec
    split = source.load("test", data_root).to(device)
    task = get_task(spec.task)
    scorer = task.scorer(spec.num_classes, spec.ignore_index)
    model.eval()
    for x, y in iterate_eval(split, spec, batch_size, torch.device(device)):
        scorer.update(model(x), y)
    return float(task.score(scorer.results()))
