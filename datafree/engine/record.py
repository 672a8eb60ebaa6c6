"""The run record a finished run leaves (summary.json): what it reached, on what, with what, at what cost."""

from __future__ import annotations

import datetime
import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..names import name_from_file, source_of
from ..results import RECORD_VERSION, RunRecord, jsonl_text, machine, record_field_names, sha256_text, versions
from ..tasks import Task, score_field
from .health import collapse_streak
from .view import RunView


def finite_scores(metrics: List[Dict[str, Any]], task: Task) -> List[float]:
    """The task's finite scores over a run's evaluations (accuracies, or mIoUs)."""
    scores = [task.score(m) for m in metrics]
    return [s for s in scores if isinstance(s, (int, float)) and math.isfinite(s)]


def build_record(
    engine: RunView, status: str, diverged: Optional[Dict[str, Any]], stopped: bool, in_sync: Optional[bool]
) -> RunRecord:
    """The record of ``engine``'s run as it ends with ``status`` (``diverged``: where and why; ``stopped``: by
    the collapse stop; ``in_sync``: whether the ranks' students agree, on several ranks)."""
    cfg, info, task = engine.cfg, engine.teacher_info, engine.task
    accs = finite_scores(engine.metrics, task)
    teacher = info.get("arch") or name_from_file(cfg.teacher, cfg.dataset)
    values: Dict[str, Any] = dict(
        run_id=engine.folder.name,
        status=status,
        fingerprint=engine.identity.fingerprint,
        method=cfg.method,
        synthesizer=cfg.synthesizer,
        distiller=cfg.distiller,
        dataset=cfg.dataset,
        teacher=teacher,
        teacher_path=info.get("path"),
        teacher_sha256=info.get("sha256"),
        student=cfg.student,
        pair=f"{teacher}->{cfg.student}" if teacher else cfg.student,
        seed=cfg.seed,
        suite=cfg.suite,
        tag=cfg.tag,
        uses_real_data=cfg.uses_real_data or engine.synth.real_data,
        epochs=cfg.epochs,
        evaluations=len(accs),
        teacher_acc=info.get("accuracy"),
        teacher_acc_stored=info.get("stored_accuracy"),
        teacher_source=source_of(info) if info else None,
        device=str(engine.device),
        # autocast modes (off = fp32) of synthesis and of the student's steps (docs/precision.md)
        precision={"synthesis": engine.synth.amp.mode, "distillation": engine.amp.mode},
        machine=machine(),
        finished=datetime.datetime.now().isoformat(timespec="seconds"),
        versions=versions(),
        diverged=diverged,
        metrics_sha256=sha256_text(jsonl_text(engine.metrics)),
        record_version=RECORD_VERSION,
    )
    # the task's score over the evaluations: last_acc, best_acc, ... (classification), last_miou, ... (segmentation)
    m = task.metric
    values.update(
        {
            score_field("last", m): accs[-1] if accs else None,
            score_field("best", m): max(accs) if accs else None,
            score_field("mean", m): float(np.mean(accs)) if accs else None,
            score_field("var", m): float(np.var(accs)) if accs else None,
        }
    )
    if task.name != "classification":
        values["task"] = task.name
        last = engine.metrics[-1] if engine.metrics else {}
        values.update({score_field("last", k): v for k, v in last.items() if k in task.figures and k != m})
    if status == "collapsed":
        values["collapsed"] = True
        values["collapse"] = {
            "chance": 100.0 / engine.spec.num_classes if task.name == "classification" else None,
            "evaluations_at_chance": collapse_streak(engine.metrics, task, engine.spec.num_classes),
            "stopped": bool(stopped),
            "patience": cfg.collapse_patience,
            "grace": cfg.collapse_grace,
        }
    values.update(engine.meter.report())
    # total_seconds is the time inside the epochs the checkpoints kept; wall time counts every attempt,
    # the work a killed attempt lost after its last checkpoint included
    values["checkpointed_seconds"] = values["total_seconds"]
    values["attempts"] = len(engine.folder.attempts)
    values["wall_seconds"] = engine.folder.wall_seconds()
    values["world_size"] = engine.world_size
    if engine.world_size > 1:  # every rank synthesised and trained on its own batches
        values["ranks_in_sync"] = in_sync
        values["images_synthesized"] *= engine.world_size
        values["images_seen"] *= engine.world_size
    values.update(engine.synth.summary_extra())
    names = set(record_field_names())
    extra = {k: values.pop(k) for k in list(values) if k not in names}
    return RunRecord(**values, extra=extra)


def say_result(log: Callable[[str], None], record: RunRecord, diverged: Optional[Dict[str, Any]], out_dir: str) -> None:
    """One line on how the run ended: its last and best score (a segmenter's named: ``miou``), or where it
    diverged."""
    method, dataset = record.method, record.dataset
    last, best = record.score("last"), record.score("best")
    if diverged is not None:
        shown = f"{last:.2f}" if last is not None else "none"
        what = "accuracy" if record.metric == "acc" else record.metric
        log(
            f"{method} {record.pair} on {dataset}: DIVERGED at epoch {diverged['epoch']} step "
            f"{diverged['step']} ({diverged['reason']}); last finite {what} {shown} -> {out_dir}"
        )
    elif last is not None:
        log(
            f"{method} {record.pair} on {dataset}: last {record.score_prefix}{last:.2f} best {best:.2f} "
            f"({record.total_seconds:.0f} s)"
            + (" COLLAPSED to chance" if record.status == "collapsed" else "")
            + f" -> {out_dir}"
        )
    else:
        log(f"{method}: finished without evaluation -> {out_dir}")
