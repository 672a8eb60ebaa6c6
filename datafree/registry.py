"""One registry class for everything that can be named in a config.

``MODELS``, ``GENERATORS``, ``DATASETS``, ``SYNTHESIZERS``, ``DISTILLERS`` and
``METHODS`` are instances of :class:`Registry`. Entries register with a
decorator, are built by name with ``build(name, **kw)``, and are listed with
shell-style wildcards. An unknown name raises :class:`UnknownNameError`, which
suggests close matches.

Third-party code registers by being imported: from the entry-point group
``datafree.plugins`` (any installed distribution may declare one) or by
``--plugin some.module`` on the command line (:func:`load_plugins`). What each
plugin registered is recorded, and unknown-name errors raised afterwards say it
(a plugin that registered nothing is the usual reason a new method is unknown).
:func:`config_class` checks a synthesizer's or distiller's ``Config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import typing
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from .errors import ConfigError, DatafreeError, UnknownNameError

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
                raise DatafreeError(f"{self.kind} {key!r} is already registered; pass override=True to replace it")
            self._entries[key] = o
            if _RECORDING:  # a plugin is being imported: remember what it added, for unknown-name errors
                _RECORDING[-1].append((self.kind, key))
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        if name not in self._entries and not _BUILTINS_LOADED:
            load_builtins()  # the built-in entries register on import: make sure they had the chance
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str, known: Optional[Iterable[str]] = None) -> UnknownNameError:
        """The error for an unknown ``name`` (``known`` defaults to this registry's names).

        After plugins were loaded, the message ends with what each of them
        registered; callers that raise their own unknown-name error for this
        registry's kind should build it here.
        """
        err = UnknownNameError(self.kind, name, self._entries if known is None else known)
        note = plugin_report()
        if note:
            err.args = (f"{err.args[0]} {note}",)
        return err

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
#: plugin (as named to load_plugins, or an entry point's value) -> [(registry kind, name)] it registered
_PLUGIN_ENTRIES: Dict[str, List[Tuple[str, str]]] = {}
#: plugins whose module had been imported before load_plugins got to it (so nothing new registered)
_PLUGINS_PREIMPORTED: set = set()
#: one list per plugin import in progress (a stack: a plugin may load another)
_RECORDING: List[List[Tuple[str, str]]] = []


#: the modules whose import registers the built-in entries, loaded by name (the registry imports nothing of
#: them, so that every layer may use it): models, datasets, student objectives, synthesizers, the reference
#: rows that use real data, and the method files
BUILTIN_MODULES = (
    "datafree.models",
    "datafree.data",
    "datafree.distill",
    "datafree.synthesis",
    "datafree.baselines",
    "datafree.methods",
)


def load_builtins() -> None:
    """Import the modules whose import registers the built-in entries (:data:`BUILTIN_MODULES`)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for name in BUILTIN_MODULES:
        importlib.import_module(name)


def load_plugins(modules: Optional[List[Union[str, os.PathLike]]] = None, entry_points: bool = True) -> List[str]:
    """Import plugin modules; return the names imported.

    ``modules`` are dotted module names (``--plugin some.module``); a path to a
    ``.py`` file (str or ``os.PathLike``) also works. Entry points of the group
    ``datafree.plugins`` are loaded once per process. What each plugin
    registers is recorded (:func:`plugin_registrations`).
    """
    eps = list(importlib.metadata.entry_points(group=PLUGIN_GROUP)) if entry_points else []
    if not modules and all(f"ep:{ep.value}" in _PLUGINS_LOADED for ep in eps):
        return []  # nothing to import: the built-ins stay unloaded until something asks for them (no torch)
    load_builtins()  # first, so that a plugin that takes a built-in's name is refused unless it overrides
    loaded: List[str] = []
    if eps:
        for ep in eps:
            key = f"ep:{ep.value}"
            if key in _PLUGINS_LOADED:
                continue
            try:
                with _recording(ep.value, ep.module):
                    ep.load()
            except Exception as e:  # a broken plugin must not hide the others' names
                raise DatafreeError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
            _PLUGINS_LOADED.add(key)
            loaded.append(ep.value)
    for mod in modules or []:
        mod = os.fspath(mod)
        if mod in _PLUGINS_LOADED:
            continue
        with _recording(mod, None if mod.endswith(".py") else mod):
            _import_plugin(mod)
        _PLUGINS_LOADED.add(mod)
        loaded.append(mod)
    return loaded


@contextlib.contextmanager
def _recording(plugin: str, module: Optional[str]) -> Iterator[None]:
    """Record what ``plugin`` registers while its import runs (kept only if the import succeeds)."""
    preimported = module is not None and module in sys.modules
    record: List[Tuple[str, str]] = []
    _RECORDING.append(record)
    try:
        yield
    finally:
        _RECORDING.pop()
    _PLUGIN_ENTRIES[plugin] = record
    if preimported and not record:
        _PLUGINS_PREIMPORTED.add(plugin)


def plugin_registrations() -> Dict[str, List[Tuple[str, str]]]:
    """What each loaded plugin registered: plugin -> [(registry kind, name), ...], in load order."""
    return {p: list(entries) for p, entries in _PLUGIN_ENTRIES.items()}


def plugin_report(limit: int = 12) -> str:
    """One parenthesised line saying what each loaded plugin registered; "" when none was loaded.

    >>> plugin_report()  # doctest: +SKIP
    "(plugin my_plugin.py registered: synthesizer 'foo', method 'foo2')"
    """
    parts = []
    for plugin, entries in _PLUGIN_ENTRIES.items():
        if not entries:
            why = " new: its module had been imported already" if plugin in _PLUGINS_PREIMPORTED else ""
            parts.append(f"plugin {plugin} registered nothing{why}")
            continue
        shown = ", ".join(f"{kind} {name!r}" for kind, name in entries[:limit])
        more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
        parts.append(f"plugin {plugin} registered: {shown}{more}")
    return f"({'; '.join(parts)})" if parts else ""


def _import_plugin(mod: str) -> None:
    if mod.endswith(".py"):
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


def config_class(owner: type, what: str) -> type:
    """``owner.Config``, checked to be a dataclass whose declared fields are all fields.

    ``what`` names the owner's role in messages ("synthesizer", "distiller").
    A ``Config`` that subclasses a dataclass but lacks ``@dataclass`` itself is
    still a dataclass, with only its parent's fields: its own would surface as
    "unknown key" errors, so it is reported here by name. Cheap and free of
    side effects (config resolution calls it too).
    """
    cfg = getattr(owner, "Config", None)
    name = getattr(owner, "__name__", repr(owner))
    if cfg is None:
        raise ConfigError(
            f"{what} {name} has no Config: give it a @dataclass `class Config` (an empty one if it takes no parameters)"
        )
    # the class whose body defines Config names it in messages (it may be inherited)
    where = next((k.__name__ for k in getattr(owner, "__mro__", ()) if "Config" in vars(k)), name)
    if not isinstance(cfg, type):
        raise ConfigError(f"{what} {where}.Config must be a @dataclass class, got {cfg!r}")
    own = [k for k, a in _own_annotations(cfg).items() if not _is_classvar(a)]
    if not dataclasses.is_dataclass(cfg) or (own and "__dataclass_fields__" not in vars(cfg)):
        fields = f" (its fields {', '.join(own)} are invisible otherwise)" if own else ""
        raise ConfigError(f"{where}.Config is not a @dataclass: put @dataclass above `class Config`{fields}")
    return cfg


def _own_annotations(cls: type) -> Dict[str, Any]:
    """Annotations written in ``cls``'s own body (not inherited), not evaluated."""
    try:
        import annotationlib  # Python 3.14+: annotations are lazy; do not evaluate them
    except ImportError:
        return dict(inspect.get_annotations(cls))
    return dict(annotationlib.get_annotations(cls, format=annotationlib.Format.FORWARDREF))


def _is_classvar(annotation: Any) -> bool:
    # ClassVar declarations are never dataclass fields, decorated or not
    if isinstance(annotation, str):
        return re.match(r"\s*(typing\.)?ClassVar\b", annotation) is not None
    return annotation is typing.ClassVar or typing.get_origin(annotation) is typing.ClassVar


Builder = Callable[..., Any]
