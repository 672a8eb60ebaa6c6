"""Building models by name: classifiers from the registry (or timm) and generators."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .. import catalog
from ..registry import GENERATORS, MODELS
from .base import Classifier
from .timm_models import timm_model


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, pretrained_file: Optional[str] = None
) -> Classifier:
    """Build a classifier by name: a zoo name (``resnet18``) or ``timm/<name>`` (with timm's pretrained weights
    read from ``pretrained_file``, a local file)."""
    if name.startswith("timm/"):
        return timm_model(name.split("/", 1)[1], num_classes, in_channels, image_size, pretrained_file=pretrained_file)
    if name not in MODELS:
        raise MODELS.unknown(name, MODELS.list() + ["timm/<name>"])
    return MODELS.build(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def create_generator(name: str, **kw: Any) -> nn.Module:
    return GENERATORS.build(name, **kw)


def list_models(pattern: str = "*", task: Optional[str] = None):
    """The registered model names matching ``pattern``; with ``task``, only the models of that task."""
    names = MODELS.list(pattern)
    return names if task is None else [n for n in names if model_task(n) == task]


#: the task a model's output serves (its builder's ``task``): one home, the catalog, which answers without torch
model_task = catalog.model_task
