"""``datafree demo``: every registered method on scikit-learn's digits, small budgets.

Trains (or reuses) the digits teacher, runs each method of the demo suite in
turn, then writes ``<out>/README.md`` (both tables) and ``<out>/curves.png``.
A method that fails is reported and the others go on.

A finished run is reused only when it is this run: the same config and the
same teacher weights (by sha256, :mod:`datafree.identity`). A record of
another teacher or config is kept aside as ``<run>.stale-<n>/`` and the run
starts again; ``--fresh`` deletes every earlier run first.

The output goes to ``results/runs/demo/`` (git-ignored) by default, so that
a fresh clone's ``make demo`` leaves ``git status`` clean: its teacher is
trained on that machine, and teacher training is not bit-identical across
CPUs, so its runs are never the committed ones. ``results/demo/`` holds the
record of our own run (``datafree demo --out results/demo``), for
comparison.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import List, Optional

from .config import deep_merge
from .engine import Engine
from .errors import DatafreeError
from .lock import LOCK_NAME, DirLock
from .methods import resolve
from .registry import load_plugins
from .report import write_tables
from .results import empty_directory, machine
from .runner import settle
from .runs import load_runs
from .suites import expand, load_suite, teachers_needed
from .train import train_teacher

DEFAULT_SUITE = os.path.join("benchmarks", "suites", "demo.yaml")
DEFAULT_OUT = os.path.join("results", "runs", "demo")
COMMITTED = os.path.join("results", "demo", "README.md")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(
    suite: Optional[str] = None,
    out: str = DEFAULT_OUT,
    fresh: bool = False,
    data_root: Optional[str] = None,
    plugins: Optional[List[str]] = None,
) -> str:
    with DirLock(out, "demo folder"):
        return _run_demo(suite, out, fresh, data_root, plugins)


def _run_demo(
    suite: Optional[str], out: str, fresh: bool, data_root: Optional[str], plugins: Optional[List[str]]
) -> str:
    load_plugins(plugins or [])
    path = suite or DEFAULT_SUITE
    if not os.path.isfile(path):
        raise DatafreeError(f"demo suite {path} not found: run from the repository root or pass --suite FILE")
    s = load_suite(path, plugins=plugins)
    if fresh and os.path.isdir(out):
        empty_directory(out, keep=(LOCK_NAME,))  # everything but the lock this process holds
    cells = expand(s, out=out)
    t0 = time.time()
    extra = {"data_root": data_root} if data_root else {}
    for dataset, model, zoo in teachers_needed(cells, extra):
        _say(f"[demo] teacher {model} on {dataset}")
        train_teacher(
            dataset,
            model,
            deep_merge(deep_merge(s.teacher_training, {"progress": False}), extra),
            zoo=zoo,
            log=_say,
            other_recipe="retrain",
        )
    failures, reused, stale, diverged = {}, 0, 0, []
    for i, cell in enumerate(cells, 1):
        try:
            status, moved, _why = settle(cell, extra)
            if status == "finished":
                _say(f"[demo {i}/{len(cells)}] {cell.name}: finished earlier with this config and teacher, reused")
                reused += 1
                continue
            if moved:
                stale += 1
                _say(
                    f"[demo {i}/{len(cells)}] {cell.name}: earlier record of another config or teacher kept as "
                    f"{moved}; running it again"
                )
            else:
                _say(f"[demo {i}/{len(cells)}] {cell.name}")
            cfg = resolve(deep_merge(cell.user_config(), extra))
            record = Engine(cfg, resume=True).run()
            if record.status == "diverged":
                diverged.append(cell.entry)
        except Exception as e:  # one broken method must not stop the demo
            failures[cell.entry] = f"{type(e).__name__}: {e}"
            _say(f"[demo] {cell.entry} failed: {e}")
            traceback.print_exc()
    wall = time.time() - t0
    df = load_runs(out)
    note = (
        f"`make demo` (`datafree demo`): every registered method on scikit-learn's 8x8 digits "
        f"(lenet5 -> lenet5_half), budgets from `{path}`. This invocation took {wall:.0f} s on {machine()}"
        + (
            f" ({reused} of {len(cells)} runs finished earlier with the same config and teacher were reused)"
            if reused
            else ""
        )
        + (f"; {stale} earlier records of another config or teacher were set aside and run again" if stale else "")
        + ". "
        "Budgets are tiny: the table shows that every method runs end to end and what it makes of a few "
        "seconds of CPU each, not what it reaches with its published schedule."
    )
    if os.path.abspath(out) != os.path.abspath(os.path.dirname(COMMITTED)) and os.path.isfile(COMMITTED):
        note += (
            f"\n\nThe committed record of our own run, for comparison: `{COMMITTED}` (another machine, so "
            "another teacher: numbers differ in the details)."
        )
    if diverged:
        note += "\n\nDiverged: " + ", ".join(diverged)
    if failures:
        note += "\n\nFailed: " + "; ".join(f"{m}: {e}" for m, e in failures.items())
    text = write_tables(df, out, title="Demo: every method on digits", note=note, reference=s.reference)
    print(text)
    _say(f"[demo] done in {wall:.0f} s: {out}/README.md, {out}/curves.png")
    if failures:
        raise DatafreeError(f"{len(failures)} demo method(s) failed: {', '.join(failures)}")
    return text
