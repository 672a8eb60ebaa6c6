"""Suites -> cells -> executors: a paper table from one command (``datafree bench``).

:func:`run_suite` loads a suite (:mod:`datafree.suites`), checks every cell's config, trains the teachers the
cells need and lack (in the zoo the cells will look in), then runs every cell without a record of its own in
its own process through an executor (:mod:`datafree.executors`), records a failed cell's error in
``error.json`` and goes on, and writes the suite's tables. Cells resume from their checkpoints, so a suite
killed or stopped (SIGTERM, Ctrl-C: each running cell is stopped too, and waited for) continues where it
stopped when run again. A finished cell is reused only when its record's identity is the cell's
(:mod:`datafree.identity`: config with every default, teacher sha256, dataset, and on a CPU the threads the
cell gets); a record of another one is kept aside as ``<cell>.stale-<n>/`` and the cell runs again. One
``bench`` process owns a suite folder at a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from .config import RunConfig, deep_merge
from .engine import check_run, run_on_after_collapse
from .errors import DatafreeError
from .executors import SLURM_CPUS_PER_TASK, cpu_threads, forward_signals, make_executor, record_cell_error
from .identity import run_identity
from .lock import DirLock
from .methods import resolve
from .report import write_tables
from .results import RecordError, differences
from .rundir import RunFolder
from .runs import load_runs
from .suites import Cell, Suite, expand, load_suite, teachers_needed
from .train import teacher_config, train_teacher
from .zoo import published_path, zoo_path


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- a cell's state


def cell_config(cell: Cell, extra: Optional[Dict[str, Any]] = None) -> RunConfig:
    """The cell's resolved config (with the runner's extra overrides), as its process will resolve it, checked
    against this machine; an error names the cell."""
    try:
        return check_run(resolve(deep_merge(cell.user_config(), extra or {})))
    except DatafreeError as e:  # the same error, naming the cell
        e.args = (f"cell {cell.name}: {e}",) + e.args[1:]
        raise


def classify(
    cell: Cell, extra: Optional[Dict[str, Any]] = None, device_kind: Optional[str] = None, threads: Optional[int] = None
) -> Tuple[str, str]:
    """``(state, why)``: ``finished`` (a record of exactly this cell), ``stale`` (a record of another config,
    teacher or thread count; ``why`` says which keys differ), ``partial`` (this cell's checkpoint), ``failed``
    or ``pending``. ``device_kind`` and ``threads``: where the cell will run and with how many CPU threads."""
    folder = RunFolder(cell.out)
    if not folder.has_records():
        return ("failed" if folder.read_error() is not None else "pending"), ""
    cfg = cell_config(cell, extra)
    ident = run_identity(cfg, device_kind=device_kind, threads=threads)
    if not folder.matches(ident):
        old, problem = folder.identity_problem()
        return "stale", differences(old, ident, problem=problem)
    if folder.is_finished():
        try:
            record = folder.read_record()
        except (OSError, RecordError) as e:
            return "stale", f"its summary.json cannot be used ({e})"
        if run_on_after_collapse(record, cfg):
            return "partial", "stopped on collapse, asked to run on: it resumes from its checkpoint"
        return "finished", ""
    return "partial", ""


def settle(
    cell: Cell, extra: Optional[Dict[str, Any]] = None, device_kind: Optional[str] = None, threads: Optional[int] = None
) -> Tuple[str, Optional[str], str]:
    """``(state, moved, why)``: :func:`classify` the cell and set a stale record aside (``moved`` is where it
    went). What the runner and the demo do with every cell before they run it."""
    state, why = classify(cell, extra, device_kind, threads)
    return state, (RunFolder(cell.out).set_aside() if state == "stale" else None), why


def cell_status(cell: Cell, extra: Optional[Dict[str, Any]] = None, threads: Optional[int] = None) -> str:
    try:
        return classify(cell, extra, threads=threads)[0]
    except DatafreeError:  # e.g. its teacher is not trained yet
        return "unverified" if RunFolder(cell.out).is_finished() else "pending"


def prepare_cell(cell: Cell, extra: Optional[Dict[str, Any]] = None) -> None:
    RunFolder(cell.out).write_cell(yaml.safe_dump(deep_merge(cell.user_config(), extra or {}), sort_keys=False))


def settle_cells(
    cells: Sequence[Cell],
    extra: Dict[str, Any],
    log: Callable[[str], None],
    device_kind: Optional[str] = None,
    threads: Optional[int] = None,
    no_teacher: Optional[Dict[tuple, str]] = None,
    check_config: bool = False,
    say_reused: bool = False,
) -> Tuple[List[Cell], int, int, List[Tuple[Cell, str]]]:
    r"""``(cells to run, reused, set aside, [(cell, error)])``: each cell :func:`settle`\ d (a record of exactly this
    cell reused, one of another config or teacher set aside and said) and its ``cell.yaml`` written. Whatever goes
    wrong with one cell (its config with ``check_config``, its teacher in ``no_teacher``, its folder in use or not
    a folder) is that cell's error, written to its ``error.json``: the others go on. What bench and the demo do
    before they run their cells."""
    todo: List[Cell] = []
    failed: List[Tuple[Cell, str]] = []
    reused = stale = 0
    for c in cells:
        try:
            if check_config:
                cell_config(c, extra)  # a bad config fails here, naming the cell, without starting a process
            key = (c.dataset, c.teacher, extra.get("model_zoo") or c.model_zoo)
            if no_teacher and key in no_teacher:
                raise DatafreeError(no_teacher[key])
            state, moved, why = settle(c, extra, device_kind, threads)
            if state == "finished":
                reused += 1
                if say_reused:
                    log(f"{c.name}: finished earlier with this config and teacher, reused")
                continue
            if moved:
                stale += 1
                log(f"{c.name}: record of another config or teacher ({why}), kept as {moved}")
            prepare_cell(c, extra)
        except Exception as e:  # noqa: BLE001
            failed.append((c, str(e) if isinstance(e, DatafreeError) else f"{type(e).__name__}: {e}"))
            with contextlib.suppress(OSError):
                record_cell_error(c.out, e)
            continue
        todo.append(c)
    return todo, reused, stale, failed


# --------------------------------------------------------------------------- teachers


def teacher_origin(dataset: str, model: str, zoo: Optional[str] = None) -> str:
    """Where a suite's named teacher comes from: a published file in the zoo, one trained here, or neither."""
    published = published_path(dataset, model, zoo)
    if published:
        return f"published file {os.path.relpath(published)} (used before any teacher trained here)"
    if os.path.isfile(zoo_path(dataset, model, zoo)):
        return f"trained here, {os.path.relpath(zoo_path(dataset, model, zoo))}"
    return (
        f"not in the zoo: trained here first with the suite's teacher_training recipe (or put the published "
        f"file in {os.path.relpath(os.path.dirname(zoo_path(dataset, model, zoo)))}/, see the README)"
    )


def _teacher_overrides(suite: Suite, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    over = deep_merge(suite.teacher_training, {"progress": False})
    if extra and extra.get("data_root"):
        over["data_root"] = extra["data_root"]
    if suite.plugins or (extra and extra.get("plugins")):
        over["plugins"] = list((extra or {}).get("plugins") or []) + list(suite.plugins)
    return over


def train_missing_teachers(
    suite: Suite, cells: Sequence[Cell], extra: Optional[Dict[str, Any]] = None
) -> Dict[tuple, str]:
    """Train the zoo teachers the cells need and lack, in the zoo the cells look in; return
    ``{(dataset, model, zoo): error}`` of those that failed (their cells fail, the others run)."""
    failed: Dict[tuple, str] = {}
    for dataset, model, zoo in teachers_needed(cells, extra):
        where = f"teacher {model} on {dataset}" + (f" (zoo {zoo})" if zoo else "")
        try:
            if published_path(dataset, model, zoo) or os.path.isfile(zoo_path(dataset, model, zoo)):
                _say(f"[bench {suite.name}] {where}: {teacher_origin(dataset, model, zoo)}")
                continue
            _say(f"[bench {suite.name}] training the {where} first")
            train_teacher(dataset, model, _teacher_overrides(suite, extra), zoo=zoo, log=_say)
        except Exception as e:  # noqa: BLE001 (one teacher's missing data must not stop the other pairs)
            failed[(dataset, model, zoo)] = f"its {where} could not be trained: {e}"
            _say(f"[bench {suite.name}] {failed[(dataset, model, zoo)]}")
    return failed


# --------------------------------------------------------------------------- the suite


def run_suite(
    path: str,
    seeds: Optional[List[int]] = None,
    only: Optional[str] = None,
    dry_run: bool = False,
    executor: str = "local",
    out: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
    tables: bool = True,
    **executor_opts: Any,
) -> Dict[str, Any]:
    """Run every cell of a suite that has no record of its own; return counts. ``extra`` overrides go into
    every cell.

    Every cell's config is resolved and checked before anything runs (an error names the cell), and so is
    every teacher recipe the suite would train.
    """
    extra = dict(extra or {})
    suite = load_suite(path, plugins=extra.get("plugins"))
    cells = expand(suite, seeds=seeds, only=only, out=out)
    root = out or suite.out
    for c in cells:  # a bad key or value in any cell fails here, before a teacher trains or a cell runs
        cell_config(c, extra)
    for dataset, model, _zoo in teachers_needed(cells, extra):  # and in the teacher recipes
        try:
            teacher_config(dataset, model, _teacher_overrides(suite, extra))
        except DatafreeError as e:  # the same error, naming the teacher and where its recipe is set
            e.args = (f"teacher {model} on {dataset} (the suite's teacher_training): {e}",) + e.args[1:]
            raise
    # the torch threads each cell gets: decided once, given to the executor, and what the records are judged by
    threads = cpu_threads(executor_opts.get("jobs") or 1) if executor == "local" else SLURM_CPUS_PER_TASK
    if dry_run:
        for dataset, model, zoo in teachers_needed(cells, extra):
            print(f"teacher {model} on {dataset}: {teacher_origin(dataset, model, zoo)}")
        states = [cell_status(c, extra, threads) for c in cells]
        for c, state in zip(cells, states):
            print(f"{state:<10} {c.name:<60} {c.out}")
        print(f"{len(cells)} cells ({states.count('finished')} finished) in suite {suite.name}")
        return {"cells": len(cells)}
    with DirLock(root, f"suite folder of {suite.name}"):
        return _run_locked(suite, cells, root, executor, extra, tables, threads, executor_opts)


def _run_locked(
    suite: Suite,
    cells: List[Cell],
    root: str,
    executor: str,
    extra: Dict[str, Any],
    tables: bool,
    threads: Optional[int],
    executor_opts: Dict[str, Any],
) -> Dict[str, Any]:
    t0 = time.time()
    name = suite.name
    no_teacher = train_missing_teachers(suite, cells, extra)
    device_kind = "cuda" if executor == "slurm" else None  # where the cells will run, not where bench runs
    todo, reused, stale, failed = settle_cells(
        cells, extra, lambda msg: _say(f"[bench {name}] {msg}"), device_kind, threads, no_teacher
    )
    failed0 = [(c.name, err) for c, err in failed]
    _say(
        f"[bench {name}] {len(cells)} cells: {reused} reused, {stale} stale -> rerun, "
        f"{len(todo) - stale} to run, {len(failed0)} failed to start ({executor} executor)"
    )
    state = {"done": 0, "failed": list(failed0), "diverged": 0, "stopped": [], "not_started": []}

    def done(cell: Cell, res: Dict[str, Any]) -> None:
        state["done"] += 1
        elapsed = time.time() - t0
        what = cell_outcome(cell, res, state)
        eta = elapsed / state["done"] * (len(todo) - state["done"])
        _say(
            f"[bench {name} {state['done']}/{len(todo)}] {cell.name}: {what} | elapsed {elapsed:.0f} s, eta {eta:.0f} s"
        )

    got: Dict[str, Any] = {"signal": None}
    if todo:
        runner = make_executor(executor, root, threads=threads, **executor_opts)
        with forward_signals(runner.stop) as got:
            runner.run(todo, done)
    wall = time.time() - t0
    if tables:
        write_suite_tables(suite, root)
    nfail = len(state["failed"])
    stopped, not_started = len(state["stopped"]), len(state["not_started"])
    ran = len(todo) - (nfail - len(failed0)) - stopped - not_started
    _say(
        f"[bench {name}] done in {wall:.0f} s: {ran} ran ({state['diverged']} diverged), {reused} reused, "
        f"{stale} stale -> rerun, {nfail} failed"
        + (f", {stopped} stopped" if stopped else "")
        + (f", {not_started} not started" if not_started else "")
    )
    for cell_name, err in state["failed"]:
        _say(f"  failed {cell_name}: {err}")
    if got["signal"] is not None:
        _say(
            f"[bench {name}] stopped by {signal.Signals(got['signal']).name}: {stopped} running cell(s) stopped and "
            f"saved, {not_started} not started; run the same command again to continue where they stopped"
        )
    return {
        "cells": len(cells),
        "ran": ran,
        "reused": reused,
        "stale": stale,
        "failed": nfail,
        "stopped": stopped,
        "not_started": not_started,
        "diverged": state["diverged"],
        "seconds": wall,
        "signal": got["signal"],
    }


def cell_outcome(cell: Cell, res: Dict[str, Any], state: Dict[str, Any]) -> str:
    """What became of a cell, counted into ``state``: its result, a divergence, a stop or a failure."""
    folder = RunFolder(cell.out)
    if res.get("not_started"):
        state["not_started"].append(cell.name)
        return "NOT STARTED (the suite was stopped first)"
    if res.get("stopped"):
        state["stopped"].append(cell.name)
        return "STOPPED (resumable: bench again continues it)"
    record = None
    if res.get("returncode") in (0, 3) and folder.is_finished():
        try:
            record = folder.read_record()
        except (OSError, RecordError) as e:
            res = {**res, "error": f"unreadable summary.json: {e}"}
    if record is None:
        state["failed"].append((cell.name, res.get("error", "")))
        return f"FAILED: {res.get('error', '')}"
    if record.status == "diverged":
        state["diverged"] += 1
        d = record.diverged or {}
        return f"DIVERGED at epoch {d.get('epoch')} step {d.get('step')} ({d.get('reason')})"

    def acc(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) else "-"

    last, best = acc(record.score("last")), acc(record.score("best"))
    return f"last {record.score_prefix}{last} best {best} ({res.get('seconds', 0):.0f} s)" + (
        " COLLAPSED" if record.status == "collapsed" else ""
    )


def write_suite_tables(suite: Suite, root: str) -> Optional[str]:
    df = load_runs(root)
    if len(df) == 0:
        return None
    return write_tables(
        df, root, title=f"Suite {suite.name}", reference=suite.reference, note=suite.raw.get("note", "")
    )
