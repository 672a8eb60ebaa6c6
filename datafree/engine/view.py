"""What the hooks and the run record see of a run: the part of :class:`~datafree.engine.loop.Engine` they may
read (a Protocol, so that they depend on this contract, not on the loop)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol

import torch
from torch import nn

from ..config import RunConfig
from ..data import DatasetSpec
from ..results import Identity
from ..rundir import RunFolder
from ..synthesis.base import Amp, Context, Synthesizer
from ..tasks import Task
from .meter import Meter


class RunView(Protocol):
    """A run as its hooks and its record see it."""

    cfg: RunConfig
    folder: RunFolder
    identity: Identity
    metrics: List[Dict[str, Any]]
    start_epoch: int
    checkpoint: Optional[Dict[str, Any]]
    device: torch.device
    world_size: int
    spec: DatasetSpec
    task: Task
    amp: Amp
    ctx: Context
    teacher: Optional[nn.Module]
    teacher_info: Dict[str, Any]
    student: nn.Module
    synth: Synthesizer
    meter: Meter
    log: Callable[[str], None]

    @property
    def ep_steps(self) -> int: ...

    def collapsed(self) -> bool: ...
