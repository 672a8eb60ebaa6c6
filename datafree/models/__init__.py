"""The model zoo: classifiers, generators, feature taps, checkpoints."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from ..registry import GENERATORS, MODELS
from . import generators, lenet, mobilenetv2, resnet, vgg, wrn  # noqa: F401  (registration)
from .base import Classifier
from .features import FeatureTap, bn_layers, conv_layers  # noqa: F401
from .timm_models import TimmClassifier, timm_model

CHECKPOINT_FORMAT = "datafree-model/1"


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> Classifier:
    """Build a classifier by name: a zoo name (``resnet18``) or ``timm/<name>``."""
    if name.startswith("timm/"):
        return timm_model(name.split("/", 1)[1], num_classes, in_channels, image_size)
    if name not in MODELS:
        raise MODELS.unknown(name, MODELS.list() + ["timm/<name>"])
    return MODELS.build(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def create_generator(name: str, **kw: Any) -> nn.Module:
    return GENERATORS.build(name, **kw)


def list_models(pattern: str = "*"):
    return MODELS.list(pattern)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(path: str, model: nn.Module, arch: str, dataset: str, spec: Dict[str, Any],
               extra: Optional[Dict[str, Any]] = None) -> str:
    """Save a model checkpoint that ``torch.load(weights_only=True)`` can read. Returns sha256."""
    from ..results import atomic_torch_save

    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "dataset": dataset,
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload.update(extra or {})
    atomic_torch_save(payload, path)
    return sha256_file(path)


def read_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path!r} cannot be read with torch.load(weights_only=True) ({type(e).__name__}: {first}). "
            "Only plain state dicts (and datafree checkpoints) are accepted; re-save the model's state_dict()"
        ) from e
    if isinstance(ckpt, dict) and "state_dict" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}  # a bare state dict
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path!r} holds no state_dict")
    return ckpt


def load_state(model: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict strictly, explaining a mismatch in one readable message."""
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (checkpoint vs model), e.g. {wrong[0]}")
        if missing:
            parts.append(f"{len(missing)} keys missing, e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
        raise CheckpointError(
            f"{where} does not fit the model {type(model).__name__}: " + "; ".join(parts)
            + ". Check the architecture name and the dataset (channels, classes) the checkpoint was trained for"
        )
    model.load_state_dict(state)


def load_model(path: str, arch: Optional[str] = None, num_classes: Optional[int] = None,
               in_channels: Optional[int] = None, image_size: Optional[int] = None) -> Tuple[Classifier, Dict[str, Any]]:
    """Load a classifier checkpoint; the architecture comes from the file unless given."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, path, arch, num_classes, in_channels, image_size), ckpt


def model_from_checkpoint(ckpt: Dict[str, Any], path: str, arch: Optional[str] = None,
                          num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                          image_size: Optional[int] = None) -> Classifier:
    """The classifier of a checkpoint already read with :func:`read_checkpoint` (``path`` names it in errors)."""
    spec = ckpt.get("spec") or {}
    arch = arch or ckpt.get("arch")
    if not arch:
        raise CheckpointError(f"checkpoint {path!r} does not say its architecture: pass the model name")
    model = create_model(
        arch,
        num_classes=num_classes or spec.get("num_classes", 10),
        in_channels=in_channels or spec.get("channels", 3),
        image_size=image_size or spec.get("size", 32),
    )
    load_state(model, ckpt["state_dict"], f"checkpoint {path!r}")
    return model
