"""Reading many run folders: the rows of the tables, the records that cannot be used, the runs without a result.

:func:`load_runs` walks a results folder and sorts every run folder it finds into one of three lists:

* **rows**: a finished run (summary.json) whose record agrees with itself: its last, best and number of
  evaluations are those of its metrics.jsonl, that file is the one the run wrote (``metrics_sha256``), and a
  checkpoint left beside it carries the same evaluations. Each row also carries its ``config_id`` (the
  fingerprint without the seed, :meth:`datafree.results.Identity.config_id`), so that tables group seeds of one
  configuration and teacher only;
* **skipped** (``df.attrs["skipped"]``): records that cannot be used, each with why: unreadable, partial, or
  contradicting its own files (an edited summary.json or metrics.jsonl);
* **unfinished** (``df.attrs["unfinished"]``): run folders without a result: a failed cell (error.json), a
  run killed or stopped before its end, one running now, and records set aside (``<run>.stale-<n>/`` for
  another config or teacher, ``.overwritten/`` by an ``--overwrite`` that was interrupted).

Nothing is dropped silently: every folder that holds a run file is in one of the three.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

from .results import (
    ATTEMPTS,
    BACKUP,
    CELL,
    CHECKPOINT,
    ERROR,
    FINGERPRINT,
    METRICS,
    STALE_SUFFIX,
    SUMMARY,
    RecordError,
    RunRecord,
    read_curve,
    read_json,
    same_evaluations,
    sha256_text,
    threads_of_machine,
)
from .rundir import RunFolder

#: files whose presence makes a folder a run folder (of whatever state)
RUN_FILES = (SUMMARY, METRICS, CHECKPOINT, FINGERPRINT, ATTEMPTS, ERROR, CELL)
#: folders under a results tree that never hold runs of their own
NOT_RUNS = ("submitit", "tensorboard", "wandb")


def find_run_folders(root: str) -> List[str]:
    """Every folder under ``root`` that holds a run file, sorted (set-aside ones included)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in NOT_RUNS)
        if any(f in files for f in RUN_FILES):
            out.append(d)
    return sorted(out)


def set_aside_why(rel: str) -> Optional[str]:
    """Why a folder (relative to the results root) was set aside, or None when it was not."""
    parts = rel.split(os.sep)
    if any(STALE_SUFFIX.search(p) for p in parts):
        return "set aside as stale: a record of another config or teacher than its cell's (kept, not reused)"
    if BACKUP in parts:
        return "set aside by an --overwrite that was interrupted (its next start puts it back or drops it)"
    return None


def _why(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"cannot be read: {e.strerror or e}"
    return str(e)


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def cross_check(folder: RunFolder, record: RunRecord, curve: Optional[List[Tuple[float, Any]]]) -> Optional[str]:
    """Why ``record`` disagrees with the run's other files, or None when it agrees with them (or they are gone)."""
    if curve is not None:
        accs = [a for _, a in curve if isinstance(a, (int, float)) and math.isfinite(a)]
        says = {"evaluations": record.evaluations, "last": record.score("last"), "best": record.score("best")}
        holds = {"evaluations": len(accs), "last": accs[-1] if accs else None, "best": max(accs) if accs else None}
        for key in ("last", "best", "evaluations"):
            a, b = says[key], holds[key]
            if a is None and key == "evaluations":
                continue  # a record from before the field
            if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, abs_tol=1e-9)):
                return (
                    f"summary.json says {key} {_fmt(a)} but metrics.jsonl holds {_fmt(b)}: one of them was edited "
                    "or cut; rerun the cell, or restore the files the run wrote"
                )
        if record.metrics_sha256:
            with open(folder.file(METRICS), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            if sha256_text(text) != record.metrics_sha256:
                return (
                    "metrics.jsonl is not the file the run wrote (its sha256 differs from the record's "
                    "metrics_sha256): it was edited or cut; rerun the cell, or restore it"
                )
    if folder.has_checkpoint():
        ckpt = checkpoint_metrics(folder)
        if ckpt is not None and curve is not None:
            metric = record.metric
            if not same_evaluations(ckpt, [{"epoch": e, metric: a} for e, a in curve], metric):
                return "checkpoint.pt and metrics.jsonl hold other evaluations: one of them was edited; rerun the cell"
    return None


def checkpoint_metrics(folder: RunFolder) -> Optional[List[Dict[str, Any]]]:
    """The evaluations a run's checkpoint carries (memory-mapped: its tensors are not read), or None."""
    import torch

    try:
        state = torch.load(folder.file(CHECKPOINT), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (an unreadable checkpoint says nothing against the record)
        return None
    metrics = state.get("metrics") if isinstance(state, dict) else None
    return list(metrics) if isinstance(metrics, list) else None


def unfinished_state(folder: RunFolder) -> Tuple[str, str]:
    """``(state, detail)`` of a run folder without a run record."""
    error = folder.read_error()
    if error is not None:
        return "failed", str(error.get("error") or "see its error.json").strip()
    if folder.in_use():
        return "running", "another process holds it now"
    try:
        lines = folder.read_metrics()
    except (OSError, RecordError):
        lines = []
    if folder.has(CHECKPOINT) or lines or folder.has(ATTEMPTS):
        done = f"{len(lines)} evaluation{'s' if len(lines) != 1 else ''} recorded" if lines else "no evaluation"
        return "stopped", f"killed or interrupted before its end ({done}); `--resume` (or bench again) continues it"
    return "not started", "its cell was prepared but never ran"


def resumed_after_record(folder: RunFolder) -> bool:
    """True when an attempt started after the run's record was written: a run resumed past its record (asked to
    run on after a collapse stop) that is running or stopped; its files are then ahead of its summary.json."""
    try:
        finished = read_json(folder.file(SUMMARY)).get("finished")
        attempts = read_json(folder.file(ATTEMPTS)).get("attempts", [])
    except (OSError, ValueError, AttributeError):
        return False
    last = attempts[-1].get("started") if attempts and isinstance(attempts[-1], dict) else None
    return isinstance(finished, str) and isinstance(last, str) and last > finished


def _read_record_row(folder: RunFolder, rel: str) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, str]], list]:
    """(table row or None, skipped entry or None, extra skipped entries) of a folder with a summary.json."""
    try:
        record = folder.read_record()
    except (OSError, RecordError) as e:
        return None, {"path": os.path.join(rel, SUMMARY), "reason": _why(e)}, []
    extra = []
    try:
        curve = read_curve(folder.file(METRICS), record.metric)
    except (OSError, RecordError) as e:
        curve = None
        extra.append(
            {
                "path": os.path.join(rel, METRICS),
                "reason": f"{_why(e)}; the run's table row comes from its summary.json, its curve is left out",
            }
        )
    else:
        problem = cross_check(folder, record, curve)
        if problem is not None:
            return None, {"path": rel, "reason": problem}, []
    row = record.as_dict()
    row["run_dir"] = folder.path
    row["method_name"] = row.get("method")
    if row.get("tag"):  # variants of a method (hidfd at two rho) get rows of their own
        row["method"] = f"{row['method']} ({row['tag']})"
    row["curve"] = curve
    row["metric"] = record.metric
    ident, _ = folder.identity_problem()
    threads = threads_of_machine(record.machine)
    row["config_id"] = ident.config_id(threads) if ident is not None else None
    row["config_fields"] = ident.current_fields(threads) if ident is not None else None
    return row, None, extra


def load_runs(root: str):
    """All usable runs under ``root`` as a pandas DataFrame, one row per run (see the module docstring).

    A row is the run's summary.json plus ``run_dir``, ``method_name`` (the method without its tag), ``status``
    (finished, diverged or collapsed), ``curve`` (its evaluations from metrics.jsonl, None without a usable
    file), ``config_id`` and ``config_fields`` (from fingerprint.json, None without one). Every file is read
    here, before anything is written from the frame.
    """
    import pandas as pd

    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    unfinished: List[Dict[str, str]] = []
    for path in find_run_folders(root):
        folder = RunFolder(path)
        rel = os.path.relpath(path, root)
        aside = set_aside_why(rel)
        if aside is not None:
            unfinished.append({"path": rel, "state": "set aside", "detail": aside + _record_note(folder)})
            continue
        resumed = folder.is_finished() and resumed_after_record(folder)
        if not folder.is_finished() or resumed:
            state, detail = unfinished_state(folder)
            if resumed and state == "stopped":
                detail = "resumed after its record (to run on after a collapse stop) and stopped; " + detail
            unfinished.append({"path": rel, "state": state, "detail": detail})
            continue
        row, bad, extra = _read_record_row(folder, rel)
        skipped += ([bad] if bad else []) + extra
        if row is not None:
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    df.attrs["unfinished"] = unfinished
    return df


def _record_note(folder: RunFolder) -> str:
    try:
        s = read_json(folder.file(SUMMARY))
    except (OSError, ValueError):
        return ""
    if not isinstance(s, dict):
        return ""
    acc = s.get("last_acc")
    return f"; its record: {s.get('method')} {s.get('status', 'finished')}" + (
        f", last {acc:.2f}" if isinstance(acc, (int, float)) else ""
    )
