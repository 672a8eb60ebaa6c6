"""The engine: the one training loop and everything around it (docs/architecture.md).

* :mod:`~datafree.engine.loop`: :class:`Engine`, synthesize -> distill -> evaluate -> checkpoint;
* :mod:`~datafree.engine.state`: a run's folder, parts and checkpoint, set up before the loop and saved by it;
* :mod:`~datafree.engine.build`: the checks a config needs this machine for (:func:`check_run`) and the parts
  of a run (teacher, student, synthesizer, distiller, trainer);
* :mod:`~datafree.engine.trainer`: the student's optimiser, schedule, gradient scaler and DDP;
* :mod:`~datafree.engine.hooks`: logging, sample grids, keep-best, the collapse stop, the progress bar;
* :mod:`~datafree.engine.health`, :mod:`~datafree.engine.meter`, :mod:`~datafree.engine.record`,
  :mod:`~datafree.engine.rng`, :mod:`~datafree.engine.distributed`: divergence and collapse, time and memory,
  the run record, random state, several ranks; :mod:`~datafree.engine.view`: what hooks and the record see.
"""

from .build import check_run, resolve_device
from .loop import Engine, default_run_dir, run, run_on_after_collapse

__all__ = ["Engine", "check_run", "default_run_dir", "resolve_device", "run", "run_on_after_collapse"]
