"""Feature taps: forward hooks that exist only while a loss needs them.

>>> with FeatureTap(model.stages()) as tap:
...     model(x)
...     maps = tap.outputs        # one tensor per tapped module
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn


class FeatureTap:
    """Record the input or output of modules during forward passes.

    ``transform`` is applied to what is recorded (e.g. an instance mean), so
    only what the loss needs stays alive.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        on: str = "output",
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        if on not in ("input", "output"):
            raise ValueError("on must be 'input' or 'output'")
        self.modules = list(modules)
        self.on = on
        self.transform = transform
        self.values: List[Optional[torch.Tensor]] = [None] * len(self.modules)
        self._handles: list = []

    def _hook(self, i: int):
        def fn(module, inputs, output):
            v = inputs[0] if self.on == "input" else output
            self.values[i] = self.transform(v) if self.transform else v

        return fn

    def attach(self) -> "FeatureTap":
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        self.values = [None] * len(self.modules)

    @property
    def outputs(self) -> List[torch.Tensor]:
        return [v for v in self.values if v is not None]

    def __enter__(self) -> "FeatureTap":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
        self.clear()


def bn_layers(model: nn.Module) -> List[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def conv_layers(model: nn.Module) -> List[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]
