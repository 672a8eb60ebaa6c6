"""One registry class for everything that can be named in a config.

``MODELS``, ``GENERATORS``, ``DATASETS``, ``SYNTHESIZERS``, ``DISTILLERS`` and
``METHODS`` are instances of :class:`Registry`. Entries register with a
decorator, are built by name with ``build(name, **kw)``, and are listed with
shell-style wildcards. An unknown name raises :class:`UnknownNameError`, which
suggests close matches.

Third-party code registers by being imported: from the entry-point group
``datafree.plugins`` (any installed distribution may declare one) or by
``--plugin some.module`` on the command line (:func:`load_plugins`).
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import DatafreeError, UnknownNameError

PLUGIN_GROUP = "datafree.plugins"


class Registry:
    """A name -> object table with decorator registration.

    >>> FOO = Registry("foo")
    >>> @FOO.register("bar")
    ... def bar(x=1): return x
    >>> FOO.build("bar", x=2)
    2
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Any] = {}

    def register(self, name: Optional[str] = None, obj: Any = None, *, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Without a name, the object's ``__name__`` in lower case is used.
        Registering a taken name is an error unless ``override`` is set, so a
        plugin cannot silently replace a published method.
        """

        def add(o: Any) -> Any:
            key = name or getattr(o, "__name__", None)
            if not key:
                raise ValueError(f"{self.kind}: a name is required to register {o!r}")
            key = key if name else key.lower()
            if key in self._entries and not override and self._entries[key] is not o:
                raise DatafreeError(
                    f"{self.kind} {key!r} is already registered; pass override=True to replace it"
                )
            self._entries[key] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        if name not in self._entries and not _BUILTINS_LOADED:
            load_builtins()  # the built-in entries register on import: make sure they had the chance
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered constructor ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def list(self, pattern: str = "*") -> List[str]:
        """Sorted names matching a shell-style wildcard (``resnet*``)."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


MODELS = Registry("model")
GENERATORS = Registry("generator")
DATASETS = Registry("dataset")
SYNTHESIZERS = Registry("synthesizer")
DISTILLERS = Registry("distiller")
METHODS = Registry("method")

_BUILTINS_LOADED = False
_PLUGINS_LOADED: set = set()


def load_builtins() -> None:
    """Import the modules whose import registers the built-in entries."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    importlib.import_module("datafree.models")
    importlib.import_module("datafree.data")
    importlib.import_module("datafree.distill")
    importlib.import_module("datafree.synthesis")
    importlib.import_module("datafree.baselines")
    from .methods import load_method_files

    load_method_files()


def load_plugins(modules: Optional[List[str]] = None, entry_points: bool = True) -> List[str]:
    """Import plugin modules; return the names imported.

    ``modules`` are dotted module names (``--plugin some.module``); a path to a
    ``.py`` file also works. Entry points of the group ``datafree.plugins`` are
    loaded once per process.
    """
    load_builtins()
    loaded: List[str] = []
    if entry_points:
        for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            key = f"ep:{ep.value}"
            if key in _PLUGINS_LOADED:
                continue
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not hide the others' names
                raise DatafreeError(
                    f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}"
                ) from e
            _PLUGINS_LOADED.add(key)
            loaded.append(ep.value)
    for mod in modules or []:
        if mod in _PLUGINS_LOADED:
            continue
        _import_plugin(mod)
        _PLUGINS_LOADED.add(mod)
        loaded.append(mod)
    return loaded


def _import_plugin(mod: str) -> None:
    if mod.endswith(".py"):
        import os
        import sys

        if not os.path.isfile(mod):
            raise DatafreeError(f"plugin file {mod!r} does not exist")
        name = "datafree_plugin_" + os.path.splitext(os.path.basename(mod))[0]
        spec = importlib.util.spec_from_file_location(name, mod)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and mod.startswith(e.name):
            raise DatafreeError(
                f"plugin module {mod!r} cannot be imported: {e}. "
                "Install it, or put its folder on PYTHONPATH, or pass a path to a .py file"
            ) from e
        raise


def all_registries() -> Dict[str, Registry]:
    return {
        "models": MODELS,
        "generators": GENERATORS,
        "datasets": DATASETS,
        "synthesizers": SYNTHESIZERS,
        "distillers": DISTILLERS,
        "methods": METHODS,
    }


Builder = Callable[..., Any]
