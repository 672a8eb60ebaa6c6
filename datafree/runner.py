"""Suites -> cells -> runs.

A suite file (``benchmarks/suites/<name>.yaml``) names the pairs, methods and
seeds of one table and the overrides that set its budget::

    name: demo
    out: results/demo
    dataset: digits
    pairs: [{teacher: lenet5, student: lenet5_half}]
    methods: "*"                 # every registered method, or a list
    seeds: [0]
    teacher_training: {epochs: 30}
    defaults: {samples: 32}      # applied to every cell
    overrides:                   # per method (dotted keys allowed)
      dafl: {epochs: 5, ep_steps: 40}

:func:`expand` turns it into :class:`Cell` objects, one run each, with a
stable run directory ``<out>/<dataset>/<method>/<teacher>-<student>-s<seed>``.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .config import deep_merge, load_yaml
from .errors import ConfigError


@dataclass
class Cell:
    method: str
    dataset: str
    teacher: Optional[str]
    student: str
    seed: int
    overrides: Dict[str, Any] = field(default_factory=dict)
    out: str = ""

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.method}/{self.teacher or 'none'}-{self.student}/s{self.seed}"

    def user_config(self) -> Dict[str, Any]:
        base = {"method": self.method, "dataset": self.dataset, "teacher": self.teacher, "student": self.student,
                "seed": self.seed, "out": self.out}
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
    reference: Optional[str] = None
    path: str = ""
    raw: Dict[str, Any] = field(default_factory=dict)


def _dotted(d: Dict[str, Any]) -> Dict[str, Any]:
    """Expand ``synth.lr_g: 1e-3`` keys inside YAML mappings into nested dicts."""
    out: Dict[str, Any] = {}
    for k, v in (d or {}).items():
        node = _dotted(v) if isinstance(v, dict) else v
        for part in reversed(str(k).split(".")):
            node = {part: node}
        out = deep_merge(out, node)
    return out


def load_suite(path: str) -> Suite:
    from .registry import METHODS, load_builtins

    load_builtins()
    if not os.path.isfile(path):
        here = os.path.join("benchmarks", "suites", f"{path}.yaml")
        if os.path.isfile(here):
            path = here
    raw = load_yaml(path)
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    dataset = raw.get("dataset")
    pairs = []
    for p in raw.get("pairs") or []:
        if not isinstance(p, dict) or "student" not in p:
            raise ConfigError(f"suite {path}: each pair needs a student (and usually a teacher): {p!r}")
        pairs.append({"dataset": p.get("dataset", dataset), "teacher": p.get("teacher"), "student": p["student"]})
    if not pairs:
        raise ConfigError(f"suite {path} lists no pairs")
    methods = raw.get("methods", "*")
    if isinstance(methods, str):
        patterns = [m.strip() for m in methods.split(",")]
        methods = [m for m in METHODS.list() if any(fnmatch.fnmatchcase(m, pat) for pat in patterns)]
    else:
        for m in methods:
            METHODS.get(m)  # unknown names fail here, with suggestions
    excluded = set(raw.get("exclude", []) or [])
    methods = [m for m in methods if m not in excluded]
    return Suite(
        name=name, out=raw.get("out") or os.path.join("results", name), pairs=pairs, methods=list(methods),
        seeds=[int(s) for s in raw.get("seeds", [0])], defaults=_dotted(raw.get("defaults", {})),
        overrides={k: _dotted(v) for k, v in (raw.get("overrides") or {}).items()},
        teacher_training=_dotted(raw.get("teacher_training", {})), reference=raw.get("reference"), path=path,
        raw=raw,
    )


def expand(suite: Suite, seeds: Optional[List[int]] = None, only: Optional[str] = None,
           out: Optional[str] = None) -> List[Cell]:
    cells = []
    root = out or suite.out
    for pair in suite.pairs:
        for method in suite.methods:
            for seed in seeds or suite.seeds:
                over = deep_merge(suite.defaults, suite.overrides.get(method, {}))
                over = deep_merge(over, {"suite": suite.name})
                teacher = pair["teacher"]
                cell = Cell(method, pair["dataset"], teacher, pair["student"], seed, over)
                cell.out = os.path.join(root, pair["dataset"].replace(":", "_").replace("/", "_"), method,
                                        f"{teacher or 'none'}-{pair['student']}-s{seed}")
                if only and not fnmatch.fnmatchcase(cell.name, only) and only not in cell.name:
                    continue
                cells.append(cell)
    return cells


def teachers_needed(cells: List[Cell]) -> List[tuple]:
    """(dataset, model) of the named zoo teachers the cells use, in order, once each."""
    out = []
    for c in cells:
        if c.teacher and not os.path.isfile(c.teacher) and (c.dataset, c.teacher) not in out:
            out.append((c.dataset, c.teacher))
    return out


def is_finished(cell: Cell) -> bool:
    return os.path.isfile(os.path.join(cell.out, "summary.json"))
