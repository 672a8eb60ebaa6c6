"""datafree: a benchmark toolkit for data-free knowledge distillation."""
__version__ = "0.1.0"
