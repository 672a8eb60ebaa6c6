"""Student objectives (Distillers). Every module here is imported, so each registers itself."""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import KD, CrossEntropy, Distiller  # noqa: F401

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _importlib.import_module(f"{__name__}.{_m.name}")
