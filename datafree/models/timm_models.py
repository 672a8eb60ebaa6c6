"""Any timm model as ``timm/<name>``, adapted to the classifier interface.

The model is created without pretrained weights (nothing is downloaded) with
the dataset's channel and class counts; ``forward_features`` and
``forward_head(pre_logits=True)`` give the feature map and vector.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnknownNameError
from .base import Classifier


class TimmClassifier(Classifier):
    def __init__(self, name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UnknownNameError("timm model", name, timm.list_models())
        kw = {}
        try:
            import inspect

            entry = timm.models.get_model_entrypoint(name)
            if "img_size" in inspect.signature(entry).parameters:
                kw["img_size"] = image_size
        except Exception:
            pass
        self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)
        self.feature_dim = self.model.num_features
        self.head = _TimmHead(self.model)

    def forward_features(self, x):
        return self.model.forward_features(x)

    def pool(self, f):
        return self.model.forward_head(f, pre_logits=True)


class _TimmHead(nn.Module):
    """The classifier of a timm model applied to pre-logit features."""

    def __init__(self, model):
        super().__init__()
        self.fc = model.get_classifier()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


def timm_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> TimmClassifier:
    return TimmClassifier(name, num_classes, in_channels, image_size)
