"""Synthesizers (the data side of each method), the data pool and the shared loss terms."""
from . import dafl, deepinv  # noqa: F401  (registration)
from .base import Amp, Context, Synthesizer, frozen  # noqa: F401
from .common import GeneratorSynthesizer, PoolSampling, TeacherTerms  # noqa: F401
from .pool import DataPool  # noqa: F401
