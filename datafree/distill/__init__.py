"""Student objectives (Distillers)."""
from .base import KD, CrossEntropy, Distiller, build_optimizer, build_scheduler  # noqa: F401
