"""Suite files: one paper table as pairs x methods x seeds, expanded into cells.

A suite file (``benchmarks/suites/<name>.yaml``) names the pairs, methods and
seeds of one table and the overrides that set its budget::

    name: demo
    out: results/demo
    dataset: digits
    pairs: [{teacher: lenet5, student: lenet5_half}]
    methods: [dafl, cmi]         # a list, or "*" / a pattern list; left out: every method whose entry lists
                                 # this suite under `suites:` (datafree/configs/methods/<name>.yaml)
    exclude: [fast]              # optional
    seeds: [0]
    reference: benchmarks/reference/cifar10.yaml   # published numbers for the table
    teacher_training: {epochs: 30}
    defaults: {samples: 32}      # applied to every cell
    budget: demo                 # each method's entry section of that name is its cell's budget
    overrides:                   # per method (dotted keys allowed)
      dafl: {epochs: 5, ep_steps: 40}
    variants:                    # a method under another name with its own settings (rows of their own)
      hidfd_rho0.1: {method: hidfd, tag: rho0.1, synth.rho: 0.1}
      cmi_init: {method: cmi, tag: init, pairs: [wrn40_2->wrn16_1], synth.init_from: data/set}  # some pairs only
    plugins: [my_plugin.py]      # imported first, like --plugin (a .py path is relative to the suite file)

Unknown keys are errors with suggestions (docs/suites.md lists every key).

:func:`expand` turns a suite into :class:`Cell` objects (method x pair x seed), each with a stable run folder
``<out>/<dataset>/<method>/<teacher>-<student>-s<seed>`` (:func:`datafree.rundir.run_path`: the teacher by its
name, or a file by its stem and sha256, never by its path).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import deep_merge, load_yaml
from .errors import ConfigError, UnknownNameError
from .methods import demo_layer, method_entry, methods_of_suite
from .names import label
from .registry import METHODS, load_builtins, load_plugins
from .rundir import run_path


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
    #: the teacher's name in folders and cell names (:func:`datafree.names.label`): never a raw path
    teacher_label: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.entry}/{self.teacher_label or 'none'}-{self.student}/s{self.seed}"

    @property
    def model_zoo(self) -> Optional[str]:
        """The zoo the cell's teacher is looked up in (the cell's ``model_zoo`` key, else the default)."""
        return self.overrides.get("model_zoo")

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
    budget: Optional[str] = None  # the method entry section each cell takes as its budget ("demo")
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
    "budget",
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
    layers = [("defaults", raw.get("defaults") or {})] + [
        (f"overrides.{m}", v) for m, v in (raw.get("overrides") or {}).items()
    ]
    layers += [
        (f"variants.{m}", {k: x for k, x in v.items() if k != "method"}) for m, v in (raw.get("variants") or {}).items()
    ]
    _refuse_identity_keys(path, layers)
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
            _refuse_identity_keys(path, pair_layers)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"suite {path}: seeds {seeds} lists a seed twice")
    ref = raw.get("reference")
    if ref and not os.path.isfile(ref):
        raise ConfigError(
            f"suite {path}: reference file {ref} does not exist (published numbers live in benchmarks/reference/)"
        )


#: a cell's identity (its folder, seed, pair and method) is the suite's layout, not an override
IDENTITY_KEYS = ("method", "dataset", "teacher", "student", "seed", "out")


def _refuse_identity_keys(path: str, layers: List[Tuple[str, Dict[str, Any]]]) -> None:
    for where, layer in layers:
        for k in IDENTITY_KEYS:
            if k in layer:
                raise ConfigError(
                    f"suite {path}: {where} sets {k!r}, which the suite's layout decides "
                    f"(pairs, seeds, methods, out); set it there instead"
                )


def _raw_suite(path: str, seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """A suite file's mapping, with ``extends: OTHER`` resolved: OTHER's keys under this file's (mappings
    merged, lists and values replaced); its ``name``, ``out`` and ``note`` are its own and do not pass on."""
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
    budget = raw.get("budget")
    if budget is not None and budget != "demo":
        raise ConfigError(
            f"suite {path}: budget must be demo (the method entry section each cell takes), got {budget!r}"
        )
    methods = raw.get("methods")
    if methods is None:  # the methods whose entries list this suite, then the suite's own variants
        methods = methods_of_suite(name) + list(variants)
        if not methods:
            raise ConfigError(
                f"suite {path} names no methods and no method entry lists {name!r} under suites: set "
                'methods: [...] (or "*" for every method)'
            )
    elif isinstance(methods, str):
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
        budget=budget,
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

                # suite defaults, the method's budget section, the suite's method overrides, then the pair's own
                # defaults and method overrides
                over = deep_merge(suite.defaults, _dotted(demo_layer(method)) if suite.budget == "demo" else {})
                over = deep_merge(over, method_layer(suite.overrides))
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
                cell.teacher_label = label(teacher, pair["dataset"])
                cell.out = run_path(root, pair["dataset"], entry, cell.teacher_label, pair["student"], seed)
                if only and not any(fnmatch.fnmatchcase(cell.name, pat) or pat in cell.name for pat in only.split(",")):
                    continue
                cells.append(cell)
    return cells


def teachers_needed(cells: Sequence[Cell], extra: Optional[Dict[str, Any]] = None) -> List[tuple]:
    """``(dataset, model, zoo)`` of the named zoo teachers the cells use, in order, once each: ``zoo`` is the
    cells' ``model_zoo`` (``extra``'s over the suite's; None: the default zoo), where they look their teacher up."""
    out = []
    for c in cells:
        key = (c.dataset, c.teacher, (extra or {}).get("model_zoo") or c.model_zoo)
        if c.teacher is None or os.path.isfile(c.teacher) or key in out:
            continue
        if method_entry(c.method).get("teacher", "x") is None:  # methods that use no teacher (scratch)
            continue
        out.append(key)
    return out
