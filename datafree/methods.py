"""Method entries: YAML files naming one synthesizer and one distiller.

A method file (``datafree/configs/methods/<name>.yaml``) is a partial
:class:`~datafree.config.RunConfig` plus three optional sections:

``extends``
    another method whose entry this one starts from (presets such as ``fast10``);
``datasets``
    per-dataset layers (``mnist: {epochs: 20}``);
``pairs``
    per-pair layers keyed ``<dataset>/<teacher>-<student>``;
``about``
    free text shown by ``datafree list methods`` (paper, source of defaults).

Plugins add methods with :func:`register_method` (a dict or a YAML path).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional

from .config import deep_merge, load_yaml, pair_key
from .errors import ConfigError
from .registry import METHODS

METHOD_DIR = os.path.join(os.path.dirname(__file__), "configs", "methods")
_SECTIONS = ("extends", "datasets", "pairs", "about")


def register_method(name: str, entry: Any, override: bool = False) -> Dict[str, Any]:
    """Register a method from a dict or a YAML file path."""
    if isinstance(entry, str):
        entry = load_yaml(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"method {name!r}: entry must be a mapping")
    if "synthesizer" not in entry and "extends" not in entry:
        raise ConfigError(f"method {name!r}: entry must name a synthesizer (or extend a method)")
    METHODS.register(name, dict(entry), override=override)
    return entry


def load_method_files(directory: str = METHOD_DIR) -> None:
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in METHODS:
            register_method(name, path)


def method_entry(name: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """The method's entry with ``extends`` resolved (sections merged too)."""
    from .registry import load_builtins

    load_builtins()
    seen = _seen or []
    if name in seen:
        raise ConfigError(f"method {name!r} extends itself through {' -> '.join(seen)}")
    entry = METHODS.get(name)
    parent = entry.get("extends")
    if parent:
        return deep_merge(method_entry(parent, seen + [name]), {k: v for k, v in entry.items() if k != "extends"})
    return dict(entry)


def method_layers(name: str, dataset: str, teacher: Optional[str], student: str) -> List[Dict[str, Any]]:
    """Config layers for a method: its defaults, its dataset section, its pair section."""
    entry = method_entry(name)
    base = {k: v for k, v in entry.items() if k not in _SECTIONS}
    layers = [base]
    ds = (entry.get("datasets") or {}).get(dataset)
    if ds:
        layers.append(ds)
    teacher_name = os.path.splitext(os.path.basename(str(teacher)))[0] if teacher else teacher
    if teacher_name and teacher_name.startswith(f"{dataset}_"):
        teacher_name = teacher_name[len(dataset) + 1:]
    pair = (entry.get("pairs") or {}).get(pair_key(dataset, teacher_name, student))
    if pair:
        layers.append(pair)
    return layers


def describe(name: str) -> str:
    entry = method_entry(name)
    about = entry.get("about", "")
    return f"{entry.get('synthesizer')} + {entry.get('distiller', 'kd')}" + (f"  -- {about}" if about else "")
