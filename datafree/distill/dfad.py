"""The L1 student objective of DFAD (Fang et al., arXiv 1912.11006, 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import DISTILLERS
from ..synthesis.losses import l1_logits
from .base import Distiller


@DISTILLERS.register("l1")
class L1Logits(Distiller):
    """Mean absolute error between the student's and the teacher's logits (DFAD's student loss).

    DFAD (Fang et al. 2019) trains the student to minimise the same
    discrepancy its generator maximises: ``mean |s - t|`` over the batch and
    the classes (``F.l1_loss`` in the reference). The logits are matched
    directly, so there is no temperature and no hyper-parameter.
    """

    @dataclass
    class Config:
        pass

    def loss(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        loss = l1_logits(s, t)
        return loss, {"l1": loss.detach()}
