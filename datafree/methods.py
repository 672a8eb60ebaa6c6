"""Method entries: YAML files naming one synthesizer and one distiller.

A method file (``datafree/configs/methods/<name>.yaml``) is a partial
:class:`~datafree.config.RunConfig` plus optional sections:

``extends``
    another method whose entry this one starts from (presets such as ``fast10``);
``datasets``
    per-dataset layers (``mnist: {epochs: 20}``); a section applies to its dataset's family (every
    1-channel 28/32-pixel dataset takes ``mnist``'s), see :func:`dataset_section`;
``students``
    per-architecture layers keyed by a shell pattern of the student's name (``lenet5*: {optim: {lr: 0.01}}``);
``pairs``
    per-pair layers keyed ``<dataset>/<teacher>-<student>``;
``about``
    free text shown by ``datafree list methods`` (paper, source of defaults);
``sources``
    where the values come from, in short: ``{cifar10: "zju-vipa/CMI scripts/dafl/... + datafree_kd.py:255-265",
    mnist: ..., cifar10/resnet34-resnet18: ...}`` keyed by dataset or pair (``datafree list methods --sources``;
    docs/fidelity.md has the long form);
``order``
    where the method's rows stand in every table (the papers' order: the reference rows first, then by the
    year of the method); a preset follows its method, a method without one follows the others by name;
``demo``
    the method's budget in ``datafree demo``, a layer of run-config keys over its entry (a few CPU-seconds);
``suites``
    the suites the method is a row of (``[cifar10, mnist]``): a suite whose ``methods:`` is left out runs
    every method that names it, so a new method joins a table from its own file;
``tasks``
    the tasks the method serves (``[classification, segmentation]``; left out: ``[classification]``): a run of
    it on a dataset of another task is refused with one line (:func:`check_method_task`);
``presets``
    named variants of the method, each registered as the method ``<name>:<preset>`` (e.g. ``hidfd:released``):
    a preset is an entry that extends this one (its own ``about``, values and sections). The convention:
    the plain name runs the protocol behind the number a table sets it beside; a preset is another protocol
    (``:paper``, ``:fixed``, ``:released``), documented on the method's page.

Plugins add methods with :func:`register_method` (a dict or a YAML path).

:func:`resolve` turns a method name, a user config and overrides into the complete :class:`RunConfig` of a
run (every synthesizer and distiller default filled in, values checked). Importing this module registers the
built-in method files.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib
import os
from typing import Any, Dict, List, Optional

from .config import (
    RunConfig,
    set_provenance,
    build_dataclass,
    check_method_values,
    deep_merge,
    load_yaml,
    pair_key,
    to_dict,
    validate,
)
from . import catalog, loggers
from .errors import ConfigError, DatafreeError
from .names import ARCH_ALIASES, name_from_file
from .registry import METHODS, load_plugins

METHOD_DIR = os.path.join(os.path.dirname(__file__), "configs", "methods")
_SECTIONS = (
    "extends",
    "datasets",
    "students",
    "pairs",
    "about",
    "presets",
    "sources",
    "order",
    "demo",
    "suites",
    "tasks",
)
#: a preset's name: letters, digits, ``_``, ``.`` and ``-`` (it becomes part of the method name and run folders)
_PRESET_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def register_method(name: str, entry: Any, override: bool = False) -> Dict[str, Any]:
    """Register a method from a dict or a YAML file path (``str`` or any ``os.PathLike``)."""
    if isinstance(entry, (str, os.PathLike)):
        entry = load_yaml(os.fspath(entry))
    if not isinstance(entry, dict):
        raise ConfigError(f"method {name!r}: entry must be a mapping or a YAML file path, got {type(entry).__name__}")
    if "synthesizer" not in entry and "extends" not in entry:
        raise ConfigError(f"method {name!r}: entry must name a synthesizer (or extend a method)")
    sources = entry.get("sources") or {}
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise ConfigError(
            f"method {name!r}: sources must map a dataset or a pair (cifar10/resnet34-resnet18) "
            f"to one line of text, got {sources!r}"
        )
    if "order" in entry and (not isinstance(entry["order"], (int, float)) or isinstance(entry["order"], bool)):
        raise ConfigError(f"method {name!r}: order must be a number (its place in the tables), got {entry['order']!r}")
    if "demo" in entry and not isinstance(entry["demo"], dict):
        raise ConfigError(f"method {name!r}: demo must be a mapping of run-config keys, got {entry['demo']!r}")
    suites = entry.get("suites", [])
    if not isinstance(suites, list) or not all(isinstance(x, str) for x in suites):
        raise ConfigError(f"method {name!r}: suites must be a list of suite names, got {suites!r}")
    tasks = entry.get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(x, str) for x in tasks):
        raise ConfigError(f"method {name!r}: tasks must be a list of task names, got {tasks!r}")
    presets = entry.get("presets") or {}
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise ConfigError(f"method {name!r}: presets must map preset names to entries, got {presets!r}")
    for preset in presets:
        if not str(preset) or set(str(preset)) - _PRESET_CHARS:
            raise ConfigError(f"method {name!r}: preset name {preset!r} may hold only letters, digits, _ . -")
        if "extends" in presets[preset]:
            raise ConfigError(f"method {name!r}: preset {preset!r} extends {name} already; drop its extends")
    METHODS.register(name, dict(entry), override=override)
    for preset, body in presets.items():
        METHODS.register(f"{name}:{preset}", {"extends": name, **body}, override=override)
    return entry


def method_tasks(name: str) -> List[str]:
    """The tasks a method serves: its entry's ``tasks`` (a preset's, or its method's), else classification."""
    return list(method_entry(name).get("tasks") or ["classification"])


def check_method_task(method: str, dataset: str, task: str) -> None:
    """Refuse, in one line, a method on a dataset of a task it does not serve."""
    tasks = method_tasks(method)
    if task not in tasks:
        load_method_entries()
        serving = [m for m in METHODS.list() if ":" not in m and task in method_tasks(m)]
        raise ConfigError(
            f"method {method!r} serves {' and '.join(tasks)} only, and {dataset} is a {task} dataset; "
            f"the methods that serve {task}: {', '.join(sorted(serving, key=table_order))}"
        )


def preset_of(name: str) -> tuple:
    """``("hidfd", "released")`` for ``hidfd:released``; ``(name, None)`` for a plain method."""
    base, _, preset = str(name).partition(":")
    return base, (preset or None)


def load_method_entries() -> None:
    """Register every built-in method entry: the method files (on this module's import) and the reference rows
    that use real data (``datafree.baselines``, which imports only this module). Nothing here imports torch:
    ``datafree list methods`` and ``--print-config`` answer from these and datafree/catalog.py."""
    importlib.import_module("datafree.baselines")


def load_method_files(directory: str = METHOD_DIR) -> None:
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in METHODS:
            register_method(name, path)


def method_entry(name: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """The method's entry with ``extends`` resolved (sections merged too)."""
    load_method_entries()
    seen = _seen or []
    if name in seen:
        raise ConfigError(f"method {name!r} extends itself through {' -> '.join(seen)}")
    entry = METHODS.get(name)
    parent = entry.get("extends")
    if parent:  # a method's presets are its own: they do not pass to what extends it
        base = {k: v for k, v in method_entry(parent, seen + [name]).items() if k != "presets"}
        return deep_merge(base, {k: v for k, v in entry.items() if k != "extends"})
    return dict(entry)


def dataset_section(sections: Dict[str, Any], dataset: str) -> tuple:
    """``(key, why)`` of the ``datasets`` section that applies to ``dataset``, or ``(None, why)`` for none.

    A section applies to a dataset family, not only to one name: a dataset without a section of its own
    takes the section of a dataset with the same image spec (channels and size; every 1-channel 28- or
    32-pixel dataset takes ``mnist``'s). An ``imagefolder:`` takes its section by the spec it is read at.
    Otherwise the entry's top level (the CIFAR recipe) applies.
    """
    if not sections:
        return None, "no dataset sections: the top-level recipe"
    if dataset in sections:
        return dataset, "its own section"
    try:
        channels, size = image_shape(dataset)
    except (DatafreeError, OSError):  # an unknown dataset or an unreadable image folder: take the top level
        return None, f"{dataset}'s image spec is unknown: the top-level recipe"
    shape = f"{channels}x{size}x{size}"
    if channels == 1 and size in (28, 32) and "mnist" in sections:
        return "mnist", f"{dataset} is {shape}: the MNIST family (1 channel, 28 or 32 pixels) takes mnist's section"
    if dataset.startswith("imagefolder:"):  # an image folder has no recipe of its own: its spec picks one
        for name in sections:
            try:
                other = image_shape(name)
            except (DatafreeError, OSError):
                continue
            if other == (channels, size):
                return name, f"{dataset} is read at {shape}, like {name}: {name}'s section"
    return None, f"no section for {dataset} ({shape}) or its family: the top-level recipe"


def image_shape(dataset: str) -> tuple:
    """``(channels, size)`` of a dataset (from the catalog; an ``imagefolder:``'s by reading the folder)."""
    facts = catalog.dataset_facts(dataset)
    return facts["channels"], facts["size"]


def method_layers_explained(
    name: str, dataset: str, teacher: Optional[str], student: str, teacher_arch: Optional[str] = None
) -> List[tuple]:
    """``(why, layer)`` for each config layer of a method, in the order they apply.

    The entry's top level, then its ``students`` section (shell patterns matched against the student's
    name: recipes that depend on the architecture, e.g. the learning rate of a BN-free LeNet), then the
    dataset section (:func:`dataset_section`), then the ``pairs`` section.
    """
    entry = method_entry(name)
    base = {k: v for k, v in entry.items() if k not in _SECTIONS}
    layers = [(f"method {name}: its entry (datafree/configs/methods or a plugin)", base)]
    for pattern, layer in (entry.get("students") or {}).items():
        if fnmatch.fnmatchcase(str(student), str(pattern)):
            layers.append((f"students.{pattern!s}: the student {student} matches {pattern!r}", layer))
    key, why = dataset_section(entry.get("datasets") or {}, dataset)
    if key is not None:
        layers.append((f"datasets.{key}: {why}", entry["datasets"][key]))
    else:
        layers.append((f"no datasets section: {why}", {}))
    # the pair is named by the teacher's architecture: teacher_arch= when given, else the name or file name
    teacher_name = str(teacher_arch) if teacher_arch else name_from_file(teacher, dataset)
    teacher_name = ARCH_ALIASES.get(teacher_name, teacher_name)
    pk = pair_key(dataset, teacher_name, student)
    pair = (entry.get("pairs") or {}).get(pk)
    if pair:
        layers.append((f"pairs.{pk}: the pair's own section", pair))
    return [(w, l) for w, l in layers if l or w.startswith("no datasets")]


def method_layers(
    name: str, dataset: str, teacher: Optional[str], student: str, teacher_arch: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Config layers for a method: its defaults, its students, dataset and pair sections."""
    return [layer for _, layer in method_layers_explained(name, dataset, teacher, student, teacher_arch) if layer]


def describe(name: str) -> str:
    entry = method_entry(name)
    about = entry.get("about", "")
    tasks = method_tasks(name)
    serves = "" if tasks == ["classification"] else f" [{', '.join(tasks)}]"
    return f"{entry.get('synthesizer')} + {entry.get('distiller', 'kd')}{serves}" + (f"  -- {about}" if about else "")


def describe_sources(name: str) -> List[str]:
    """The ``sources`` lines of a method, one ``scope  text`` per line, datasets before pairs.

    A preset prints its own lines; a scope only its method names reads "as <method>, with this preset's
    changes" (the method's line describes the method's protocol, not the preset's)."""
    base, preset = preset_of(name)
    if preset is None:
        sources = dict(method_entry(name).get("sources") or {})
    else:
        method_entry(name)  # loads the built-in methods and checks the chain
        own = dict(METHODS.get(name).get("sources") or {})
        inherited = method_entry(base).get("sources") or {}
        sources = {k: f"as {base}, with this preset's changes" for k in inherited if k not in own}
        sources.update(own)
    if not sources:
        return ["(no sources section: see the method's page in docs/methods/)"]
    keys = sorted(sources, key=lambda k: ("/" in str(k), str(k)))
    width = max(len(str(k)) for k in keys)
    return [f"{str(k):<{width}}  {sources[k]}" for k in keys]


# --------------------------------------------------------------------------- what follows from the entries


def table_order(name: str) -> tuple:
    """A method's sort key in the tables: its entry's ``order`` (a preset's method's), then its name; a method
    without one after every method that has one."""
    base, preset = preset_of(name)
    try:
        order = method_entry(base).get("order")
    except DatafreeError:  # a name no registry knows (a record of a plugin not loaded here)
        order = None
    return (0 if order is not None else 1, order if order is not None else 0, base, preset is not None, name)


def demo_layer(name: str) -> Dict[str, Any]:
    """The method's ``demo`` budget (a preset's own over its method's), {} when it has none."""
    return dict(method_entry(name).get("demo") or {})


def methods_of_suite(suite: str) -> List[str]:
    """The registered methods whose entry lists ``suite`` under ``suites`` (presets by their own entry), in
    table order."""
    load_method_entries()
    out = []
    for name in METHODS.list():
        if suite in (METHODS.get(name).get("suites") or []):
            out.append(name)
    return sorted(out, key=table_order)


# --------------------------------------------------------------------------- resolving a run's config


def complete_method_sections(cfg: RunConfig) -> RunConfig:
    """Fill ``synth`` and ``distill`` with every default of the named classes' ``Config`` dataclasses.

    A resolved config then records every value a run uses (DAFL's generator BN eps too), so a change of a
    default shows as a changed config. Unknown keys are errors with suggestions.
    """
    for section, kind, name in (("synth", "synthesizers", cfg.synthesizer), ("distill", "distillers", cfg.distiller)):
        cls = catalog.config_of(kind, name)
        full = build_dataclass(cls, getattr(cfg, section), f"{section} ({name})")
        check_method_values(full, section)
        setattr(cfg, section, to_dict(full))
    return cfg


def check_names(cfg: RunConfig) -> RunConfig:
    """The checks of a resolved config that the names alone decide: its plugins load, its synthesizer,
    distiller, dataset, student and teacher architecture are known (close matches otherwise), the method serves
    the dataset's task and so do the models, and its loggers' packages are installed. Raises
    :class:`~datafree.errors.DatafreeError` naming the value and the fix; writes nothing and, with a current
    catalog, imports no torch (``distill --print-config``)."""
    validate(cfg)  # the values alone (a config built or changed after it was resolved)
    load_plugins(cfg.plugins)
    catalog.require("synthesizers", cfg.synthesizer)
    catalog.require("distillers", cfg.distiller)
    loggers.check(cfg.log)  # log=none | csv | tensorboard | wandb, or a comma list: a name or a missing package
    if not cfg.dataset.startswith("imagefolder:"):
        catalog.require("datasets", cfg.dataset)
    task = catalog.dataset_facts(cfg.dataset)["task"]  # an imagefolder: is read here
    check_method_task(cfg.method, cfg.dataset, task)
    if not cfg.student.startswith("timm/"):
        catalog.require("models", cfg.student)
    for role, name in (("student", cfg.student), ("teacher_arch", cfg.teacher_arch)):
        if name is not None and catalog.model_task(name) != task:
            same = ", ".join(m for m in catalog.names("models") if catalog.model_task(m) == task)
            raise ConfigError(
                f"{role}={name} is a {catalog.model_task(name)} model and {cfg.dataset} a {task} dataset; "
                f"the {task} models: {same}"
            )
    if cfg.teacher_arch is not None:
        check_arch(cfg.teacher_arch)
    return cfg


def check_arch(name: Any) -> str:
    """``name`` if it is an architecture (a registered model, a reference alias or ``timm/<name>``); else the
    unknown-name error with close matches. Read from the catalog: no torch."""
    name = str(name)
    if name.startswith("timm/") or name in ARCH_ALIASES:
        return name
    return catalog.require("models", name, known=catalog.names("models") + list(ARCH_ALIASES) + ["timm/<name>"])


def resolve(user: Optional[Dict[str, Any]] = None, overrides: Optional[Dict[str, Any]] = None) -> RunConfig:
    """Resolve a run configuration from the method defaults, a user dict and overrides.

    The result is complete (every synthesizer and distiller default filled in) and its values checked
    (:func:`datafree.config.validate`). Which method sections applied, and why, is kept in
    :func:`datafree.config.provenance`. Whether its dataset, student and loggers exist here is checked where
    the run is built (:func:`datafree.engine.check_run`).
    """
    user = deep_merge(user or {}, overrides or {})
    base = to_dict(RunConfig())
    head = deep_merge(base, user)
    plugins = head.get("plugins") or []
    load_plugins([plugins] if isinstance(plugins, str) else list(plugins))
    method = head.get("method") or base["method"]
    explained = method_layers_explained(
        str(method),
        str(head.get("dataset")),
        head.get("teacher"),
        str(head.get("student")),
        teacher_arch=head.get("teacher_arch"),
    )
    merged = base
    for _, layer in explained:
        merged = deep_merge(merged, layer)
    merged = deep_merge(merged, user)
    merged["method"] = method
    cfg = build_dataclass(RunConfig, merged, "config")
    complete_method_sections(cfg)
    validate(cfg)
    set_provenance(cfg, [why for why, _ in explained])
    return cfg


load_method_files()
