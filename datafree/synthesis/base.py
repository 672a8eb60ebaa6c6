"""The data side of the core contract: :class:`Synthesizer`.

A synthesizer is built from a :class:`Context` (teacher, student, data spec,
device, run settings) and its own hyper-parameters, checked against its
``Config`` dataclass. The engine calls :meth:`Synthesizer.synthesize` once per
round and :meth:`Synthesizer.sample` once per student step. A synthesizer
never trains the student.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from ..config import RunConfig, build_dataclass
from ..data.spec import DatasetSpec, Normalizer
from ..registry import config_class
from .. import runtime

Batch = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class Amp:
    """An autocast policy: bf16 (or fp16) on CUDA, nothing on CPU (see docs/precision.md).

    ``setting`` is the run's ``amp`` value (``auto``, ``off``, ``bf16``, ``fp16``), ``mode`` what it resolves to
    here. The engine's Amp is the run's (student steps, evaluation); each synthesizer runs under
    :meth:`for_synthesis` of it, which for a synthesizer that declares ``synthesis_precision = "fp32"`` is
    fp32 under ``auto``. Such an fp32 policy inside a bf16 run turns autocast off explicitly
    (``torch.autocast(enabled=False)``), so a synthesis call made inside the run's autocast block stays fp32.
    """

    def __init__(self, device: torch.device, mode: str = "auto", *, exclusive: bool = False):
        self.device = torch.device(device)
        self.setting = mode
        self.mode = runtime.resolve_amp(mode, self.device.type)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)
        #: an fp32 policy that disables any autocast around it (set by :meth:`for_synthesis`)
        self.exclusive = exclusive and self.dtype is None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if self.exclusive:
            return torch.autocast(device_type=self.device.type, enabled=False)
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def for_synthesis(self, precision: str = "amp") -> "Amp":
        """The policy of a synthesizer that declares ``precision`` (``amp`` or ``fp32``): this one, or an fp32
        one when the run's ``auto`` would otherwise autocast it."""
        mode = runtime.synthesis_amp(self.setting, self.device.type, precision)
        if mode == self.mode:
            return self
        out = Amp(self.device, mode, exclusive=True)
        out.setting = self.setting
        return out


class ContextView:
    """The run's :class:`Context` with another autocast policy: every attribute but ``amp`` is read from and
    written to the shared Context (the engine's ``epoch``/``step`` updates show through). A synthesizer whose
    precision differs from the run's holds one as ``self.ctx``, so its ``self.ctx.amp.autocast()`` blocks run at
    its own precision while the distiller's use the run's."""

    __slots__ = ("_ctx", "amp")

    def __init__(self, ctx: "Context", amp: Amp):
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "amp", amp)

    @property
    def context(self) -> "Context":
        """The shared Context behind the view."""
        return object.__getattribute__(self, "_ctx")

    def __getattr__(self, name: str):
        return getattr(object.__getattribute__(self, "_ctx"), name)

    def __setattr__(self, name: str, value) -> None:
        if name == "amp":
            object.__setattr__(self, name, value)
        else:
            setattr(object.__getattribute__(self, "_ctx"), name, value)


@dataclass
class Context:
    """What every synthesizer and distiller of a run shares."""

    teacher: Optional[nn.Module]
    student: nn.Module
    spec: DatasetSpec
    device: torch.device
    cfg: RunConfig = field(default_factory=RunConfig)
    amp: Optional[Amp] = None
    out_dir: Optional[str] = None
    rank: int = 0
    world_size: int = 1
    epoch: int = 0  # current epoch (set by the engine)
    step: int = 0  # student steps taken so far
    round: int = 0  # synthesis rounds run so far
    total_steps: int = 0  # student steps in the whole run
    channels_last: bool = False
    teacher_record: Dict[str, Any] = field(default_factory=dict)  # what datafree.load_teacher says of it

    def __post_init__(self):
        self.device = torch.device(self.device)
        if self.amp is None:
            self.amp = Amp(self.device, "off")
        self.normalizer = Normalizer(self.spec, self.device)

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def progress(self) -> float:
        """Fraction of the run's epochs completed (0 at the start, -> 1 at the end)."""
        return self.epoch / max(1, self.cfg.epochs)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@contextlib.contextmanager
def frozen(module: Optional[nn.Module], train_mode: bool = False) -> Iterator[None]:
    """No parameter gradients inside the block, and eval mode unless ``train_mode``; both restored after.

    Used when a synthesis loss runs the student: gradients flow to the images
    only, and (in eval mode) the student's BN statistics are not moved by
    synthetic batches. ``train_mode`` keeps BatchNorm on the batch's statistics
    and lets it update its running ones, as reference loops that never call
    ``student.eval()`` before the generator step do (DFAD, MB-DFKD, PRE-DFKD).
    """
    if module is None:
        yield
        return
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.train(train_mode)
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)
        module.train(was_training)


#: the config fields that hold the number of inner iterations of one synthesis round, by method
ROUND_ITERATION_FIELDS = ("iterations", "g_steps", "gan_steps")


def round_iterations(cfg: Any) -> Optional[int]:
    """The inner iterations of one round under a synthesizer's config (DeepInversion's 2000), or None."""
    return next((getattr(cfg, f) for f in ROUND_ITERATION_FIELDS if getattr(cfg, f, None) is not None), None)


class Synthesizer:
    """Base class of the data side of a method.

    Subclasses set ``Config`` (a dataclass of hyper-parameters, the ``synth``
    section of a run config), implement :meth:`synthesize` and :meth:`sample`,
    and list in ``stateful`` the attributes (modules, optimisers, pools, ...)
    whose ``state_dict()`` makes a run resumable.
    """

    @dataclass
    class Config:
        pass

    stateful: Tuple[str, ...] = ()
    needs_teacher: bool = True
    #: the precision of this synthesizer's own autocast blocks on CUDA under ``amp=auto``: ``amp`` (the run's,
    #: bf16 on CUDA) or ``fp32`` (the reference code's; an explicit ``amp=bf16`` still applies). docs/precision.md
    synthesis_precision: str = "amp"
    #: short description of the real data a synthesizer uses ("" for data-free ones)
    real_data: str = ""
    #: images in one pass over the data a synthesizer serves (a real or collected set), or None: with
    #: ``ep_steps: null`` an epoch is then one pass over it
    epoch_length: Optional[int] = None

    def __init__(self, ctx: Context, **params: Any):
        amp = ctx.amp.for_synthesis(self.synthesis_precision)
        self.ctx = ctx if amp is ctx.amp else ContextView(ctx, amp)
        # a Config missing @dataclass is named here, not reported as an "unknown key" of the synth section
        config = config_class(type(self), "synthesizer")
        self.cfg = build_dataclass(config, params, f"synth ({type(self).__name__})")
        self.images_synthesized = 0
        if self.needs_teacher and ctx.teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")

    # -- shortcuts
    @property
    def teacher(self) -> nn.Module:
        return self.ctx.teacher

    @property
    def student(self) -> nn.Module:
        return self.ctx.student

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def spec(self) -> DatasetSpec:
        return self.ctx.spec

    @property
    def normalizer(self) -> Normalizer:
        return self.ctx.normalizer

    # -- the contract
    def synthesize(self) -> Dict[str, float]:
        """Run one synthesis round; return named scalar losses (floats or 0-d tensors)."""
        raise NotImplementedError

    def sample(self, n: int) -> Batch:
        """A batch of ``n`` normalised images on the device (optionally with labels)."""
        raise NotImplementedError

    def preview(self, n: int) -> torch.Tensor:
        """Normalised images that show what the method makes (for the sample grids)."""
        batch = self.sample(n)
        return batch[0] if isinstance(batch, tuple) else batch

    def student_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Student logits for a synthesis loss: gradients reach ``x``, not the student.

        The student runs in eval mode, or in train mode when the config's ``student_mode`` is ``"train"``
        (a method whose reference loop leaves it so; its BN layers then use and track the synthetic batch).
        """
        train_mode = getattr(self.cfg, "student_mode", "eval") == "train"
        with frozen(self.student, train_mode=train_mode), self.ctx.amp.autocast():
            return self.student(x).float()

    def health_checks(self) -> Dict[str, torch.Tensor]:
        """Per-round divergence checks this synthesizer declares: ``{name: 0-d bool tensor}``, True = broken.

        The engine calls this after every synthesis round and keeps, on the device, the first step at which
        each check failed; it reads them every few dozen steps and stops the run as ``diverged`` with the
        check's name as the reason (see :mod:`datafree.health`). Non-finite logged losses are checked
        already. Build the flags from tensors without a host sync (no ``.item()``, ``float()``, ``if t:``).
        """
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the engine before each epoch's first round (schedules, re-inits)."""

    def close(self) -> None:
        """Release hooks and other resources."""

    @property
    def amp(self) -> Amp:
        """The autocast policy synthesis runs under (:meth:`Amp.for_synthesis` of the run's)."""
        return self.ctx.amp

    def summary_extra(self) -> Dict[str, Any]:
        """More fields for the run record (summary.json): a pool's size, a collected set's description."""
        return {}

    def final_files(self) -> Dict[str, Any]:
        """Files the run keeps when it ends, ``{file name: object for torch.save}`` (the pool methods' ``pool.pt``:
        their synthetic set outlives the checkpoint). The engine writes them atomically beside ``student.pt``."""
        return {}

    # -- resumability
    def extra_state(self) -> Dict[str, Any]:
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        state = {"images_synthesized": self.images_synthesized, "extra": self.extra_state()}
        for name in self.stateful:
            obj = getattr(self, name)
            state[name] = None if obj is None else obj.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.images_synthesized = int(state["images_synthesized"])
        for name in self.stateful:
            obj = getattr(self, name)
            if obj is not None and state.get(name) is not None:
                obj.load_state_dict(state[name])
        self.load_extra_state(state.get("extra", {}))

    def hparams(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.cfg)
