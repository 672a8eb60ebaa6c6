"""Building a run from its resolved config: the checks that need this machine, then the parts.

:func:`check_run` is the validation a config cannot do alone (a dataset, a model, a logger and their
packages must exist here); the CLI, the benchmark runner and the engine call it before any file is written.
:func:`build_parts` makes what a run is made of, in the order that fixes its random numbers: the teacher,
the student, the shared :class:`~datafree.synthesis.base.Context`, the synthesizer, the distiller and the
:class:`~datafree.engine.trainer.Trainer` that steps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..config import RunConfig
from ..data import DatasetSpec
from ..distill.base import Distiller
from ..errors import ConfigError, DatafreeError, first_line
from ..methods import check_names
from ..models import create_model
from ..registry import DISTILLERS, SYNTHESIZERS
from ..runtime import precision_name, tune_cpu_malloc, use_channels_last
from ..synthesis.base import Amp, Context, Synthesizer
from ..names import describe
from ..tasks import get_task
from ..teacher import load_teacher
from .rng import seed_everything
from .trainer import Trainer


def check_run(cfg: RunConfig) -> RunConfig:
    """The checks of a resolved config that need this machine (its plugins, names, tasks, loggers, an
    ``imagefolder:``'s folder): :func:`datafree.methods.check_names`, which needs no torch, under the name the
    runner and the engine call. Raises :class:`~datafree.errors.DatafreeError` naming the value and the fix;
    writes nothing."""
    return check_names(cfg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available here; use device=cpu or auto")
    return dev


def run_device(cfg: RunConfig, world_size: int = 1, local_rank: int = 0) -> torch.device:
    """The run's device (on several ranks, this rank's GPU)."""
    device = resolve_device(cfg.device)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    return device


def prepare_process(cfg: RunConfig) -> None:
    """This process's torch threads and allocator for the run (once its folder is its own: a run refused at its
    folder leaves the process as it was)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    tune_cpu_malloc(cfg.cpu_malloc)


@dataclass
class Parts:
    """What a run is made of."""

    teacher: Optional[nn.Module]
    teacher_info: Dict[str, Any]
    student: nn.Module
    amp: Amp
    ctx: Context
    synth: Synthesizer
    distiller: Distiller
    trainer: Trainer


def build_parts(
    cfg: RunConfig,
    spec: DatasetSpec,
    device: torch.device,
    teacher_file: Optional[str],
    out_dir: str,
    rank: int = 0,
    world_size: int = 1,
    log: Callable[[str], None] = print,
) -> Parts:
    """Seed the run, then build its teacher, student, context, synthesizer, distiller and trainer.

    A value only the method can judge (an unknown generator output, a pool dtype) is refused here as bad
    input: a :class:`~datafree.errors.ConfigError` naming the method.
    """
    seed_everything(cfg.seed)
    amp = Amp(device, cfg.amp)
    channels_last = use_channels_last(cfg.channels_last, device)
    teacher, teacher_info = None, {}
    if teacher_file is not None:  # identity.teacher_path decided whether the method needs one
        model, record = load_teacher(teacher_file, dataset=cfg.dataset, arch=cfg.teacher_arch, device=device, spec=spec)
        teacher = model.to(memory_format=torch.channels_last) if channels_last else model
        teacher_info = dict(record)
    student = create_model(cfg.student, spec.num_classes, spec.channels, spec.size).to(device)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    ctx = Context(
        teacher,
        student,
        spec,
        device,
        cfg=cfg,
        amp=amp,
        out_dir=out_dir,
        channels_last=channels_last,
        rank=rank,
        world_size=world_size,
        teacher_record=teacher_info,
    )
    if world_size > 1:
        seed_everything(cfg.seed + 1000 * rank)  # each rank synthesises with its own seed
    try:
        synth = SYNTHESIZERS.build(cfg.synthesizer, ctx, **cfg.synth)
        distiller = DISTILLERS.build(cfg.distiller, ctx, **cfg.distill)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        if isinstance(e, DatafreeError):
            raise
        raise ConfigError(
            f"method {cfg.method} cannot be built from its synth/distill values "
            f"({type(e).__name__}: {first_line(e)}); check them with --print-config"
        ) from e
    trainer = Trainer(distiller, ctx)
    if rank == 0 and synth.amp.mode != amp.mode:  # docs/precision.md
        log(
            f"precision: synthesis {precision_name(synth.amp.mode)}, "
            f"student steps {precision_name(amp.mode)} (amp={cfg.amp})"
        )
    if cfg.compile:
        student.forward = torch.compile(student.forward)
        if teacher is not None:
            teacher.forward = torch.compile(teacher.forward)
    return Parts(teacher, teacher_info, student, amp, ctx, synth, distiller, trainer)


def describe_teacher(info: Dict[str, Any], task: str = "classification") -> str:
    """The teacher's line: its file and its measured test score (``info["accuracy"]``: the task's score)."""
    return f"teacher: {describe(info)}, {get_task(task).score_words} {info['accuracy']:.2f}%"
