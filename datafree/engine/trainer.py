"""The student's step: optimiser, learning-rate schedule, gradient scaler and DDP.

As in mdistiller, a :class:`~datafree.distill.base.Distiller` only computes its losses (``loss(x, y)``) and
names what it trains (``parameters()``); the :class:`Trainer` owns everything that steps: the optimiser and
its per-epoch schedule from the run's ``optim`` section, the fp16 gradient scaler, and, on several ranks, the
DDP wrapper that averages the gradients. A distiller that must act on its optimiser (ZSKT clips the
student's gradient norm before each step) does so through the declared hook
:meth:`~datafree.distill.base.Distiller.prepare_optimizer`.
"""

from __future__ import annotations

import gc
from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn

from ..config import OptimConfig
from ..distill.base import Distiller
from ..errors import UnknownNameError
from ..synthesis.base import Context


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
    raise UnknownNameError("learning-rate schedule", cfg.schedule, ["cosine", "multistep", "constant"])


class Objective(nn.Module):
    """The distiller's trainable modules with its ``loss`` as forward: what DDP wraps on several ranks (every
    parameter the loss touches is then used inside DDP's forward, whatever the student's path: heads,
    projectors, feature taps)."""

    def __init__(self, distiller: Distiller):
        super().__init__()
        self.student = distiller.student
        self.extra = nn.ModuleDict(distiller.extra_modules())
        self._loss = distiller.loss

    def forward(self, x, y=None):
        return self._loss(x, y)


class Trainer:
    """Steps the student (and a distiller's extra modules) on the distiller's loss."""

    def __init__(self, distiller: Distiller, ctx: Context):
        cfg = ctx.cfg
        self.distiller = distiller
        self.ctx = ctx
        self.optimizer = build_optimizer(distiller.parameters(), cfg.optim)
        distiller.prepare_optimizer(self.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.epochs - cfg.warmup)
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(enabled=True) if ctx.amp.mode == "fp16" else None
        )
        self.module = Objective(distiller)
        self.objective: nn.Module = self.module  # what a step calls: the module, or DDP around it
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.objective = DistributedDataParallel(
                self.module,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def step(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """One student step on a batch; the distiller's named losses (``loss`` added)."""
        self.distiller.train()
        with self.ctx.amp.autocast():
            loss, logs = self.objective(x, y)
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

    def on_epoch_end(self) -> None:
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def release_distributed(self) -> None:
        """Drop the DDP wrapper (and with it the reducer's hold on the process group) before the group is
        destroyed; otherwise the reducer is freed at interpreter exit, after gloo's threads, and the process
        can abort with "terminate called without an active exception"."""
        if self.objective is not self.module:
            self.objective = self.module
            gc.collect()
