"""Classifier-sharing feature alignment (SimKD: Chen et al., CVPR 2022), HiDFD's student objective.

A projector maps the student's last feature map to the teacher's channel
count; the only loss is the mean squared error between the projected map and
the teacher's last feature map (labels are not used). The prediction is the
teacher's own classifier on the pooled projected features, so the deployed
model is student + projector + the teacher's head (:class:`DeployedStudent`;
``student.pt`` stores all three, :func:`load_deployed` rebuilds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import DISTILLERS
from .base import Distiller
from ..errors import CheckpointError
from ..models import create_model, load_state


class Projector(nn.Sequential):
    """SimKD's bottleneck: 1x1 conv to C_t / factor, 3x3 conv, 1x1 conv to C_t; each followed by BN and ReLU."""

    def __init__(self, s_channels: int, t_channels: int, factor: int = 2):
        mid = max(1, t_channels // factor)
        super().__init__(
            nn.Conv2d(s_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_channels, 1, bias=False),
            nn.BatchNorm2d(t_channels),
            nn.ReLU(inplace=True),
        )
        self.s_channels, self.t_channels, self.factor = s_channels, t_channels, factor


def as_map(f: torch.Tensor) -> torch.Tensor:
    """Feature vectors (B, C) become 1x1 maps; maps pass through."""
    return f[:, :, None, None] if f.dim() == 2 else f


def align_spatial(fs: torch.Tensor, ft: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of the two maps to the other's size (SimKD)."""
    hs, ht = fs.shape[-2:], ft.shape[-2:]
    if hs == ht:
        return fs, ft
    if hs[0] * hs[1] > ht[0] * ht[1]:
        return F.adaptive_avg_pool2d(fs, ht), ft
    return fs, F.adaptive_avg_pool2d(ft, hs)


def pool_to(fs: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """At prediction time: the student map pooled to the teacher's map size when it is larger."""
    if size is None or fs.shape[-2] * fs.shape[-1] <= size[0] * size[1]:
        return fs
    return F.adaptive_avg_pool2d(fs, size)


class DeployedStudent(nn.Module):
    """What a user deploys: student features -> projector -> the teacher's pooling and classifier.

    ``head`` is the teacher's classifier module; ``pool`` its pooling function
    (parameter-free for zoo models: average pooling and flatten).
    """

    def __init__(
        self,
        student: nn.Module,
        projector: Projector,
        head: nn.Module,
        pool=None,
        target_size: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        self.student = student
        self.projector = projector
        self.head = head
        self.pool = pool or _average_pool
        self.target_size = tuple(target_size) if target_size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = pool_to(as_map(self.student.forward_features(x)), self.target_size)
        return self.head(self.pool(self.projector(f)))


def _average_pool(f: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)


@DISTILLERS.register("feature_align")
class FeatureAlign(Distiller):
    """SimKD-style classifier-sharing feature alignment (HiDFD's student distillation).

    Tang et al., "Hybrid Data-Free Knowledge Distillation", AAAI 2025, after
    Chen et al., "Knowledge Distillation with the Reused Teacher Classifier"
    (SimKD), CVPR 2022. Loss = ``weight * MSE(projector(f_s), f_t)`` with
    ``f_s``/``f_t`` the student's/teacher's last feature maps (``forward_features``),
    the larger one average-pooled to the other's spatial size. Predictions are
    ``teacher.head(teacher.pool(projector(f_s)))``.

    Defaults: ``factor`` 2 (the bottleneck width C_t / 2 of the HiDFD/SimKD
    code), weight 1 (the released script's ``beta``). The teacher's head is
    frozen and shared; ``student.pt`` also stores its weights and the teacher
    architecture so that :func:`load_deployed` rebuilds the deployed model.
    """

    @dataclass
    class Config:
        factor: int = 2
        weight: float = 1.0

    def setup(self) -> None:
        fs, ft = self._feature_shapes()
        self.projector = Projector(fs[0], ft[0], self.cfg.factor).to(self.ctx.device)
        if self.ctx.channels_last:
            self.projector = self.projector.to(memory_format=torch.channels_last)
        # the teacher map's size at the dataset's resolution: student maps larger than it are pooled
        self.target_size = tuple(ft[1:]) if fs[1] * fs[2] > ft[1] * ft[2] else None
        self.teacher_arch = _teacher_arch(self.ctx)

    @torch.no_grad()
    def _feature_shapes(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        x = torch.zeros(2, *self.ctx.spec.shape, device=self.ctx.device)
        was = self.student.training
        self.student.eval()  # no BN statistics are moved by the probe
        try:
            fs = as_map(self.student.forward_features(x)).shape[1:]
        finally:
            self.student.train(was)
        ft = as_map(self.teacher.forward_features(x)).shape[1:]
        return tuple(fs), tuple(ft)

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"projector": self.projector}

    def loss(self, x, y):
        with torch.no_grad():
            ft = as_map(self.teacher.forward_features(x))
        fs = as_map(self.student.forward_features(x))
        src, tgt = align_spatial(fs, ft)
        loss = F.mse_loss(self.projector(src).float(), tgt.float())
        return self.cfg.weight * loss, {"align": loss.detach()}

    def deployed(self) -> DeployedStudent:
        return DeployedStudent(self.student, self.projector, self.teacher.head, self.teacher.pool, self.target_size)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with self.ctx.amp.autocast():
            f = pool_to(as_map(self.student.forward_features(x)), self.target_size)
            return self.teacher.head(self.teacher.pool(self.projector(f))).float()

    def export_extra(self) -> Dict[str, Any]:
        """The shared classifier and what :func:`load_deployed` needs, stored in student.pt."""
        return {
            "shared_head": {k: v.detach().cpu() for k, v in self.teacher.head.state_dict().items()},
            "feature_align": {
                "teacher_arch": self.teacher_arch,
                "s_channels": self.projector.s_channels,
                "t_channels": self.projector.t_channels,
                "factor": self.projector.factor,
                "target_size": list(self.target_size) if self.target_size else None,
            },
        }


def _teacher_arch(ctx) -> Optional[str]:
    """The teacher's architecture name, as :func:`datafree.load_teacher` found it (None without a teacher)."""
    return (getattr(ctx, "teacher_record", None) or {}).get("arch")


def load_deployed(path: str, teacher_arch: Optional[str] = None, map_location: str = "cpu") -> DeployedStudent:
    """Rebuild the deployed model (student + projector + the teacher's classifier) from a run's student.pt.

    ``teacher_arch`` is needed only when the file does not name it. The
    teacher's pooling is rebuilt from its architecture; zoo models pool without
    parameters (a timm teacher whose pooling has parameters is not covered).
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    info = ckpt.get("feature_align")
    if info is None:
        raise CheckpointError(f"{path} was not trained with the feature_align distiller")
    spec = ckpt["spec"]
    arch_t = teacher_arch or info.get("teacher_arch")
    if not arch_t:
        raise CheckpointError(f"{path} does not name the teacher's architecture: pass teacher_arch")
    build = dict(num_classes=spec["num_classes"], in_channels=spec["channels"], image_size=spec["size"])
    student = create_model(ckpt["arch"], **build)
    load_state(student, ckpt["state_dict"], f"the student in {path}")
    projector = Projector(info["s_channels"], info["t_channels"], info["factor"])
    projector.load_state_dict(ckpt["extra_modules"]["projector"])
    teacher = create_model(arch_t, **build)  # only its head (loaded below) and its pooling are used
    teacher.head.load_state_dict(ckpt["shared_head"])
    return DeployedStudent(student, projector, teacher.head, teacher.pool, info.get("target_size")).eval()
