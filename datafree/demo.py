"""``datafree demo``: every registered method on scikit-learn's digits, small budgets.

Trains (or reuses) the digits teacher, runs each method of the demo suite in
turn (a finished run is reused; ``--fresh`` starts over), then writes
``results/demo/README.md`` (both tables) and ``results/demo/curves.png``.
A method that fails is reported and the others go on.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from typing import List, Optional

from .config import deep_merge, resolve
from .engine import Engine
from .errors import DatafreeError
from .registry import load_plugins
from .runner import expand, is_finished, load_suite, teachers_needed

DEFAULT_SUITE = os.path.join("benchmarks", "suites", "demo.yaml")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(suite: Optional[str] = None, out: str = os.path.join("results", "demo"), fresh: bool = False,
             data_root: Optional[str] = None, plugins: Optional[List[str]] = None) -> str:
    from .report import write_tables
    from .results import load_runs, machine
    from .train import train_teacher

    load_plugins(plugins or [])
    path = suite or DEFAULT_SUITE
    if not os.path.isfile(path):
        raise DatafreeError(f"demo suite {path} not found: run from the repository root or pass --suite FILE")
    s = load_suite(path)
    if fresh and os.path.isdir(out):
        shutil.rmtree(out)
    cells = expand(s, out=out)
    t0 = time.time()
    extra = {"data_root": data_root} if data_root else {}
    for dataset, model in teachers_needed(cells):
        _say(f"[demo] teacher {model} on {dataset}")
        train_teacher(dataset, model, deep_merge(s.teacher_training, extra), log=_say)
    failures, reused = {}, 0
    for i, cell in enumerate(cells, 1):
        if is_finished(cell):
            _say(f"[demo {i}/{len(cells)}] {cell.name}: finished earlier, reused")
            reused += 1
            continue
        _say(f"[demo {i}/{len(cells)}] {cell.name}")
        try:
            cfg = resolve(deep_merge(cell.user_config(), extra))
            Engine(cfg, resume=True).run()
        except Exception as e:  # one broken method must not stop the demo
            failures[cell.entry] = f"{type(e).__name__}: {e}"
            _say(f"[demo] {cell.entry} failed: {e}")
            traceback.print_exc()
    wall = time.time() - t0
    df = load_runs(out)
    note = (f"`make demo` (`datafree demo`): every registered method on scikit-learn's 8x8 digits "
            f"(lenet5 -> lenet5_half), budgets from `{path}`. This invocation took {wall:.0f} s on {machine()}"
            + (f" ({reused} of {len(cells)} runs finished earlier were reused)" if reused else "") + ". "
            "Budgets are tiny: the table shows that every method runs end to end and what it makes of a few "
            "seconds of CPU each, not what it reaches with its published schedule.")
    if failures:
        note += "\n\nFailed: " + "; ".join(f"{m}: {e}" for m, e in failures.items())
    text = write_tables(df, out, title="Demo: every method on digits", note=note, reference=s.reference)
    print(text)
    _say(f"[demo] done in {wall:.0f} s: {out}/README.md, {out}/curves.png")
    if failures:
        raise DatafreeError(f"{len(failures)} demo method(s) failed: {', '.join(failures)}")
    return text
