"""A run's state: its folder, its parts, its checkpoint (:class:`RunState`, the base of the engine).

:class:`RunState` sets a run up (checks its config against this machine, owns its folder, builds its parts with
:func:`~datafree.engine.build.build_parts`, measures its teacher, reads its checkpoint, opens its hooks) and
saves and restores what a resume needs. The loop itself is :class:`datafree.engine.loop.Engine`'s.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..config import RunConfig, config_yaml
from ..data import get_source, iterate_eval
from ..errors import CheckpointError, ConfigError, DatafreeError
from ..identity import run_identity, teacher_path
from ..models import load_state
from ..names import label
from ..results import CHECKPOINT, same_evaluations, Identity, RecordError, RunRecord, differences
from ..rundir import RunFolder, run_path
from ..tasks import get_task
from ..zoo import measured_accuracy, remember_accuracy
from . import distributed
from .build import build_parts, check_run, describe_teacher, prepare_process, run_device
from .health import Guard, is_collapsed
from .hooks import Hook, run_hooks
from .meter import Meter
from .rng import rng_state, set_rng_state


def default_run_dir(cfg: RunConfig) -> str:
    """``results/runs/<dataset>/<method>/<teacher>-<student>-s<seed>[-<tag>]``."""
    return run_path(
        "results/runs", cfg.dataset, cfg.method, label(cfg.teacher, cfg.dataset), cfg.student, cfg.seed, cfg.tag
    )


def run_on_after_collapse(record: Any, cfg: RunConfig) -> bool:
    """True when a record stopped on collapse must run on: the request no longer stops there (another
    stop_on_collapse, collapse_patience or collapse_grace; those keys are outside the fingerprint)."""
    c = record.get("collapse") or {}
    if record.get("status") != "collapsed" or not c.get("stopped"):
        return False
    return (
        not cfg.stop_on_collapse
        or c.get("patience", cfg.collapse_patience) != cfg.collapse_patience
        or c.get("grace", cfg.collapse_grace) != cfg.collapse_grace
    )


class RunState:
    """Everything a run is, from its config: set up by :meth:`setup`, saved by :meth:`save_checkpoint`."""

    def __init__(
        self, cfg: RunConfig, resume: bool = False, overwrite: bool = False, log: Optional[Callable[[str], None]] = None
    ):
        self.cfg = cfg
        self.resume, self.overwrite = resume, overwrite
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.folder = RunFolder(cfg.out or default_run_dir(cfg))
        self.out_dir = self.folder.path
        self.metrics: List[Dict[str, Any]] = []
        self.start_epoch = 0
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.checkpoint: Optional[Dict[str, Any]] = None
        self.previous: Optional[RunRecord] = None
        self.hooks: List[Hook] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Check the config, own the run folder, then build everything; a failed setup leaves the folder as
        it found it (no empty folder, an overwritten run put back)."""
        self._t0 = time.time()  # an attempt's wall time counts from here: its setup included
        check_run(self.cfg)
        self.teacher_file = teacher_path(self.cfg)  # before any file is written
        self.identity: Identity = run_identity(self.cfg, self.teacher_file)
        self.rank, self.world_size, self.local_rank = distributed.init_distributed()
        if self.is_main:
            self.folder.acquire()
        try:
            self._setup()
        except BaseException:
            self._close_hooks()
            if self.is_main:
                if self.folder.has_records():  # a resumed run keeps the failed attempt's time on record
                    self.folder.close_attempts()
                else:
                    self.folder.discard_attempts()
                self.folder.restore_backup()  # an overwritten run comes back as it was
                if self.folder.created:
                    self.folder.remove_if_empty()
            self.folder.release()
            raise
        if self.is_main:
            self.folder.drop_backup()  # the new run is set up: the old records can go

    def _setup(self) -> None:
        cfg = self.cfg
        self.device = run_device(cfg, self.world_size, self.local_rank)
        source = get_source(cfg.dataset)
        self.spec = source.spec
        self.task = get_task(self.spec.task)
        if self.spec.num_classes == 0:
            raise ConfigError(f"dataset {cfg.dataset} has no classes")
        self.checkpoint = self._prepare_folder()
        prepare_process(cfg)
        parts = build_parts(
            cfg, self.spec, self.device, self.teacher_file, self.out_dir, self.rank, self.world_size, self.log
        )
        # after the teacher: a teacher of another dataset is the error to see first, not the missing data
        self.test_split = source.load("test", cfg.data_root).to(self.device)
        self.teacher, self.teacher_info, self.student = parts.teacher, parts.teacher_info, parts.student
        self.amp, self.ctx, self.synth = parts.amp, parts.ctx, parts.synth
        self.distiller, self.trainer = parts.distiller, parts.trainer
        self.ctx.total_steps = (cfg.epochs - cfg.warmup) * self.ep_steps
        self.meter = Meter(self.device, self.world_size)
        self.guard = Guard(self.device)
        if self.teacher is not None:
            self._measure_teacher()
            if self.is_main and not self.checkpoint:  # once the run is set up: a failed setup says only why
                self.log(describe_teacher(self.teacher_info, self.spec.task))
        if self.checkpoint is not None:
            self._load_checkpoint(self.checkpoint)
        if self.is_main and self.runs:
            self.folder.attempt_set_up(self.start_epoch)
            self.hooks = run_hooks(self)
            for hook in self.hooks:
                hook.open(self)
            self.folder.write_identity(self.identity)
            self.folder.write_config(config_yaml(cfg))  # the resolved config, on every start: the record of the run

    @property
    def runs(self) -> bool:
        """False when the folder holds this run's record already (a resume that has nothing to do)."""
        return self.previous is None or run_on_after_collapse(self.previous, self.cfg)

    def _prepare_folder(self) -> Optional[Dict[str, Any]]:
        """Check the folder against the run's identity and clear it if asked; the checkpoint to resume from.

        The folder is locked already (rank 0). On several ranks, rank 0 clears it and every rank reads the
        checkpoint (rank r > 0 adds its own synthesizer and random state from ``checkpoint.rank<r>.pt``).
        """
        folder = self.folder
        if self.is_main and folder.restore_interrupted_overwrite(self.overwrite):
            self.log(f"{folder.path}: restored the records an interrupted --overwrite had moved aside")
        has_records = folder.has_records()
        if has_records and not self.resume and not self.overwrite:
            raise DatafreeError(
                f"run directory {folder.path} already holds a run. Use --resume to continue it, --overwrite to "
                "start it again (its records are deleted), or --out <new dir> for a separate run"
            )
        if has_records and self.resume and not self.overwrite and not folder.matches(self.identity):
            old, problem = folder.identity_problem()
            raise DatafreeError(
                f"cannot resume {folder.path}: it holds a run of another config or teacher "
                f"({differences(old, self.identity, problem=problem)}). Use --overwrite to start it again, "
                "or --out <new dir> for a separate run"
            )
        distributed.barrier(self.world_size)
        if self.is_main:
            if self.overwrite and has_records:
                # moved aside, not deleted: they come back if the new run fails to set up (a teacher that does
                # not fit, a bad method value), and go once it is set up
                folder.move_aside()
            folder.remove_temporaries()
        distributed.barrier(self.world_size)
        self.previous = folder.previous_record() if self.resume else None
        if self.is_main and self.runs:
            folder.start_attempt(self.identity.fingerprint, started=self._t0)  # the setup's time is the attempt's
        if self.resume and folder.has_checkpoint():
            return folder.load_checkpoint(self.rank)
        return None

    def _measure_teacher(self) -> None:
        """The teacher's test accuracy, measured once per (sha256, dataset) and cached in the zoo."""
        sha, amp, arch = self.teacher_info["sha256"], self.amp.mode, self.teacher_info.get("arch")
        acc = measured_accuracy(sha, self.cfg.dataset, self.cfg.model_zoo, amp=amp, arch=arch)
        if acc is None:
            acc = self.task.score(self.evaluate(self.teacher))
            if self.is_main:
                remember_accuracy(
                    sha, self.cfg.dataset, acc, self.teacher_info["path"], self.cfg.model_zoo, amp=amp, arch=arch
                )
        self.teacher_info["accuracy"] = acc

    @property
    def ep_steps(self) -> int:
        if self.cfg.ep_steps is not None:
            return self.cfg.ep_steps
        n = self.synth.epoch_length or max(1, self.spec.train_size)
        return int(math.ceil(n / self.cfg.batch_size))

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "epoch": epoch,
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            # the layout of checkpoints from before the trainer: the optimiser's state beside the extra modules
            "distiller": {**self.distiller.state_dict(), **self.trainer.state_dict()},
            "synthesizer": self.synth.state_dict(),
            "meter": self.meter.state_dict(),
            "metrics": self.metrics,
            "rng": rng_state(),
            "ctx": {"step": self.ctx.step, "round": self.ctx.round},
            "teacher_info": {k: v for k, v in self.teacher_info.items() if v is not None},
        }
        if self.is_main:
            self.folder.save_checkpoint(state)
            self.folder.save_attempts(force=True)  # the wall time that produced this checkpoint is on record with it
        else:  # the model, optimiser and records are rank 0's; a rank keeps its own data side and randomness
            self.folder.save_checkpoint({"synthesizer": state["synthesizer"], "rng": state["rng"]}, self.rank)
        distributed.barrier(self.world_size)

    def _load_checkpoint(self, state: Dict[str, Any]) -> None:
        path = self.folder.file(CHECKPOINT)
        try:
            load_state(self.student, state["student"], "the run's checkpoint")
            self.distiller.load_state_dict(state["distiller"])
            self.trainer.load_state_dict(state["distiller"])
            self.synth.load_state_dict(state["synthesizer"])
            self.meter.load_state_dict(state["meter"])
            self.metrics = list(state["metrics"])
            self.ctx.step = int(state["ctx"]["step"])
            self.ctx.round = int(state["ctx"]["round"])
            self.start_epoch = int(state["epoch"]) + 1
            set_rng_state(state["rng"])
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume {self.out_dir}: {e}; use --overwrite to start it again") from e
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"cannot resume: {path} does not fit this run ({type(e).__name__}: {e}); use --overwrite to start "
                "it again"
            ) from e
        self._check_metrics_against_checkpoint(path)  # every rank reads it: every rank refuses together
        if self.is_main:
            self.folder.write_metrics(self.metrics)  # drop any line written after the checkpoint resumed from
            self.log(f"resuming {self.out_dir} after epoch {self.start_epoch}")

    def _check_metrics_against_checkpoint(self, path: str) -> None:
        """The evaluations a checkpoint carries are the first lines of metrics.jsonl: an edit of either one is
        refused here, before a resume builds on it."""
        try:
            written = self.folder.read_metrics()
        except (OSError, RecordError) as e:
            raise CheckpointError(f"cannot resume {self.out_dir}: its metrics.jsonl cannot be read ({e})") from e
        m = self.task.metric
        for i, (ours, theirs) in enumerate(zip(self.metrics, written)):
            if not same_evaluations([ours], [theirs], m):
                raise CheckpointError(
                    f"cannot resume {self.out_dir}: {path} and metrics.jsonl disagree at evaluation {i + 1} "
                    f"(epoch {ours.get('epoch')} {m} {ours.get(m)} against epoch {theirs.get('epoch')} {m} "
                    f"{theirs.get(m)}): one of them was edited. Use --overwrite to start the run again"
                )
        if len(written) < len(self.metrics):
            raise CheckpointError(
                f"cannot resume {self.out_dir}: metrics.jsonl holds {len(written)} evaluations, fewer than the "
                f"{len(self.metrics)} of {path} (cut short?). Use --overwrite to start the run again"
            )

    def release(self) -> None:
        """Give up the run folder (its lock) without running: for code that set a run up to inspect it."""
        self.folder.release()

    def _close_hooks(self) -> None:
        hooks, self.hooks = self.hooks, []
        for hook in hooks:
            hook.close()

    # -- evaluation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Optional[nn.Module] = None) -> Dict[str, float]:
        """The task's scores on the test split (``{"acc": ...}``, ``{"miou": ..., "pixel_acc": ...}``), of
        ``model`` or of the distiller's deployed student."""
        scorer = self.task.scorer(self.spec.num_classes, self.spec.ignore_index)
        if model is not None:
            model.eval()
        else:
            self.distiller.eval()
        for x, y in iterate_eval(self.test_split, self.spec, self.cfg.eval_batch_size, self.device):
            x = self.ctx.to_device(x)
            if model is None:
                logits = self.distiller.predict(x)
            else:
                with self.amp.autocast():
                    logits = model(x)
            scorer.update(logits, y)
        return scorer.results()

    def collapsed(self) -> bool:
        """True when the last ``collapse_patience`` evaluations after the first ``collapse_grace`` show a collapsed
        student (:meth:`datafree.tasks.Task.at_chance`)."""
        cfg = self.cfg
        return is_collapsed(self.metrics, self.task, self.spec.num_classes, cfg.collapse_patience, cfg.collapse_grace)
