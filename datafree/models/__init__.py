"""The model zoo: classifiers, generators, feature taps, checkpoints."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, first_line
from ..results import atomic_torch_save, file_sha256
from . import deeplab, generators, layouts, lenet, mobilenetv2, resnet, vgg, wrn  # noqa: F401  (registration)
from .base import Classifier  # noqa: F401
from .factory import create_generator, create_model, list_models, model_task  # noqa: F401  (the package API)
from .features import FeatureTap, bn_layers, conv_layers  # noqa: F401
from .timm_models import TimmClassifier, counts_of, legacy_state

CHECKPOINT_FORMAT = "datafree-model/2"  # /2: mobilenetv2 is the reference network (RENAMED)


def save_model(
    path: str, model: nn.Module, arch: str, dataset: str, spec: Dict[str, Any], extra: Optional[Dict[str, Any]] = None
) -> str:
    """Save a model checkpoint that ``torch.load(weights_only=True)`` can read. Returns sha256."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "dataset": dataset,
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload.update(extra or {})
    atomic_torch_save(payload, path)
    return file_sha256(path)


def read_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(unreadable(path, e)) from e
    if isinstance(ckpt, dict) and "state_dict" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}  # a bare state dict
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path!r} holds no state_dict")
    return ckpt


#: how the files torch.save writes begin: a zip archive (torch >= 1.6) or a pickle (the legacy format)
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def unreadable(path: str, e: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``e``, and the fix: a file cut short or damaged, a
    whole pickled model (which weights_only refuses), or a file that is no torch checkpoint at all."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    why = f"{type(e).__name__}: {first_line(e)}"
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        return (
            f"{path!r} is not a torch checkpoint: it does not begin as torch.save's files do ({size:,} bytes, first "
            f"bytes {head[:8]!r}). Give a file saved by torch.save: a state dict, or a checkpoint dict holding one"
        )
    if "Weights only load failed" in str(e):
        return (
            f"checkpoint {path!r} cannot be read with torch.load(weights_only=True): it holds more than tensors. "
            "Only state dicts (bare or in a checkpoint dict, as ours and the CMI repository's) are accepted; a "
            "whole pickled model (DAFL's teacher-train.py saves torch.save(net, ...)) must be re-saved as its "
            "state_dict(), where you trust the file: "
            "torch.save(torch.load(path, weights_only=False).state_dict(), 'teacher.pt')"
        )
    return (
        f"checkpoint {path!r} is a torch file that cannot be read to its end ({size:,} bytes; {why}): it is "
        "truncated or damaged. Copy or download it again (compare its size or sha256 with the source), or "
        "train it again with datafree train-teacher"
    )


def load_state(
    model: nn.Module, state: Dict[str, torch.Tensor], where: str, arch: Optional[str] = None, image_size: int = 32
) -> str:
    """Load a state dict strictly into ``model`` and return the layout it came in (``datafree``, ``cmi``, ``dafl``).

    ``state`` may be ours or a reference repository's (see :mod:`datafree.models.layouts`), with or without the
    ``{'state_dict': ...}`` wrapper and ``module.`` prefixes. ``arch`` is the model's name (it picks the rename
    rules); without it, any known layout whose names map exactly onto the model's is taken. A state that does
    not fit raises :class:`CheckpointError` with one line naming the likely cause (another naming scheme,
    architecture, class or channel count) and the fix; ``where`` names the checkpoint in it, ``image_size`` is
    the size the model was built for (used to recognise another architecture).
    """
    own = model.state_dict()
    raw = layouts.unwrap(state)
    if isinstance(model, TimmClassifier):  # timm's own names; or the prefixed ones datafree-model/1 wrote
        raw = legacy_state(raw)
        if set(raw) == set(own) and all(tuple(raw[k].shape) == tuple(v.shape) for k, v in own.items()):
            model.load_state_dict(raw)
            return "timm"
    renamed, layout = layouts.to_datafree(arch, raw, expected=list(own))
    renamed = layouts.fill_untracked_counts(own, renamed)
    if set(renamed) != set(own) or any(
        not isinstance(renamed[k], torch.Tensor) or tuple(renamed[k].shape) != tuple(v.shape) for k, v in own.items()
    ):
        raise CheckpointError(layouts.explain(where, model, arch, raw, layout, image_size))
    model.load_state_dict(renamed)
    return layout


def load_model(
    path: str,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    image_size: Optional[int] = None,
) -> Tuple[Classifier, Dict[str, Any]]:
    """Load a classifier checkpoint; the architecture comes from the file unless given. (Teachers:
    :func:`datafree.load_teacher`, which also checks the file against a dataset and says what it loaded.)"""
    ckpt = read_checkpoint(path)
    return build_from_checkpoint(ckpt, path, arch, num_classes, in_channels, image_size)[0], ckpt


#: architectures whose name meant another network in an earlier checkpoint format: ``mobilenetv2`` was the
#: CIFAR-stride network until datafree-model/2, when the name went to the reference repositories' network
RENAMED = {"datafree-model/1": {"mobilenetv2": "mobilenetv2_cifar"}}


def arch_of_checkpoint(ckpt: Dict[str, Any]) -> Optional[str]:
    """The architecture a checkpoint names (its ``arch``, under today's name: :data:`RENAMED`), or None."""
    arch = ckpt.get("arch")
    if not arch:
        return None
    return RENAMED.get(str(ckpt.get("format")), {}).get(str(arch), str(arch))


def build_from_checkpoint(
    ckpt: Dict[str, Any],
    path: str,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    image_size: Optional[int] = None,
) -> Tuple[Classifier, str]:
    """The classifier of a checkpoint already read with :func:`read_checkpoint` (``path`` names it in errors),
    and the layout its names came in. ``arch`` overrides the file's; counts default to the file's spec, else to
    what its classifier rows and first convolution say."""
    spec = ckpt.get("spec") or {}
    arch = arch or arch_of_checkpoint(ckpt)
    if not arch:
        raise CheckpointError(f"checkpoint {path!r} does not say its architecture: pass the model name")
    # a reference checkpoint records no spec: its classifier's rows and first convolution's inputs tell
    classes, channels = None, None
    given = num_classes is not None and in_channels is not None  # a caller with a dataset's spec: no reading
    if not spec and not given and str(arch).startswith("timm/"):
        classes, channels = counts_of(arch.split("/", 1)[1], legacy_state(layouts.unwrap(ckpt["state_dict"])))
    elif not spec and not given:
        classes, channels = layouts.read_counts(layouts.to_datafree(arch, ckpt["state_dict"])[0])
    size = image_size or spec.get("size", 32)
    model = create_model(
        arch,
        num_classes=num_classes or spec.get("num_classes", classes or 10),
        in_channels=in_channels or spec.get("channels", channels or 3),
        image_size=size,
    )
    layout = load_state(model, ckpt["state_dict"], f"checkpoint {path!r}", arch=arch, image_size=size)
    return model, layout
