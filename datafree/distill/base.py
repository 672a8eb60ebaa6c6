"""The student side of the core contract: :class:`Distiller`.

A distiller owns the student's optimiser and learning-rate schedule.
:meth:`Distiller.step` computes the objective on one batch (teacher in eval
mode, no gradient), steps the optimiser and returns named losses;
:meth:`Distiller.predict` is what evaluation calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..config import OptimConfig, build_dataclass
from ..registry import DISTILLERS, config_class
from ..synthesis.base import Context
from ..synthesis.losses import kl_div


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    from ..errors import UnknownNameError

    raise UnknownNameError("optimizer", cfg.name, ["sgd", "adam", "adamw"])


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int):
    """A per-epoch schedule over ``epochs`` scheduler steps."""
    epochs = max(1, epochs)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.lr_min)
    if cfg.schedule == "multistep":
        ms = sorted(int(round(m * epochs)) if m < 1 else int(m) for m in cfg.milestones)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=ms, gamma=cfg.gamma)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _e: 1.0)
    from ..errors import UnknownNameError

    raise UnknownNameError("learning-rate schedule", cfg.schedule, ["cosine", "multistep", "constant"])


class Distiller:
    """Base class of student objectives.

    Subclasses set ``Config`` (the ``distill`` section of a run config) and
    implement :meth:`loss`. Extra trainable modules (HiDFD's projector) are
    returned by :meth:`extra_modules` and are optimised, saved and resumed with
    the student.
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
        self.optimizer = build_optimizer(self.parameters(), ctx.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, ctx.cfg.optim, ctx.cfg.epochs - ctx.cfg.warmup)
        self.scaler = torch.amp.GradScaler(enabled=ctx.amp.mode == "fp16") if ctx.amp.mode == "fp16" else None
        self._objective = _Objective(self)
        if ctx.world_size > 1:
            # every parameter the objective touches is used inside DDP's forward, so gradients are
            # averaged across ranks whatever the student's forward path (heads, projectors, taps)
            from torch.nn.parallel import DistributedDataParallel

            self._objective = DistributedDataParallel(
                self._objective,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def release_distributed(self) -> None:
        """Drop the DDP wrapper (and with it the reducer's hold on the process group) before the group is
        destroyed; otherwise the reducer is freed at interpreter exit, after gloo's threads, and the process
        can abort with "terminate called without an active exception"."""
        module = getattr(self._objective, "module", None)
        if module is not None:
            self._objective = module
            import gc

            gc.collect()

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

    def step(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        self.train()
        with self.ctx.amp.autocast():
            loss, logs = self._objective(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        logs.setdefault("loss", loss.detach())
        return logs

    def health_checks(self) -> Dict[str, torch.Tensor]:
        """Divergence checks this distiller declares, called after every student step; the contract is
        :meth:`datafree.synthesis.base.Synthesizer.health_checks`'s (0-d bool tensors, True = broken, no host sync)."""
        return {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with self.ctx.amp.autocast():
            return self.student(x).float()

    def on_epoch_end(self) -> None:
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.extra_modules().items()},
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, m in self.extra_modules().items():
            m.load_state_dict(state["extra_modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def hparams(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.cfg)


class _Objective(nn.Module):
    """The distiller's trainable modules with ``loss`` as forward: what DDP wraps on several ranks."""

    def __init__(self, distiller: "Distiller"):
        super().__init__()
        self.student = distiller.student
        self.extra = nn.ModuleDict(distiller.extra_modules())
        self._loss = distiller.loss

    def forward(self, x, y=None):
        return self._loss(x, y)


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
            ce = nn.functional.cross_entropy(s.float(), y)
            loss = loss + self.cfg.ce * ce
            logs["ce"] = ce.detach()
        return loss, logs


@DISTILLERS.register("ce")
class CrossEntropy(Distiller):
    """Supervised cross-entropy on real labels: training from scratch (no teacher)."""

    needs_teacher = False

    @dataclass
    class Config:
        label_smoothing: float = 0.0

    def loss(self, x, y):
        if y is None:
            raise ValueError("the ce distiller needs labelled batches (a real-data synthesizer)")
        s = self.student(x)
        loss = nn.functional.cross_entropy(s.float(), y, label_smoothing=self.cfg.label_smoothing)
        return loss, {"ce": loss.detach()}
