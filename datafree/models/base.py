"""The classifier interface every model in the zoo follows.

``forward_features(x)`` returns the last feature map (B, C, H, W);
``pool(f)`` turns it into the penultimate feature vector (B, C);
``head`` maps that vector to logits (a Linear for most models, LeNet's two
fully connected layers for LeNet). ``forward(x, return_features=True)``
returns ``(logits, features)``. ``stages()`` lists the modules whose outputs
end each stage (used by attention transfer). HiDFD's classifier sharing uses
``forward_features`` and ``head`` of the teacher.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn


class Classifier(nn.Module):
    head: nn.Module
    feature_dim: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1) if f.dim() == 4 else f

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        feats = self.pool(self.forward_features(x))
        logits = self.head(feats)
        return (logits, feats) if return_features else logits

    def stages(self) -> List[nn.Module]:
        return []


def init_conv_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
