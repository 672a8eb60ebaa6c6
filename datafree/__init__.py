"""datafree: a benchmark toolkit for data-free knowledge distillation."""

import importlib
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``datafree.load_teacher`` (:func:`datafree.teacher.load_teacher`), loaded on first use: ``import datafree``
    stays light, and the package imports nothing of its own layers (docs/architecture.md)."""
    if name == "load_teacher":
        return importlib.import_module("datafree.teacher").load_teacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
