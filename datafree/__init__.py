"""datafree: a benchmark toolkit for data-free knowledge distillation."""

__version__ = "0.1.0"


def load_teacher(path_or_name, dataset=None, arch=None, **kw):
    """Load a teacher (a checkpoint path, or a zoo model name for ``dataset``): ``(module in eval mode, record)``.

    See :func:`datafree.teacher.load_teacher`; importing it here lazily keeps ``import datafree`` light.
    """
    from .teacher import load_teacher as _load

    return _load(path_or_name, dataset=dataset, arch=arch, **kw)
