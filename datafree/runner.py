"""Suites -> cells -> executors: a paper table from one command.

A suite file (``benchmarks/suites/<name>.yaml``) names the pairs, methods and
seeds of one table and the overrides that set its budget::

    name: demo
    out: results/demo
    dataset: digits
    pairs: [{teacher: lenet5, student: lenet5_half}]
    methods: "*"                 # every registered method, a pattern list, or a list
    exclude: [fast]              # optional
    seeds: [0]
    reference: benchmarks/reference/cifar10.yaml   # published numbers for the table
    teacher_training: {epochs: 30}
    defaults: {samples: 32}      # applied to every cell
    overrides:                   # per method (dotted keys allowed)
      dafl: {epochs: 5, ep_steps: 40}
    variants:                    # a method under another name with its own settings (rows of their own)
      hidfd_rho0.1: {method: hidfd, tag: rho0.1, synth.rho: 0.1}
      cmi_init: {method: cmi, tag: init, pairs: [wrn40_2->wrn16_1], synth.init_from: data/set}  # some pairs only
    plugins: [my_plugin.py]      # imported first, like --plugin (a .py path is relative to the suite file)

Unknown keys are errors with suggestions (docs/suites.md lists every key).

:func:`expand` turns a suite into :class:`Cell` objects (method x pair x seed),
each with a stable run directory ``<out>/<dataset>/<method>/<teacher>-<student>-s<seed>``.
:func:`run_suite` trains missing teachers once, then runs every unfinished cell in
its own process through an executor (``local``: one cell per visible GPU, one
at a time on CPU; ``slurm``/``submitit-local`` through submitit), records a
failed cell's error in ``error.json`` and goes on. Cells resume from their
checkpoints, so a killed suite continues where it stopped when run again.
A finished cell is reused only when its record's fingerprint is the cell's
(:mod:`datafree.identity`); a stale one is kept aside as ``<cell>.stale-<n>/``
and the cell runs again. One ``bench`` process owns a suite folder at a time.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from .config import deep_merge, load_yaml
from .errors import ConfigError, DatafreeError
from .methods import method_folder
from .results import atomic_write_json, atomic_write_text


@dataclass
class Cell:
    entry: str  # the suite's name for the cell's method (a method or a variant)
    method: str
    dataset: str
    teacher: Optional[str]
    student: str
    seed: int
    overrides: Dict[str, Any] = field(default_factory=dict)
    out: str = ""

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.entry}/{self.teacher or 'none'}-{self.student}/s{self.seed}"

    def user_config(self) -> Dict[str, Any]:
        base = {
            "method": self.method,
            "dataset": self.dataset,
            "teacher": self.teacher,
            "student": self.student,
            "seed": self.seed,
            "out": self.out,
        }
        return deep_merge(base, self.overrides)


@dataclass
class Suite:
    name: str
    out: str
    pairs: List[Dict[str, Any]]
    methods: List[str]
    seeds: List[int]
    defaults: Dict[str, Any]
    overrides: Dict[str, Dict[str, Any]]
    teacher_training: Dict[str, Any]
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    variant_pairs: Dict[str, List[str]] = field(default_factory=dict)  # a variant's own pairs, "teacher->student"
    reference: Optional[str] = None
    path: str = ""
    raw: Dict[str, Any] = field(default_factory=dict)
    plugins: List[str] = field(default_factory=list)


def _dotted(d: Dict[str, Any]) -> Dict[str, Any]:
    """Expand ``synth.lr_g: 1e-3`` keys inside YAML mappings into nested dicts."""
    out: Dict[str, Any] = {}
    for k, v in (d or {}).items():
        node = _dotted(v) if isinstance(v, dict) else v
        for part in reversed(str(k).split(".")):
            node = {part: node}
        out = deep_merge(out, node)
    return out


def find_suite(path: str) -> str:
    if os.path.isfile(path):
        return path
    here = os.path.join("benchmarks", "suites", f"{path}.yaml")
    if os.path.isfile(here):
        return here
    known = (
        sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join("benchmarks", "suites")))
        if os.path.isdir(os.path.join("benchmarks", "suites"))
        else []
    )
    from .errors import UnknownNameError

    raise UnknownNameError("suite", path, known)


#: every key a suite file may hold (docs/suites.md explains each)
SUITE_KEYS = (
    "name",
    "out",
    "dataset",
    "pairs",
    "methods",
    "exclude",
    "seeds",
    "reference",
    "teacher_training",
    "defaults",
    "overrides",
    "variants",
    "note",
    "plugins",
    "extends",
)
PAIR_KEYS = ("dataset", "teacher", "student", "defaults", "overrides")
#: the keys of a pair that name it (the others set its budget: the pair's own defaults and per-method overrides)
PAIR_NAME_KEYS = ("dataset", "teacher", "student")


def _check_suite_types(raw: Dict[str, Any], path: str) -> None:
    """Every suite value has the type docs/suites.md gives it; else one ConfigError naming key and value."""

    def bad(key: str, want: str) -> ConfigError:
        return ConfigError(f"suite {path}: {key} must be {want}, got {raw[key]!r}")

    def str_or_list(key: str) -> None:
        v = raw.get(key)
        if (
            v is not None
            and not isinstance(v, str)
            and not (isinstance(v, list) and all(isinstance(x, str) for x in v))
        ):
            raise bad(key, "a name or a list of names")

    for key in ("name", "out", "dataset", "reference", "note"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise bad(key, "a string")
    if "pairs" in raw and not isinstance(raw["pairs"], list):
        raise bad("pairs", "a list of {teacher, student} mappings")
    str_or_list("methods")
    str_or_list("exclude")
    str_or_list("plugins")
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
    ):
        raise bad("seeds", "a non-empty list of integers, e.g. [0, 1, 2]")
    for key in ("defaults", "teacher_training"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise bad(key, "a mapping of run-config keys")
    for key in ("overrides", "variants"):
        v = raw.get(key)
        if v is None:
            continue
        if not isinstance(v, dict) or not all(isinstance(x, dict) for x in v.values()):
            raise bad(key, "a mapping of method names to mappings of run-config keys")
    # a cell's identity (its folder, seed, pair and method) is the suite's layout, not an override
    identity_keys = ("method", "dataset", "teacher", "student", "seed", "out")
    layers = [("defaults", raw.get("defaults") or {})] + [
        (f"overrides.{m}", v) for m, v in (raw.get("overrides") or {}).items()
    ]
    layers += [
        (f"variants.{m}", {k: x for k, x in v.items() if k != "method"}) for m, v in (raw.get("variants") or {}).items()
    ]
    for where, layer in layers:
        for k in identity_keys:
            if k in layer:
                raise ConfigError(
                    f"suite {path}: {where} sets {k!r}, which the suite's layout decides "
                    f"(pairs, seeds, methods, out); set it there instead"
                )
    for name, v in (raw.get("variants") or {}).items():
        if not isinstance(v.get("method"), str):
            raise ConfigError(
                f"suite {path}: variant {name!r} must name its method (a string), got {v.get('method')!r}"
            )
    for p in raw.get("pairs") or []:
        if isinstance(p, dict):
            for k in PAIR_NAME_KEYS:
                if p.get(k) is not None and not isinstance(p[k], str):
                    raise ConfigError(f"suite {path}: pair {p!r}: {k} must be a string")
            name = f"{p.get('teacher')}->{p.get('student')}"
            if p.get("defaults") is not None and not isinstance(p["defaults"], dict):
                raise ConfigError(
                    f"suite {path}: pair {name}: defaults must be a mapping of run-config keys, got {p['defaults']!r}"
                )
            over = p.get("overrides")
            if over is not None and (not isinstance(over, dict) or not all(isinstance(x, dict) for x in over.values())):
                raise ConfigError(
                    f"suite {path}: pair {name}: overrides must be a mapping of method names to "
                    f"mappings of run-config keys, got {over!r}"
                )
            pair_layers = [(f"pair {name}: defaults", p.get("defaults") or {})]
            pair_layers += [(f"pair {name}: overrides.{m}", v) for m, v in (over or {}).items()]
            for where, layer in pair_layers:
                for k in identity_keys:
                    if k in layer:
                        raise ConfigError(
                            f"suite {path}: {where} sets {k!r}, which the suite's layout decides "
                            f"(pairs, seeds, methods, out); set it there instead"
                        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"suite {path}: seeds {seeds} lists a seed twice")
    ref = raw.get("reference")
    if ref and not os.path.isfile(ref):
        raise ConfigError(
            f"suite {path}: reference file {ref} does not exist (published numbers live in benchmarks/reference/)"
        )


def _raw_suite(path: str, seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """A suite file's mapping, with ``extends: OTHER`` resolved: OTHER's keys under this file's (mappings
    merged, lists and values replaced); its ``name``, ``out`` and ``note`` are its own and do not pass on."""
    from .errors import UnknownNameError

    raw = load_yaml(path)
    for k in raw:
        if k not in SUITE_KEYS:
            raise UnknownNameError(f"key in suite {path}", str(k), SUITE_KEYS)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    seen = (seen or []) + [os.path.abspath(path)]
    if not isinstance(parent, str):
        raise ConfigError(f"suite {path}: extends must name one suite (a name or a path), got {parent!r}")
    here = os.path.join(os.path.dirname(os.path.abspath(path)), f"{parent}.yaml")
    ppath = here if os.path.isfile(here) else find_suite(parent)
    if os.path.abspath(ppath) in seen:
        raise ConfigError(f"suite {path} extends itself through {parent}")
    base = {k: v for k, v in _raw_suite(ppath, seen).items() if k not in ("name", "out", "note")}
    return deep_merge(base, raw)


def load_suite(path: str, plugins: Optional[List[str]] = None) -> Suite:
    from .errors import UnknownNameError
    from .registry import METHODS, load_builtins, load_plugins

    load_builtins()
    path = find_suite(path)
    raw = _raw_suite(path)
    _check_suite_types(raw, path)
    suite_plugins = raw.get("plugins") or []
    suite_plugins = [suite_plugins] if isinstance(suite_plugins, str) else list(suite_plugins)
    # a plugin path in a suite file is relative to the suite file
    base = os.path.dirname(os.path.abspath(path))
    suite_plugins = [os.path.join(base, p) if p.endswith(".py") and not os.path.isabs(p) else p for p in suite_plugins]
    load_plugins(list(plugins or []) + suite_plugins)
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    dataset = raw.get("dataset")
    pairs = []
    for p in raw.get("pairs") or []:
        if not isinstance(p, dict) or "student" not in p:
            raise ConfigError(f"suite {path}: each pair needs a student (and usually a teacher): {p!r}")
        for k in p:
            if k not in PAIR_KEYS:
                raise UnknownNameError(f"key in a pair of suite {path}", str(k), PAIR_KEYS)
        ds = p.get("dataset", dataset)
        if not ds:
            raise ConfigError(f"suite {path}: pair {p!r} has no dataset (set `dataset:` at the top or in the pair)")
        pair_over = {k: _dotted(v) for k, v in (p.get("overrides") or {}).items()}
        for m in pair_over:
            if m not in METHODS and m not in (raw.get("variants") or {}):
                # a typo in a pair's overrides would silently skip them: fail with suggestions
                raise UnknownNameError(
                    f"method or variant in the overrides of pair {p.get('teacher')}->{p['student']} in suite {path}",
                    str(m),
                    METHODS.list() + list(raw.get("variants") or {}),
                )
        pairs.append(
            {
                "dataset": ds,
                "teacher": p.get("teacher"),
                "student": p["student"],
                "defaults": _dotted(p.get("defaults") or {}),
                "overrides": pair_over,
            }
        )
    if not pairs:
        raise ConfigError(f"suite {path} lists no pairs")
    seen = set()
    for p in pairs:
        key = (p["dataset"], p["teacher"], p["student"])  # a pair is named by these, not by its budget
        if key in seen:
            raise ConfigError(
                f"suite {path}: the pair {p['teacher']} -> {p['student']} on {p['dataset']} is listed twice"
            )
        seen.add(key)
    variants, variant_pairs = {}, {}
    pair_names = [f"{p['teacher']}->{p['student']}" for p in pairs]
    for vname, v in (raw.get("variants") or {}).items():
        v = _dotted(v)
        if "method" not in v:
            raise ConfigError(f"suite {path}: variant {vname!r} must name its method")
        METHODS.get(v["method"])
        if "pairs" in v:  # a row for some of the suite's pairs only (a teacher's own saved set, say)
            only = v.pop("pairs")
            if not isinstance(only, list) or not only or not all(isinstance(x, str) for x in only):
                raise ConfigError(
                    f'suite {path}: variant {vname!r}: pairs must be a list of "teacher->student" names, got {only!r}'
                )
            for x in only:
                if x not in pair_names:
                    raise UnknownNameError(f"pair of variant {vname!r} in suite {path}", x, pair_names)
            variant_pairs[vname] = list(only)
        variants[vname] = v
    methods = raw.get("methods", "*")
    if isinstance(methods, str):
        patterns = [m.strip() for m in methods.split(",")]
        known = METHODS.list() + list(variants)
        methods = [m for m in known if any(fnmatch.fnmatchcase(m, pat) for pat in patterns)]
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(m, pat) for m in known):
                METHODS.get(pat)  # a pattern that matches nothing is a typo: fail with suggestions
    else:
        for m in methods:
            if m not in variants:
                METHODS.get(m)  # unknown names fail here, with suggestions
    excluded = raw.get("exclude", []) or []
    excluded = set([excluded] if isinstance(excluded, str) else excluded)
    for m in excluded:
        if m not in variants and m not in METHODS:
            METHODS.get(m)  # a typo in exclude would silently keep the method: fail with suggestions
    methods = [m for m in methods if m not in excluded]
    overrides = {k: _dotted(v) for k, v in (raw.get("overrides") or {}).items()}
    for m in overrides:
        if m not in METHODS:
            METHODS.get(m)
    return Suite(
        name=name,
        out=raw.get("out") or os.path.join("results", name),
        pairs=pairs,
        methods=list(methods),
        seeds=[int(s) for s in raw.get("seeds", [0])],
        defaults=_dotted(raw.get("defaults", {})),
        overrides=overrides,
        teacher_training=_dotted(raw.get("teacher_training", {})),
        variants=variants,
        variant_pairs=variant_pairs,
        reference=raw.get("reference"),
        path=path,
        raw=raw,
        plugins=suite_plugins,
    )


def expand(
    suite: Suite, seeds: Optional[List[int]] = None, only: Optional[str] = None, out: Optional[str] = None
) -> List[Cell]:
    """Every (pair, method, seed) cell of the suite; ``only`` keeps names matching a pattern or substring."""
    cells = []
    root = out or suite.out
    for pair in suite.pairs:
        for entry in suite.methods:
            variant = dict(suite.variants.get(entry, {}))
            method = variant.pop("method", entry)
            if (
                entry in suite.variant_pairs
                and f"{pair['teacher']}->{pair['student']}" not in suite.variant_pairs[entry]
            ):
                continue
            for seed in seeds or suite.seeds:
                base = method.split(":")[0]  # a method's overrides apply to its presets (the preset's own win)

                def method_layer(table: Dict[str, Dict[str, Any]], method=method, base=base) -> Dict[str, Any]:
                    own = table.get(method, {})
                    return deep_merge(table.get(base, {}), own) if base != method else own

                # suite defaults, the suite's method overrides, then the pair's own defaults and method overrides
                over = deep_merge(suite.defaults, method_layer(suite.overrides))
                over = deep_merge(over, pair.get("defaults") or {})
                over = deep_merge(over, method_layer(pair.get("overrides") or {}))
                over = deep_merge(over, variant)
                if entry in suite.variants:  # a pair's budget for a variant goes over the variant's own
                    over = deep_merge(over, (pair.get("overrides") or {}).get(entry, {}))
                over = deep_merge(over, {"suite": suite.name})
                if suite.plugins:
                    over = deep_merge(over, {"plugins": list(suite.plugins)})
                teacher = pair["teacher"]
                cell = Cell(entry, method, pair["dataset"], teacher, pair["student"], seed, over)
                cell.out = os.path.join(
                    root,
                    pair["dataset"].replace(":", "_").replace("/", "_"),
                    method_folder(entry),
                    f"{teacher or 'none'}-{pair['student']}-s{seed}",
                )
                if only and not any(fnmatch.fnmatchcase(cell.name, pat) or pat in cell.name for pat in only.split(",")):
                    continue
                cells.append(cell)
    return cells


def teachers_needed(cells: Sequence[Cell]) -> List[tuple]:
    """(dataset, model) of the named zoo teachers the cells use, in order, once each."""
    from .methods import method_entry

    out = []
    for c in cells:
        if c.teacher is None or os.path.isfile(c.teacher) or (c.dataset, c.teacher) in out:
            continue
        entry = method_entry(c.method)
        if entry.get("teacher", "x") is None:  # methods that use no teacher (scratch)
            continue
        out.append((c.dataset, c.teacher))
    return out


def is_finished(cell: Cell) -> bool:
    """The cell has a summary (of whatever run: see :func:`classify` for whether it is this cell's)."""
    return os.path.isfile(os.path.join(cell.out, "summary.json"))


def cell_config(cell: Cell, extra: Optional[Dict[str, Any]] = None):
    """The cell's resolved config (with the runner's extra overrides), as its process will resolve it."""
    from .config import resolve

    return resolve(deep_merge(cell.user_config(), extra or {}))


def classify(cell: Cell, extra: Optional[Dict[str, Any]] = None, device_kind: Optional[str] = None) -> str:
    """``finished`` (a record of exactly this cell), ``stale`` (a record of another config or teacher),
    ``partial`` (this cell's checkpoint), ``failed`` or ``pending``."""
    from .identity import has_records, matches, run_identity

    if not has_records(cell.out):
        return "failed" if os.path.isfile(os.path.join(cell.out, "error.json")) else "pending"
    cfg = cell_config(cell, extra)
    if not matches(cell.out, run_identity(cfg, device_kind=device_kind)):
        return "stale"
    if is_finished(cell):
        try:
            s = json.load(open(os.path.join(cell.out, "summary.json")))
        except (OSError, ValueError):
            return "stale"
        from .engine import run_on_after_collapse

        if run_on_after_collapse(s, cfg):
            return "partial"  # stopped on collapse, asked to run on: it resumes from its checkpoint
        return "finished"
    return "partial"


def settle(cell: Cell, extra: Optional[Dict[str, Any]] = None, device_kind: Optional[str] = None) -> tuple:
    """``(status, moved)``: :func:`classify` the cell and set a stale record aside (``moved`` is where it went).
    What the runner and the demo do with every cell before they run it."""
    from .identity import set_aside

    status = classify(cell, extra, device_kind)
    return status, (set_aside(cell.out) if status == "stale" else None)


def cell_status(cell: Cell, extra: Optional[Dict[str, Any]] = None) -> str:
    try:
        return classify(cell, extra)
    except DatafreeError:  # e.g. its teacher is not trained yet
        if is_finished(cell):
            return "unverified"
        return "pending"


# --------------------------------------------------------------------------- one cell, one process


def cell_command(cell: Cell) -> List[str]:
    """The command that runs (or resumes) one cell from its ``cell.yaml``."""
    return [
        sys.executable,
        "-m",
        "datafree.cli",
        "distill",
        "--config",
        os.path.join(cell.out, "cell.yaml"),
        "--resume",
        "progress=false",
    ]


def prepare_cell(cell: Cell, extra: Optional[Dict[str, Any]] = None) -> None:
    os.makedirs(cell.out, exist_ok=True)
    atomic_write_text(
        os.path.join(cell.out, "cell.yaml"),
        yaml.safe_dump(deep_merge(cell.user_config(), extra or {}), sort_keys=False),
    )


def run_cell_process(cell_out: str, cmd: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run one cell's command, logging to ``<cell>/log.txt``; write ``error.json`` on failure."""
    t0 = time.time()
    log_path = os.path.join(cell_out, "log.txt")
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    result = {"returncode": proc.returncode, "seconds": time.time() - t0}
    err_path = os.path.join(cell_out, "error.json")
    # exit 3: the run diverged, and its summary says so; an outcome, not a failure
    if proc.returncode in (0, 3) and os.path.isfile(os.path.join(cell_out, "summary.json")):
        if os.path.isfile(err_path):
            os.unlink(err_path)
    else:
        result["error"] = _log_tail(log_path)
        atomic_write_json(err_path, {**result, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd})
    return result


def record_cell_error(cell_out: str, e: BaseException) -> Dict[str, Any]:
    """Write ``error.json`` for a cell that could not be started or run; return the result record."""
    import traceback

    res = {
        "returncode": -1,
        "seconds": 0.0,
        "error": f"{type(e).__name__}: {e}",
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:],
    }
    try:
        atomic_write_json(os.path.join(cell_out, "error.json"), {**res, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    except OSError:
        pass
    return res


def _log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = [l for l in text.splitlines() if l.strip()][-lines:]
    errors = [l for l in tail if l.startswith("error:") or "Error" in l]
    return (errors[-1] if errors else (tail[-1] if tail else "")).strip()


# --------------------------------------------------------------------------- executors


class LocalExecutor:
    """Run cells as local processes: one per visible GPU at a time, or ``jobs`` at a time on CPU (default 1).

    With several CPU jobs each cell gets an equal share of the cores (``OMP_NUM_THREADS``).
    """

    def __init__(self, gpus: Optional[int] = None, jobs: int = 1, poll: float = 0.5):
        if gpus is None:
            try:
                import torch

                gpus = torch.cuda.device_count()
            except Exception:
                gpus = 0
        self.gpus = gpus
        self.jobs = max(1, jobs)
        self.slots = gpus if gpus > 0 else self.jobs
        self.poll = poll

    def run(self, cells: Sequence[Cell], done: Callable[[Cell, Dict[str, Any]], None]) -> None:
        import threading

        queue = list(cells)
        free = list(range(self.slots))
        lock = threading.Lock()
        threads: List[threading.Thread] = []

        def work(cell: Cell, slot: int) -> None:
            # whatever goes wrong starting or running the cell is that cell's error: the slot always comes back
            try:
                env = dict(os.environ)
                if self.gpus > 0:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                elif self.jobs > 1:
                    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
                res = run_cell_process(cell.out, cell_command(cell), env)
            except BaseException as e:  # noqa: BLE001 (a thread that dies silently hangs the suite)
                res = record_cell_error(cell.out, e)
            finally:
                with lock:
                    free.append(slot)
            try:
                done(cell, res)
            except Exception as e:  # noqa: BLE001
                _say(f"[bench] reporting {cell.name} failed: {type(e).__name__}: {e}")

        while queue or any(t.is_alive() for t in threads):
            with lock:
                can_start = bool(queue) and bool(free)
                slot = free.pop(0) if can_start else None
            if can_start:
                t = threading.Thread(target=work, args=(queue.pop(0), slot), daemon=True)
                t.start()
                threads.append(t)
            else:
                time.sleep(self.poll)
        for t in threads:
            t.join()


def _submitit_job(cell_out: str, cmd: List[str]) -> Dict[str, Any]:
    return run_cell_process(cell_out, cmd)


class SubmititExecutor:
    """Run cells as Slurm jobs (or local submitit jobs for testing) through submitit."""

    def __init__(
        self,
        folder: str,
        cluster: Optional[str] = None,
        partition: Optional[str] = None,
        timeout_min: int = 24 * 60,
        gpus_per_node: int = 1,
        cpus_per_task: int = 8,
        parallelism: int = 32,
    ):
        try:
            import submitit
        except ImportError as e:
            raise DatafreeError("the slurm executor needs submitit: pip install 'datafree[slurm]'") from e
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params: Dict[str, Any] = {"timeout_min": timeout_min}
        if self.executor.cluster == "slurm":
            params.update(gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, slurm_array_parallelism=parallelism)
            if partition:
                params["slurm_partition"] = partition
        self.executor.update_parameters(**params)

    def run(self, cells: Sequence[Cell], done: Callable[[Cell, Dict[str, Any]], None]) -> None:
        jobs = []
        for c in cells:
            try:
                jobs.append((c, self.executor.submit(_submitit_job, c.out, cell_command(c))))
            except Exception as e:  # noqa: BLE001 (a refused submission is that cell's error)
                done(c, record_cell_error(c.out, e))
        pending = list(jobs)
        while pending:
            still = []
            for cell, job in pending:
                if job.done():
                    try:
                        res = job.result()
                    except Exception as e:  # the job itself died (time limit, node failure)
                        res = record_cell_error(cell.out, e)
                    try:
                        done(cell, res)
                    except Exception as e:  # noqa: BLE001 (reporting one cell must not end the wait for the others)
                        _say(f"[bench] reporting {cell.name} failed: {type(e).__name__}: {e}")
                else:
                    still.append((cell, job))
            pending = still
            if pending:
                time.sleep(1.0)


def make_executor(name: str, out: str, **opts: Any):
    if name == "local":
        return LocalExecutor(gpus=opts.get("gpus"), jobs=opts.get("jobs") or 1)
    if name in ("slurm", "submitit-local"):
        return SubmititExecutor(
            os.path.join(out, "submitit"),
            cluster="local" if name == "submitit-local" else None,
            partition=opts.get("partition"),
            timeout_min=opts.get("timeout_min") or 24 * 60,
            gpus_per_node=opts.get("gpus_per_job") or 1,
        )
    from .errors import UnknownNameError

    raise UnknownNameError("executor", name, ["local", "slurm", "submitit-local"])


# --------------------------------------------------------------------------- the suite


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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

    A cell is reused only when its record's fingerprint is the cell's (config with every default, teacher
    sha256, dataset); a record of another config or teacher is set aside as ``<cell>.stale-<n>/`` and the
    cell runs again. Every cell's config is resolved (and so validated) before anything runs.
    """
    from .lock import DirLock

    extra = dict(extra or {})
    suite = load_suite(path, plugins=extra.get("plugins"))
    cells = expand(suite, seeds=seeds, only=only, out=out)
    root = out or suite.out
    for c in cells:  # a bad key or value in any cell fails here, before a teacher trains or a cell runs
        cell_config(c, extra)
    for dataset, model in teachers_needed(cells):  # and in the teacher recipe (teacher_training may name one)
        from .train import teacher_config

        teacher_config(
            dataset, model, deep_merge(suite.teacher_training, {k: v for k, v in extra.items() if k == "data_root"})
        )
    if dry_run:
        for dataset, model in teachers_needed(cells):
            print(f"teacher {model} on {dataset}: {teacher_origin(dataset, model)}")
        for c in cells:
            print(f"{cell_status(c, extra):<10} {c.name:<60} {c.out}")
        print(
            f"{len(cells)} cells ({sum(cell_status(c, extra) == 'finished' for c in cells)} finished) "
            f"in suite {suite.name}"
        )
        return {"cells": len(cells)}
    with DirLock(root, f"suite folder of {suite.name}"):
        return _run_locked(suite, cells, root, executor, extra, tables, executor_opts)


def _run_locked(
    suite: Suite,
    cells: List[Cell],
    root: str,
    executor: str,
    extra: Dict[str, Any],
    tables: bool,
    executor_opts: Dict[str, Any],
) -> Dict[str, Any]:
    t0 = time.time()
    no_teacher = train_missing_teachers(suite, cells, extra)
    device_kind = "cuda" if executor == "slurm" else None  # where the cells will run, not where bench runs
    todo, reused, stale, failed0 = [], 0, 0, []
    for c in cells:
        # whatever goes wrong with one cell (its teacher is missing, its folder is in use or not a folder) is
        # that cell's error: the suite goes on with the others
        try:
            if (c.dataset, c.teacher) in no_teacher:
                raise DatafreeError(no_teacher[(c.dataset, c.teacher)])
            status, moved = settle(c, extra, device_kind)
            if status == "finished":
                reused += 1
                continue
            if moved:
                stale += 1
                _say(f"[bench {suite.name}] {c.name}: record of another config or teacher, kept as {moved}")
            prepare_cell(c, extra)
        except Exception as e:  # noqa: BLE001
            failed0.append((c.name, f"{type(e).__name__}: {e}" if not isinstance(e, DatafreeError) else str(e)))
            try:
                os.makedirs(c.out, exist_ok=True)
                record_cell_error(c.out, e)
            except OSError:
                pass
            continue
        todo.append(c)
    _say(
        f"[bench {suite.name}] {len(cells)} cells: {reused} reused, {stale} stale -> rerun, "
        f"{len(todo) - stale} to run, {len(failed0)} failed to start ({executor} executor)"
    )
    state = {"done": 0, "failed": list(failed0), "diverged": 0}

    def done(cell: Cell, res: Dict[str, Any]) -> None:
        state["done"] += 1
        ok = res.get("returncode") in (0, 3) and is_finished(cell)
        elapsed = time.time() - t0
        if ok:
            try:
                s = json.load(open(os.path.join(cell.out, "summary.json")))
            except (OSError, ValueError) as e:
                s, ok = {}, False
                res = {**res, "error": f"unreadable summary.json: {e}"}
        if ok and s.get("status") == "diverged":
            state["diverged"] += 1
            d = s.get("diverged", {})
            what = f"DIVERGED at epoch {d.get('epoch')} step {d.get('step')} ({d.get('reason')})"
        elif ok:
            acc = lambda k: f"{s[k]:.2f}" if isinstance(s.get(k), (int, float)) else "-"  # noqa: E731
            what = f"last {acc('last_acc')} best {acc('best_acc')} ({res.get('seconds', 0):.0f} s)" + (
                " COLLAPSED" if s.get("status") == "collapsed" else ""
            )
        else:
            state["failed"].append((cell.name, res.get("error", "")))
            what = f"FAILED: {res.get('error', '')}"
        eta = elapsed / state["done"] * (len(todo) - state["done"])
        _say(
            f"[bench {suite.name} {state['done']}/{len(todo)}] {cell.name}: {what} | elapsed {elapsed:.0f} s, "
            f"eta {eta:.0f} s"
        )

    if todo:
        make_executor(executor, root, **executor_opts).run(todo, done)
    wall = time.time() - t0
    if tables:
        write_suite_tables(suite, root)
    nfail = len(state["failed"])
    ran = len(todo) - (nfail - len(failed0))
    _say(
        f"[bench {suite.name}] done in {wall:.0f} s: {ran} ran ({state['diverged']} diverged), {reused} reused, "
        f"{stale} stale -> rerun, {nfail} failed"
    )
    for name, err in state["failed"]:
        _say(f"  failed {name}: {err}")
    return {
        "cells": len(cells),
        "ran": ran,
        "reused": reused,
        "stale": stale,
        "failed": nfail,
        "diverged": state["diverged"],
        "seconds": wall,
    }


def train_missing_teachers(
    suite: Suite, cells: Sequence[Cell], extra: Optional[Dict[str, Any]] = None
) -> Dict[tuple, str]:
    """Train the zoo teachers the cells need and lack; return ``{(dataset, model): error}`` of those that failed
    (their cells fail, the others run)."""
    failed: Dict[tuple, str] = {}
    for dataset, model in teachers_needed(cells):
        try:
            _train_one_teacher(suite, dataset, model, extra)
        except Exception as e:  # noqa: BLE001 (one teacher's missing data must not stop the other pairs)
            failed[(dataset, model)] = f"its teacher {model} on {dataset} could not be trained: {e}"
            _say(f"[bench {suite.name}] {failed[(dataset, model)]}")
    return failed


def teacher_origin(dataset: str, model: str) -> str:
    """Where a suite's named teacher comes from: a published file in the zoo, one trained here, or neither."""
    from .zoo import published_path, zoo_path

    published = published_path(dataset, model)
    if published:
        return f"published file {os.path.relpath(published)} (used before any teacher trained here)"
    if os.path.isfile(zoo_path(dataset, model)):
        return f"trained here, {os.path.relpath(zoo_path(dataset, model))}"
    return (
        f"not in the zoo: trained here first with the suite's teacher_training recipe (or put the published "
        f"file in {os.path.relpath(os.path.dirname(zoo_path(dataset, model)))}/, see the README)"
    )


def _train_one_teacher(suite: Suite, dataset: str, model: str, extra: Optional[Dict[str, Any]]) -> None:
    from .train import train_teacher
    from .zoo import published_path, zoo_path

    if published_path(dataset, model) or os.path.isfile(zoo_path(dataset, model)):
        _say(f"[bench {suite.name}] teacher {model} on {dataset}: {teacher_origin(dataset, model)}")
        return
    _say(f"[bench {suite.name}] training the {model} teacher on {dataset} first")
    over = deep_merge(suite.teacher_training, {"progress": False})
    if extra and extra.get("data_root"):
        over["data_root"] = extra["data_root"]
    if suite.plugins or (extra and extra.get("plugins")):
        over["plugins"] = list((extra or {}).get("plugins") or []) + list(suite.plugins)
    train_teacher(dataset, model, over, log=_say)


def write_suite_tables(suite: Suite, root: str) -> Optional[str]:
    from .report import write_tables
    from .results import load_runs

    df = load_runs(root)
    if len(df) == 0:
        return None
    return write_tables(
        df, root, title=f"Suite {suite.name}", reference=suite.reference, note=suite.raw.get("note", "")
    )
