"""The one training loop: synthesize -> distill -> evaluate -> checkpoint.

Each epoch runs rounds until ``ep_steps`` student steps are done: a round is one ``synthesizer.synthesize()``
followed by ``kd_steps`` student steps, each on ``synthesizer.sample(batch_size)`` through the
:class:`~datafree.engine.trainer.Trainer`. During the first ``warmup`` epochs only synthesis runs
(Fast-DFKD). After every epoch the student is evaluated (every ``eval_every`` epochs and always after the
last), the hooks see the evaluation (:mod:`datafree.engine.hooks`), and a checkpoint is written atomically,
so ``--resume`` continues a killed run from its last epoch with the same random state: the resumed run ends
in the same state as an uninterrupted one. A non-finite loss or weight stops the run as ``diverged``
(:mod:`datafree.engine.health`); the run's folder and records belong to :class:`~datafree.rundir.RunFolder`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..config import RunConfig
from ..models import save_model
from ..results import STUDENT, RunRecord, atomic_torch_save
from . import distributed
from .record import build_record, finite_scores, say_result
from .state import RunState, default_run_dir, run_on_after_collapse

#: student steps between two reads of the divergence flags (the only host syncs the checks cost)
CHECK_EVERY = 50

__all__ = ["CHECK_EVERY", "Engine", "default_run_dir", "run", "run_on_after_collapse"]


def all_finite(module: nn.Module) -> bool:
    """True when every parameter of ``module`` is finite (one host sync)."""
    params = [p.detach() for p in module.parameters()]
    if not params:
        return True
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def _mean_logs(acc: Dict[str, List[torch.Tensor]]) -> Dict[str, float]:
    return {
        k: float(torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().cpu() for v in vs]).mean())
        for k, vs in acc.items()
        if vs
    }


class Engine(RunState):
    """One run: :class:`RunState` sets it up, :meth:`run` runs the loop and writes its record."""

    # -- the run -----------------------------------------------------------------------------------------------
    def run(self) -> RunRecord:
        self.setup()
        try:
            prev = self.previous
            if prev is not None and not run_on_after_collapse(prev, self.cfg):  # same identity: the record stands
                self.log(f"{self.out_dir} is already finished ({prev.status})")
                return prev
            try:
                record = self._loop()
                distributed.barrier(self.world_size)  # no rank tears its process group down while another uses it
                return record
            finally:
                self.synth.close()
                self._close_hooks()
                if self.world_size > 1:
                    self.trainer.release_distributed()
                    distributed.shut_down()
        finally:
            if self.is_main:
                self.folder.close_attempts()
            self.folder.release()

    def _loop(self) -> RunRecord:
        cfg = self.cfg
        diverged: Optional[Dict[str, Any]] = None
        stop: Optional[str] = None
        self._next_check = self.ctx.step + CHECK_EVERY
        for epoch in range(self.start_epoch, cfg.epochs):
            diverged = self._epoch(epoch)
            if diverged is not None:
                break
            if epoch >= cfg.warmup:
                self.trainer.on_epoch_end()
                self.distiller.on_epoch_end()
            due = epoch >= cfg.warmup and ((epoch + 1) % max(1, cfg.eval_every) == 0 or epoch == cfg.epochs - 1)
            if due:
                diverged, stop = self._evaluate_epoch(epoch)
                if diverged is not None:
                    break
            with self.meter.phase("other"):
                self.save_checkpoint(epoch)
            if stop is not None:
                if self.is_main:
                    self.log(stop)
                break
        for hook in self.hooks:
            hook.on_loop_end(self)
        if diverged is not None:
            self.log(f"diverged at epoch {diverged['epoch']}, step {diverged['step']}: {diverged['reason']}")
        return self.finish(diverged=diverged, stopped=stop is not None)

    def _epoch(self, epoch: int) -> Optional[Dict[str, Any]]:
        """One epoch of rounds; the divergence record if a check failed."""
        cfg, ctx, guard = self.cfg, self.ctx, self.guard
        ctx.epoch = epoch
        train_student = epoch >= cfg.warmup
        ep_steps = self.ep_steps
        kd_steps = cfg.kd_steps or ep_steps
        self.synth.on_epoch_start(epoch)
        self._synth_logs: Dict[str, List[torch.Tensor]] = {}
        self._dist_logs: Dict[str, List[torch.Tensor]] = {}
        done = 0
        while done < ep_steps:
            for hook in self.hooks:
                hook.on_round_start(self)
            with self.meter.phase("synthesis"):
                logs = self.synth.synthesize() or {}
                for k, v in logs.items():
                    self._synth_logs.setdefault(k, []).append(torch.as_tensor(v).detach())
                guard.watch(ctx.step, "synthesis loss non-finite", logs.values())
                guard.flags(ctx.step, self.synth.health_checks())
            ctx.round += 1
            self._save_attempts()  # at most every 10 s: a SIGKILL loses at most that much wall time
            n = min(kd_steps, ep_steps - done)
            if train_student:
                with self.meter.phase("distill"):
                    for _ in range(n):
                        self._student_step()
            done += n
            for hook in self.hooks:
                hook.on_round(self, n)
            if ctx.step >= self._next_check and done < ep_steps:  # a log point inside a long epoch
                self._next_check = ctx.step + CHECK_EVERY
                diverged = self._check_health(epoch)
                if diverged is not None:
                    return diverged
                self._save_attempts()
        diverged = self._check_health(epoch)
        if diverged is None:
            self.meter.images_synthesized = self.synth.images_synthesized
        return diverged

    def _student_step(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        batch = self.synth.sample(cfg.batch_size)
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        logs = self.trainer.step(ctx.to_device(x), y)
        for k, v in logs.items():
            self._dist_logs.setdefault(k, []).append(torch.as_tensor(v).detach())
        self.guard.watch(ctx.step, "student loss non-finite", logs.values())
        self.guard.flags(ctx.step, self.distiller.health_checks())
        ctx.step += 1
        self.meter.images_seen += x.shape[0]

    def _evaluate_epoch(self, epoch: int) -> tuple:
        """Evaluate (rank 0), record the line, call the hooks: ``(divergence record or None, stop reason or
        None)``, the same on every rank."""
        bad, stop = False, None
        if self.is_main:
            with self.meter.phase("eval"):  # the evaluation and what the hooks do in its phase (sample grids)
                scores = self.evaluate()
                for hook in self.hooks:
                    hook.during_evaluation(self, epoch)
            bad = not math.isfinite(self.task.score(scores))  # not from a count, but a plugin's predict may
            if not bad:
                record = self._metrics_line(epoch, scores)
                self.metrics.append(record)
                self.folder.write_metrics(self.metrics)
                for hook in self.hooks:
                    hook.on_evaluation(self, epoch, record)
                stop = next((r for r in (h.stop_reason(self) for h in self.hooks) if r), None)
        if distributed.agree(bad, self.world_size, self.device):
            return {"epoch": epoch + 1, "step": self.ctx.step, "reason": f"{self.task.metric} non-finite"}, None
        stopped = distributed.agree(stop is not None, self.world_size, self.device)
        return None, (stop or "") if stopped else None

    def _metrics_line(self, epoch: int, scores: Dict[str, float]) -> Dict[str, Any]:
        return {
            "epoch": epoch + 1,
            **scores,  # the task's: acc, or miou, pixel_acc, ...
            "lr": self.trainer.lr,
            "step": self.ctx.step,
            "images_synthesized": self.meter.images_synthesized,
            "images_seen": self.meter.images_seen,
            "seconds": self.meter.total_seconds,
            # cumulative seconds per phase (synthesis, distill, eval, other): per-epoch times without
            # evaluation, e.g. for benchmarks/parity
            "phase_seconds": {k: round(v, 4) for k, v in self.meter.seconds.items()},
            "synth": _mean_logs(self._synth_logs),
            "distill": _mean_logs(self._dist_logs),
        }

    def _check_health(self, epoch: int) -> Optional[Dict[str, Any]]:
        """Read the divergence flags (one host sync); the divergence record, or None while all is finite."""
        bad = self.guard.first_failure()
        if bad is None and not all_finite(self.student):
            bad = (self.ctx.step, "student weights non-finite")
        bad = distributed.earliest_failure(bad, self.rank, self.world_size, self.device)
        if bad is None:
            return None
        return {"epoch": epoch + 1, "step": int(bad[0]), "reason": bad[1]}

    def _save_attempts(self) -> None:
        if self.is_main:
            self.folder.save_attempts()

    # -- the end ------------------------------------------------------------------------------------------------
    def finish(self, diverged: Optional[Dict[str, Any]] = None, stopped: bool = False) -> RunRecord:
        """Write what the run keeps (its student, a method's final files) and its record."""
        cfg = self.cfg
        accs = finite_scores(self.metrics, self.task)
        collapsed = diverged is None and self.collapsed()
        status = "diverged" if diverged is not None else ("collapsed" if collapsed else "finished")
        if self.is_main and diverged is None:  # a diverged student's weights are not a model
            extra_modules = {
                k: {n: t.detach().cpu() for n, t in m.state_dict().items()}
                for k, m in self.distiller.extra_modules().items()
            }
            save_model(
                self.folder.file(STUDENT),
                self.student,
                cfg.student,
                cfg.dataset,
                self.spec.as_dict(),
                extra={
                    "accuracy": accs[-1] if accs else None,
                    "extra_modules": extra_modules,
                    **self.distiller.export_extra(),
                },
            )
        if self.is_main:  # what the method keeps past its checkpoint (a pool method's pool.pt), diverged or not
            for name, obj in self.synth.final_files().items():
                atomic_torch_save(obj, self.folder.file(name))
        in_sync = distributed.ranks_in_sync(self.student, self.device) if self.world_size > 1 else None
        if self.is_main:
            self.folder.close_attempts()  # the record's wall time is the attempts' last word
        record = build_record(self, status, diverged, stopped, in_sync)
        if not self.is_main:
            return record
        self.folder.write_record(record)
        say_result(self.log, record, diverged, self.out_dir)
        return record


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> RunRecord:
    """Run one distillation described by ``cfg``; return its record."""
    return Engine(cfg, resume=resume, overwrite=overwrite).run()
