"""``datafree demo``: every registered method on scikit-learn's digits, small budgets, several cells at a time.

What it does, in order:

1. Reads the demo suite (``benchmarks/suites/demo.yaml``: the methods whose entry lists ``demo`` under
   ``suites:``, each at the budget of its entry's ``demo:`` section). Presets (``hidfd:released``,
   ``cmi:fixed``: the entries registered as ``<method>:<preset>``) are left out unless ``--presets``: each is
   another protocol of a method the table already shows, and without them the demo fits in five minutes on
   two cores.
2. Prints an estimate of its time (stderr), from the measured costs beside the suite
   (``benchmarks/suites/demo_costs.yaml``: each cell's seconds at one torch thread, a cell process's start-up,
   the teacher's training, the rest): the cells still to run packed longest first onto the parallel slots
   (:func:`lpt_loads`), plus the teacher's training when it must be trained. A cell without a measured cost
   counts :data:`DEFAULT_CELL_SECONDS`.
3. Trains (or reuses) the digits teacher, in this process and on one torch thread, before any cell.
4. Settles every cell as ``datafree bench`` does (:func:`datafree.runner.settle`), then runs the rest through
   the benchmark runner's local executor (:mod:`datafree.executors`): one ``datafree distill`` process per
   cell, as many at once as the machine has cores (at most the number of cells), each on one torch thread
   (``threads=1`` in its config): these networks are too small to gain from a second thread (a Fast-DFKD
   cell: 24.7 s on one, 24.0 s on two, 27.8 s each with two cells side by side on the 2-core VM), so two cells
   on two cores take about half the time of one after the other. Each process spends about 8 s starting
   (torch, scikit-learn, the digits) before its run, which the cells' budgets leave room for. The longest
   cells start first, which is the packing the estimate assumes. Each cell's output goes to
   ``<cell>/log.txt``; a cell that fails is reported (and its ``error.json`` written) while the others go on.
   SIGTERM or Ctrl-C stops the running cells, which save their attempts; the next ``datafree demo`` continues
   them.
5. Writes ``<out>/README.md`` (both tables, of this demo's cells only: a preset left in ``<out>`` by an
   earlier ``--presets`` is not in them) and ``<out>/curves.png``, and ends with
   ``[demo] done in N s (estimated M s)``. ``--write-costs`` then rewrites the cost file from the records of
   this demo's cells (their wall time) and what this invocation measured (:func:`write_cost_file`).

A finished run is reused only when it is this run: the same config and the same teacher weights (by sha256,
:mod:`datafree.identity`), at the same thread count. A record of another teacher or config is kept aside as
``<run>.stale-<n>/`` and the run starts again; ``--fresh`` deletes every earlier run first. One demo owns its
output folder at a time (its lock).

The output goes to ``results/runs/demo/`` (git-ignored) by default, so that a fresh clone's ``make demo``
leaves ``git status`` clean: its teacher is trained on that machine, and teacher training is not
bit-identical across CPUs, so its runs are never the committed ones. ``results/demo/`` holds the record of our
own run (``datafree demo --out results/demo``), for comparison.
"""

from __future__ import annotations

import datetime
import os
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import yaml

from .config import deep_merge
from .errors import DatafreeError
from .executors import forward_signals, make_executor
from .lock import LOCK_NAME, DirLock
from .methods import preset_of
from .registry import load_plugins
from .report import write_tables
from .results import RecordError, atomic_write_text, empty_directory, machine
from .rundir import RunFolder
from .runner import cell_outcome, cell_status, settle_cells
from .runs import load_runs
from .suites import Cell, expand, load_suite, teachers_needed
from .train import needs_training, train_teacher

DEFAULT_SUITE = os.path.join("benchmarks", "suites", "demo.yaml")
DEFAULT_OUT = os.path.join("results", "runs", "demo")
COMMITTED = os.path.join("results", "demo", "README.md")

#: the torch threads of each demo cell: one, so that the cores run as many cells at once
CELL_THREADS = 1
#: the estimate's seconds for a cell its cost file does not list (a new method): a little over the measured median
#: (about 25 s at one thread on the 2-core VM of benchmarks/suites/demo_costs.yaml)
DEFAULT_CELL_SECONDS = 30.0
#: the estimate's values when there is no cost file: a cell process's start-up (importing torch, checking its
#: config), the teacher's training, and the rest (settling the cells, the tables and plots)
DEFAULT_STARTUP_SECONDS = 5.0
DEFAULT_TEACHER_SECONDS = 10.0
DEFAULT_OVERHEAD_SECONDS = 15.0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the estimate


@dataclass
class Costs:
    """A demo's measured costs, in seconds on the machine they name (a suite's ``<suite>_costs.yaml``)."""

    #: the run of each cell, by the suite's name for its method, at one torch thread (its record's wall time)
    cells: Dict[str, float] = field(default_factory=dict)
    startup: float = DEFAULT_STARTUP_SECONDS
    teacher: float = DEFAULT_TEACHER_SECONDS
    overhead: float = DEFAULT_OVERHEAD_SECONDS
    default: float = DEFAULT_CELL_SECONDS
    machine: str = "not measured"
    measured: str = ""
    slots: int = 0  # cells at once when measured (0: not said)
    path: Optional[str] = None  # the file they were read from, None for the defaults

    def cell(self, entry: str) -> float:
        """A cell's process from start to end: its start-up and its run."""
        return self.startup + self.cells.get(entry, self.default)


def costs_path(suite_path: str) -> str:
    """Where a suite's demo costs live: beside it, ``<suite>_costs.yaml``."""
    return os.path.splitext(suite_path)[0] + "_costs.yaml"


def load_costs(path: str) -> Costs:
    """The costs in ``path``; the defaults when there is no such file. A file that cannot be used is said and
    the defaults are used: the estimate is advice, and must not keep the demo from running."""
    if not os.path.isfile(path):
        return Costs()
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict) or not isinstance(raw.get("cells") or {}, dict):
            raise ValueError("not a mapping with a cells mapping")
        costs = Costs(
            cells={str(k): float(v) for k, v in (raw.get("cells") or {}).items()},
            machine=str(raw.get("machine", "not named")),
            measured=str(raw.get("measured", "")),
            slots=int(raw.get("slots") or 0),
            path=path,
        )
        for key in ("startup", "teacher", "overhead", "default"):
            if raw.get(key) is not None:
                setattr(costs, key, float(raw[key]))
        return costs
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        _say(f"[demo] the cost file {path} cannot be used ({e}); estimating with the defaults")
        return Costs()


def lpt_loads(costs: Sequence[float], slots: int) -> List[float]:
    """Longest processing time first: each cost, longest first, goes to the slot that is free soonest; the
    slots' total seconds. The executor starts the cells in that order on whichever slot frees first, so the
    largest load is the estimate of the cells' wall time (LPT is within 4/3 of the best packing)."""
    loads = [0.0] * max(1, slots)
    for c in sorted(costs, reverse=True):
        i = loads.index(min(loads))
        loads[i] += c
    return loads


def estimate_seconds(costs: Costs, entries: Sequence[str], slots: int, teacher: bool) -> float:
    """The demo's wall time: the cells ``entries`` to run packed onto ``slots``, the teacher's training when
    ``teacher``, and the rest (settling, tables)."""
    cells = max(lpt_loads([costs.cell(e) for e in entries], slots)) if entries else 0.0
    return cells + (costs.teacher if teacher else 0.0) + costs.overhead


# --------------------------------------------------------------------------- the cells


def split_presets(cells: Sequence[Cell], presets: bool) -> Tuple[List[Cell], List[Cell]]:
    """``(cells to run, presets left out)``: a cell whose method is a preset (``cmi:fixed``) runs only with
    ``presets``."""
    if presets:
        return list(cells), []
    keep = [c for c in cells if preset_of(c.method)[1] is None]
    return keep, [c for c in cells if preset_of(c.method)[1] is not None]


def _cpu_line() -> str:
    """The processor's model, for the cost file: ``machine()`` names only its architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def recorded_seconds(cells: Sequence[Cell]) -> Dict[str, Tuple[float, str]]:
    """``{entry: (seconds, machine)}`` of the cells with a record: its run's wall time (without its process's
    start-up) and the machine line it names (its thread count included)."""
    out: Dict[str, Tuple[float, str]] = {}
    for c in cells:
        folder = RunFolder(c.out)
        if not folder.is_finished():
            continue
        try:
            record = folder.read_record()
        except (OSError, RecordError):
            continue
        seconds = record.wall_seconds or record.total_seconds
        if seconds:
            out[c.entry] = (round(float(seconds), 1), record.machine or "")
    return out


def write_cost_file(path: str, costs: Costs) -> None:
    """Write ``costs`` to ``path``, headed by what each value is."""
    body = {
        "machine": costs.machine,
        "measured": costs.measured,
        "slots": costs.slots,
        "startup": round(costs.startup, 1),
        "teacher": round(costs.teacher, 1),
        "overhead": round(costs.overhead, 1),
        "default": costs.default,
        "cells": dict(sorted(costs.cells.items(), key=lambda kv: -kv[1])),
    }
    head = (
        "# The measured costs behind `datafree demo`'s estimate (datafree/demo.py), in seconds on the machine named\n"
        "# below. cells: each demo cell's run (its record's wall time) at one torch thread, with `slots` cells at\n"
        "# once; startup: a cell process before its run (importing torch, checking its config); teacher: training\n"
        "# the digits teacher; overhead: settling the cells and writing the tables; default: a cell not listed.\n"
        "# Written by `datafree demo --write-costs` (run it after changing a `demo:` budget), not by hand.\n"
    )
    atomic_write_text(path, head + yaml.safe_dump(body, sort_keys=False, width=120))


# --------------------------------------------------------------------------- the demo


def run_demo(
    suite: Optional[str] = None,
    out: str = DEFAULT_OUT,
    fresh: bool = False,
    data_root: Optional[str] = None,
    plugins: Optional[List[str]] = None,
    presets: bool = False,
    write_costs: bool = False,
    jobs: Optional[int] = None,
) -> str:
    """Run the demo (the module docstring says how) and return its README text. ``jobs``: cells at once
    (default: the machine's cores)."""
    with DirLock(out, "demo folder"):
        return _run_demo(suite or DEFAULT_SUITE, out, fresh, data_root, plugins, presets, write_costs, jobs)


def _demo_rows(out: str, cells: Sequence[Cell]):
    """``(rows, left out)``: the runs under ``out`` (:func:`datafree.runs.load_runs`) that are this demo's cells,
    and how many others there are: a preset run by an earlier ``--presets``, a method no longer in the demo, whose
    record was not checked against this demo's teacher and config."""
    df = load_runs(out)
    if len(df) == 0:
        return df, 0
    mine = {os.path.abspath(c.out) for c in cells}
    keep = df["run_dir"].map(lambda d: os.path.abspath(d) in mine)
    attrs = dict(df.attrs)  # the skipped and unfinished folders, which the tables list
    rows = df[keep]
    rows.attrs.update(attrs)
    return rows, int((~keep).sum())


def _note(path: str, out: str, presets: bool, wall: float, estimate: float, slots: int, counts: Dict[str, int]) -> str:
    """The README's note on this invocation: what ran, how, and how long it took."""
    where = re.sub(r" \(\d+ torch threads?\)", "", machine())  # this process's threads are not the cells'
    reused, stale = counts["reused"], counts["stale"]
    note = (
        f"`make demo` (`datafree demo`): every registered method on scikit-learn's 8x8 digits "
        f"(lenet5 -> lenet5_half), budgets from `{path}`"
        + ("" if presets else ", presets left out (`datafree demo --presets` runs them too)")
        + f". This invocation took {wall:.0f} s (estimated {estimate:.0f} s) on {where}, {slots} cells at a time "
        "on one torch thread each"
        + (
            f" ({reused} of {counts['cells']} runs finished earlier with the same config and teacher were reused)"
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
    return note


def _run_demo(
    path: str,
    out: str,
    fresh: bool,
    data_root: Optional[str],
    plugins: Optional[List[str]],
    presets: bool,
    write_costs: bool,
    jobs: Optional[int],
) -> str:
    t0 = time.time()
    load_plugins(plugins or [])
    if not os.path.isfile(path):
        raise DatafreeError(f"demo suite {path} not found: run from the repository root or pass --suite FILE")
    s = load_suite(path, plugins=plugins)
    if fresh and os.path.isdir(out):
        empty_directory(out, keep=(LOCK_NAME,))  # everything but the lock this process holds
    every = expand(s, out=out)
    cells, left_out = split_presets(every, presets)
    if left_out:
        _say(
            f"[demo] {len(left_out)} presets left out ({', '.join(c.entry for c in left_out)}); "
            "`datafree demo --presets` runs them too"
        )
    # every cell's config says one thread (it enters a CPU run's identity, so the records are judged by it too)
    extra: Dict[str, Any] = {"threads": CELL_THREADS}
    if data_root:
        extra["data_root"] = data_root
    if plugins:
        extra["plugins"] = list(plugins)
    # the teacher on one thread too: as fast as two for a LeNet on digits, and two threads that wait for each other
    # on a core another process holds are several times slower (28 s against 11 s for 10 epochs on a busy 2-core
    # VM). A recipe is the same on any number of threads, so a teacher trained on two is reused.
    recipe = deep_merge(s.teacher_training, {"progress": False, "threads": CELL_THREADS})
    if data_root:
        recipe["data_root"] = data_root
    teachers = teachers_needed(cells, extra)

    # the estimate: a teacher to train makes every record another teacher's, so every cell then runs
    costs = load_costs(costs_path(path))
    new_teacher = any(needs_training(d, m, recipe, zoo=z) for d, m, z in teachers)
    to_run = cells if fresh or new_teacher else [c for c in cells if cell_status(c, extra, CELL_THREADS) != "finished"]
    cores = jobs or os.cpu_count() or 1
    # each cell is told one thread (OMP_NUM_THREADS) as its config says; on a machine with GPUs, one per GPU
    runner = make_executor(
        "local", out, jobs=max(1, min(cores, len(to_run))) if to_run else cores, threads=CELL_THREADS
    )
    estimate = estimate_seconds(costs, [c.entry for c in to_run], runner.slots, new_teacher)
    _say(_estimate_line(estimate, costs, to_run, len(cells), runner.slots, new_teacher))

    t_teacher = time.time()
    teacher_seconds: Optional[float] = None
    for dataset, model, zoo in teachers:
        _say(f"[demo] teacher {model} on {dataset}")
        entry = train_teacher(dataset, model, recipe, zoo=zoo, log=_say, other_recipe="retrain")
        if isinstance(entry.get("seconds"), (int, float)):
            teacher_seconds = float(entry["seconds"])
    t_teacher = time.time() - t_teacher

    todo, reused, stale, failed = settle_cells(
        cells, extra, lambda msg: _say(f"[demo] {msg}"), threads=CELL_THREADS, check_config=True, say_reused=True
    )
    failures: Dict[str, str] = {}
    for cell, err in failed:  # one broken method must not stop the demo
        failures[cell.entry] = err
        _say(f"[demo] {cell.entry} failed: {err}")
    # longest first: the executor starts cells in this order on whichever slot frees first
    todo.sort(key=lambda c: -costs.cell(c.entry))
    state: Dict[str, Any] = {"done": 0, "failed": [], "diverged": 0, "stopped": [], "not_started": []}
    diverged: List[str] = []
    process_seconds: Dict[str, float] = {}
    lock = threading.Lock()

    def done(cell: Cell, res: Dict[str, Any]) -> None:
        with lock:  # the executor's threads report here one at a time
            state["done"] += 1
            before = state["diverged"]
            what = cell_outcome(cell, res, state)
            if state["diverged"] > before:
                diverged.append(cell.entry)
            if isinstance(res.get("seconds"), (int, float)) and not res.get("stopped"):
                process_seconds[cell.entry] = float(res["seconds"])
            _say(
                f"[demo {state['done']}/{len(todo)}] {cell.name}: {what} | elapsed {time.time() - t0:.0f} s "
                f"(estimated {estimate:.0f} s)"
            )

    t_cells = time.time()
    got: Dict[str, Any] = {"signal": None}
    if todo:
        _say(f"[demo] running {len(todo)} cells, {runner.slots} at a time (each one's output: its log.txt in {out})")
        with forward_signals(runner.stop) as got:
            runner.run(todo, done)
    t_cells = time.time() - t_cells
    names = {c.name: c.entry for c in cells}
    for name, err in state["failed"]:
        failures[names.get(name, name)] = err

    df, others = _demo_rows(out, cells)
    counts = {"cells": len(cells), "reused": reused, "stale": stale}
    note = _note(path, out, presets, time.time() - t0, estimate, runner.slots, counts)
    if others:
        note += (
            f"\n\n{others} finished run(s) in `{out}` that are not cells of this demo (presets, without "
            "`--presets`; methods no longer in it) are left out of the tables."
        )
    if diverged:
        note += "\n\nDiverged: " + ", ".join(diverged)
    if failures:
        note += "\n\nFailed: " + "; ".join(f"{m}: {e}" for m, e in failures.items())
    text = write_tables(df, out, title="Demo: every method on digits", note=note, reference=s.reference)
    print(text)
    wall = time.time() - t0
    _say(f"[demo] done in {wall:.0f} s (estimated {estimate:.0f} s): {out}/README.md, {out}/curves.png")
    if got["signal"] is not None:
        _say(
            f"[demo] stopped: {len(state['stopped'])} running cell(s) stopped and saved, "
            f"{len(state['not_started'])} not started; `datafree demo` again continues where they stopped"
        )
        raise KeyboardInterrupt
    if write_costs:
        known = {c.entry for c in every}
        _write_costs(
            path, cells, known, costs, runner.slots, process_seconds, teacher_seconds, wall - t_teacher - t_cells
        )
    if failures:
        raise DatafreeError(f"{len(failures)} demo method(s) failed: {', '.join(failures)}")
    return text


def _estimate_line(
    estimate: float, costs: Costs, to_run: Sequence[Cell], cells: int, slots: int, new_teacher: bool
) -> str:
    """The line the demo opens with: its estimate and what it rests on."""
    unmeasured = sorted({c.entry for c in to_run if c.entry not in costs.cells})
    return (
        f"[demo] estimated {estimate:.0f} s: {len(to_run)} of {cells} cells to run, {slots} at a time on one torch "
        "thread each, longest first"
        + (f", after training the teacher ({costs.teacher:.0f} s)" if new_teacher else "")
        + (
            f"; costs measured on {costs.machine} ({costs.measured}), {costs.path}"
            if costs.path
            else "; no cost file, every cell estimated at the defaults"
        )
        + (
            f"; {len(unmeasured)} without a measured cost ({', '.join(unmeasured)}) count {costs.default:.0f} s each"
            if unmeasured and costs.path
            else ""
        )
    )


def _write_costs(
    path: str,
    cells: Sequence[Cell],
    known: Set[str],
    old: Costs,
    slots: int,
    process_seconds: Dict[str, float],
    teacher: Optional[float],
    overhead: float,
) -> None:
    """``--write-costs``: the cost file beside the suite, from the records of this demo's cells and what this
    invocation measured. A cell process's start-up is the median of (its process's seconds - its record's wall
    time) over the cells that ran now; the teacher's, its zoo entry's training time. What this invocation did
    not measure keeps its old value, and so do the cells it did not hold (the presets of a demo without them);
    an entry the suite no longer has (``known``: every cell's, presets included) is dropped."""
    records = recorded_seconds(cells)
    starts = [process_seconds[e] - records[e][0] for e in process_seconds if e in records]
    cpu = _cpu_line()
    machines = sorted({m for _, m in records.values() if m}) or [old.machine]
    new = Costs(
        cells={e: s for e, s in old.cells.items() if e in known} | {e: s for e, (s, _) in records.items()},
        startup=max(0.0, statistics.median(starts)) if starts else old.startup,
        teacher=teacher if teacher is not None else old.teacher,
        overhead=overhead,
        default=old.default,
        machine="; ".join(machines) + (f"; {cpu}" if cpu else ""),
        measured=datetime.date.today().isoformat(),
        slots=slots if process_seconds else old.slots,
    )
    write_cost_file(costs_path(path), new)
    _say(f"[demo] wrote {costs_path(path)}: {len(records)} cells measured")
