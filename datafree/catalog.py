"""The registries' declarations, read without importing the modules that register them.

``datafree list``, ``--help`` and ``distill --print-config`` only read names, one-line facts (a dataset's
image spec and task, a model's task) and the fields of the synthesizers' and distillers' ``Config``
dataclasses. Those live in modules that import torch, whose import costs seconds. ``configs/catalog.json``
holds them, written by ``python -m datafree.catalog`` from the live registries, with a digest of every
source file of the package it was written from. It is used only while that digest is the current sources'
and no plugin was loaded (a plugin may add or replace an entry); otherwise every answer comes from the live
registries, which :func:`~datafree.registry.load_builtins` fills. So a stale catalog costs time, never a
wrong answer, and ``tests/test_catalog.py`` fails until it is written again.

Method entries are not here: they are YAML files that :mod:`datafree.methods` reads without torch.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import glob
import hashlib
import importlib
import json
import os
import sys
import typing
from typing import Any, Dict, List, Optional

from .errors import ConfigError
from .registry import (
    DATASETS,
    DISTILLERS,
    GENERATORS,
    MODELS,
    SYNTHESIZERS,
    Registry,
    config_class,
    load_builtins,
    plugin_registrations,
)

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CATALOG_FILE = os.path.join(PACKAGE_DIR, "configs", "catalog.json")
#: the kinds the catalog declares (methods are read from their YAML files)
KINDS = {
    "models": MODELS,
    "generators": GENERATORS,
    "datasets": DATASETS,
    "synthesizers": SYNTHESIZERS,
    "distillers": DISTILLERS,
}
#: the names a Config annotation may use (every built-in one does; the catalog refuses to write any other)
_TYPE_NAMES = {k: getattr(typing, k) for k in ("Any", "Dict", "List", "Optional", "Tuple", "Union")}
_TYPE_NAMES.update(bool=bool, int=int, float=float, str=str, tuple=tuple, list=list, dict=dict)

_loaded: Optional[Dict[str, Any]] = None
_classes: Dict[tuple, type] = {}


def _baselines_dir() -> str:
    """Where ``datafree.baselines`` lives (baselines/ in a checkout, mapped into the package when installed)."""
    installed = os.path.join(PACKAGE_DIR, "baselines")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(PACKAGE_DIR), "baselines")


#: the sources the built-in entries come from: the subpackages whose import registers them, the registry and
#: this module (a plugin's entries never come from the catalog)
DIGESTED = ("models", "data", "synthesis", "distill", "registry.py", "catalog.py")


def source_digest() -> str:
    """sha256 over the sources the built-in entries come from (:data:`DIGESTED` and baselines/, paths and
    bytes): the catalog answers only for the sources it was written from."""
    h = hashlib.sha256()
    paths = []
    for part in DIGESTED:
        top = os.path.join(PACKAGE_DIR, part)
        found = glob.glob(os.path.join(top, "**", "*.py"), recursive=True) if os.path.isdir(top) else [top]
        paths += [(f"datafree/{os.path.relpath(p, PACKAGE_DIR)}", p) for p in found]
    paths += [(f"baselines/{os.path.basename(p)}", p) for p in glob.glob(os.path.join(_baselines_dir(), "*.py"))]
    for label, path in sorted(paths):
        h.update(label.replace(os.sep, "/").encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


# --------------------------------------------------------------------------- writing it


def _type_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "")


def _config_fields(owner: Any, what: str) -> Dict[str, Any]:
    cls = config_class(owner, what)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = _type_text(f.type)
        if eval(text, dict(_TYPE_NAMES)) != hints[f.name]:  # noqa: S307 -- our own annotations, checked here
            raise ConfigError(f"{what}: the annotation {text!r} of Config.{f.name} cannot be declared in the catalog")
        as_json = json.loads(json.dumps(default))
        if as_json != (list(default) if isinstance(default, tuple) else default):
            raise ConfigError(f"{what}: the default of Config.{f.name} ({default!r}) is not plain data")
        out.append([f.name, text, as_json])
    return {
        "fields": out,
        "choices": {k: list(v) for k, v in getattr(cls, "choices", {}).items()},
        "validate": callable(getattr(cls, "validate", None)),
    }


def build() -> Dict[str, Any]:
    """The catalog of the built-in entries, from the live registries."""
    load_builtins()
    cat: Dict[str, Any] = {"digest": source_digest()}
    cat["models"] = {n: {"task": getattr(MODELS.get(n), "task", "classification")} for n in MODELS.list()}
    cat["generators"] = GENERATORS.list()
    cat["datasets"] = {}
    for n in DATASETS.list():
        s = DATASETS.get(n).spec
        cat["datasets"][n] = {"channels": s.channels, "size": s.size, "num_classes": s.num_classes, "task": s.task}
    for kind in ("synthesizers", "distillers"):
        reg = KINDS[kind]
        cat[kind] = {n: _config_fields(reg.get(n), f"{reg.kind} {n!r}") for n in reg.list()}
    return cat


def write(path: str = CATALOG_FILE) -> str:
    text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- reading it


def current() -> Optional[Dict[str, Any]]:
    """The catalog, when it may answer: it exists, it was written from these sources, and no plugin registered
    anything. None otherwise (the caller asks the live registries)."""
    global _loaded
    if plugin_registrations():
        return None
    if _loaded is None:
        try:
            with open(CATALOG_FILE) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        _loaded = data if data.get("digest") == source_digest() else {}
    return _loaded or None


def names(kind: str, pattern: str = "*") -> List[str]:
    """Sorted names of a kind matching a wildcard, as ``Registry.list`` gives them."""
    cat = current()
    if cat is None:
        load_builtins()
        return KINDS[kind].list(pattern)
    return sorted(n for n in cat[kind] if fnmatch.fnmatchcase(n, pattern))


def require(kind: str, name: str, known: Optional[List[str]] = None) -> str:
    """``name`` if the kind has it; else the registry's unknown-name error (close matches, plugin report)."""
    cat = current()
    if cat is not None and name in cat[kind]:
        return name
    load_builtins()
    reg: Registry = KINDS[kind]
    if name in reg:
        return name
    raise reg.unknown(name, known)


def dataset_facts(name: str) -> Dict[str, Any]:
    """channels, size, num_classes and task of a dataset. An ``imagefolder:<path>`` has no entry: its folder is
    read (by the data layer, loaded by name as :func:`load_builtins` loads it)."""
    cat = current()
    if cat is not None and name in cat["datasets"]:
        return dict(cat["datasets"][name])
    load_builtins()
    if name.startswith("imagefolder:"):
        s = importlib.import_module("datafree.data").get_spec(name)
    else:
        s = DATASETS.get(name).spec
    return {"channels": s.channels, "size": s.size, "num_classes": s.num_classes, "task": s.task}


def model_task(name: str) -> str:
    """The task a model's output serves: its builder's ``task`` (segmenters: ``"segmentation"``), else
    classification (every classifier, ``timm/<name>`` and unknown names)."""
    if name.startswith("timm/"):
        return "classification"
    cat = current()
    if cat is not None:
        return cat["models"].get(name, {}).get("task", "classification")
    load_builtins()
    return getattr(MODELS.get(name), "task", "classification") if name in MODELS else "classification"


def config_of(kind: str, name: str) -> type:
    """The ``Config`` dataclass of a synthesizer or distiller: rebuilt from the catalog (the same fields, types,
    defaults and choices) when the catalog answers and the class has no ``validate()`` of its own, else the
    class itself."""
    reg = KINDS[kind]
    cat = current()
    entry = cat[kind].get(name) if cat is not None else None
    if entry is None or entry["validate"]:
        return config_class(reg.get(name), f"{reg.kind} {name!r}")
    key = (kind, name)
    if key not in _classes:
        fields = []
        for fname, text, default in entry["fields"]:
            hint = eval(text, dict(_TYPE_NAMES))  # noqa: S307 -- checked when the catalog was written
            spec = (
                dataclasses.field(default_factory=lambda v=default: copy.deepcopy(v))
                if isinstance(default, (list, dict))
                else dataclasses.field(default=default)
            )
            fields.append((fname, hint, spec))
        cls = dataclasses.make_dataclass(f"{name}_Config", fields)
        cls.choices = {k: tuple(v) for k, v in entry["choices"].items()}  # type: ignore[attr-defined]
        _classes[key] = cls
    return _classes[key]


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m datafree.catalog`` writes the catalog; ``--check`` exits 1 when the written one is not what
    these sources declare."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--check"]:
        try:
            with open(CATALOG_FILE) as f:
                ok = json.load(f) == json.loads(json.dumps(build()))
        except (OSError, ValueError):
            ok = False
        if not ok:
            print(f"{CATALOG_FILE} is not these sources' catalog: run `python -m datafree.catalog` and commit it")
            return 1
        print(f"{CATALOG_FILE} is current")
        return 0
    if argv:
        print("usage: python -m datafree.catalog [--check]", file=sys.stderr)
        return 2
    print(f"wrote {write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
