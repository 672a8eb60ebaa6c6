"""Synthesizers (the data side of each method), the data pool and the shared loss terms.

Every module in this package is imported here, so a method file registers
itself by existing: adding a method never edits this file or the engine.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import Amp, Context, Synthesizer, frozen  # noqa: F401
from .common import GeneratorSynthesizer, PoolSampling, TeacherTerms  # noqa: F401
from .pool import DataPool  # noqa: F401

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _importlib.import_module(f"{__name__}.{_m.name}")
