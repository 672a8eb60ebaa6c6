"""The student side of the core contract: :class:`Distiller`.

A distiller computes the student's objective on one batch, :meth:`Distiller.loss` (teacher in eval mode, no
gradient), names what it trains (:meth:`Distiller.parameters`: the student and any extra modules) and what
evaluation calls (:meth:`Distiller.predict`). It does not step: the engine's
:class:`~datafree.engine.trainer.Trainer` owns the optimiser, its schedule, the gradient scaler and DDP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config import build_dataclass
from ..registry import DISTILLERS, config_class
from ..synthesis.base import Context
from ..synthesis.losses import kl_div
from ..tasks import ignore_index_of


class Distiller:
    """Base class of student objectives.

    Subclasses set ``Config`` (the ``distill`` section of a run config) and implement :meth:`loss`. Extra
    trainable modules (HiDFD's projector) are returned by :meth:`extra_modules` and are optimised, saved and
    resumed with the student. Every method the engine calls is declared here: :meth:`loss`, :meth:`predict`,
    :meth:`parameters`, :meth:`train` / :meth:`eval`, :meth:`prepare_optimizer`, :meth:`health_checks`,
    :meth:`on_epoch_end`, :meth:`extra_modules`, :meth:`export_extra` and the state methods.
    """

    @dataclass
    class Config:
        pass

    needs_teacher: bool = True

    def __init__(self, ctx: Context, **params: Any):
        self.ctx = ctx
        # a Config missing @dataclass is named here, not reported as an "unknown key" of the distill section
        config = config_class(type(self), "distiller")
        self.cfg = build_dataclass(config, params, f"distill ({type(self).__name__})")
        if self.needs_teacher and ctx.teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")
        self.setup()

    def setup(self) -> None:
        """Create extra modules before the optimiser is built."""

    @property
    def student(self) -> nn.Module:
        return self.ctx.student

    @property
    def teacher(self) -> nn.Module:
        return self.ctx.teacher

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {}

    def export_extra(self) -> Dict[str, Any]:
        """More entries for student.pt, beyond the student and ``extra_modules`` (HiDFD: the shared head)."""
        return {}

    def parameters(self) -> List[nn.Parameter]:
        params = list(self.student.parameters())
        for m in self.extra_modules().values():
            params += list(m.parameters())
        return params

    def train(self) -> None:
        self.student.train()
        for m in self.extra_modules().values():
            m.train()

    def eval(self) -> None:
        self.student.eval()
        for m in self.extra_modules().values():
            m.eval()

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.ctx.amp.autocast():
            return self.teacher(x).float()

    def loss(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        raise NotImplementedError

    def health_checks(self) -> Dict[str, torch.Tensor]:
        """Divergence checks this distiller declares, called after every student step; the contract is
        :meth:`datafree.synthesis.base.Synthesizer.health_checks`'s (0-d bool tensors, True = broken, no host sync)."""
        return {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with self.ctx.amp.autocast():
            return self.student(x).float()

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once with the optimiser the trainer built over :meth:`parameters`, before the first step: a
        distiller that acts on the student's step registers it here (ZSKT's gradient clipping, as an
        optimiser step pre-hook, which runs after a GradScaler has unscaled the gradients)."""

    def on_epoch_end(self) -> None:
        """Called after every training epoch (after the learning-rate schedule steps)."""

    def state_dict(self) -> Dict[str, Any]:
        return {"extra_modules": {k: m.state_dict() for k, m in self.extra_modules().items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, m in self.extra_modules().items():
            m.load_state_dict(state["extra_modules"][k])

    def hparams(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.cfg)


@DISTILLERS.register("kd")
class KD(Distiller):
    """Knowledge distillation (Hinton et al. 2015): KL(teacher || student) at temperature T, times T^2.

    The temperature used is exactly ``distill.T`` (the reference code of
    several methods silently trained at T=1 whatever its flag said). With real
    labelled data, ``ce`` adds that weight times the cross-entropy on labels.
    """

    @dataclass
    class Config:
        T: float = 1.0
        ce: float = 0.0

    def loss(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        loss = kl_div(s, t, T=self.cfg.T)
        logs = {"kd": loss.detach()}
        if self.cfg.ce > 0:
            if y is None:
                raise ValueError("distill.ce > 0 needs labelled batches; data-free batches have no labels")
            ce = nn.functional.cross_entropy(s.float(), y, ignore_index=ignore_index_of(self.ctx.spec))
            loss = loss + self.cfg.ce * ce
            logs["ce"] = ce.detach()
        return loss, logs


@DISTILLERS.register("ce")
class CrossEntropy(Distiller):
    """Supervised cross-entropy on real labels: training from scratch (no teacher).

    ``focal_gamma`` > 0 gives the focal loss of DFAD's segmentation teachers (train_teacher_seg.py:29 with
    utils/utils.py:55-63 ``focal_loss``, gamma 2): ``(1 - p_t)^gamma`` times the per-pixel cross-entropy, the mean
    over every pixel, ignored pixels counted as zeros in it (the reference's ``reduction='none'`` then ``.mean()``).
    """

    needs_teacher = False

    @dataclass
    class Config:
        label_smoothing: float = 0.0
        focal_gamma: Optional[float] = None  # None (off) keeps records made before it the runs they were

    def loss(self, x, y):
        if y is None:
            raise ValueError("the ce distiller needs labelled batches (a real-data synthesizer)")
        s = self.student(x)
        ignore = ignore_index_of(self.ctx.spec)
        if self.cfg.focal_gamma:
            ce = nn.functional.cross_entropy(s.float(), y, reduction="none", ignore_index=ignore)
            loss = ((1.0 - torch.exp(-ce)) ** self.cfg.focal_gamma * ce).mean()
            return loss, {"focal": loss.detach()}
        loss = nn.functional.cross_entropy(s.float(), y, label_smoothing=self.cfg.label_smoothing, ignore_index=ignore)
        return loss, {"ce": loss.detach()}
