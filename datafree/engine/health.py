"""Divergence and collapse: outcomes of a run, never accuracies.

:class:`Guard` watches every logged loss of every step and round, and any
per-step check a method declares, without a host sync: each check only
updates, on the device, the first step at which it failed. The engine reads
the flags at its log points (every ``CHECK_EVERY`` student steps and at the
end of each epoch) and, when one is set, or a student weight is non-finite,
stops the run with ``status: "diverged"``.

A method declares a check by overriding ``health_checks()`` on its
Synthesizer or Distiller: it returns ``{name: 0-d bool tensor}``, True
meaning "broken" (e.g. a generator whose outputs saturate). The engine calls
it once per round (synthesizer) or student step (distiller); it must not sync
with the host (no ``.item()``, ``float()`` or ``if tensor:``).

:func:`collapse_streak` counts the evaluations at the end of a run that show a collapsed student, as the
dataset's task defines it (:meth:`datafree.tasks.Task.at_chance`: a classifier within a point of 100 / classes,
a segmenter that predicts one class everywhere).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from ..tasks import Task


class Guard:
    """First failing step of each named check, kept on the device."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._first: Dict[str, torch.Tensor] = {}

    def _update(self, step: int, name: str, bad: torch.Tensor) -> None:
        first = self._first.get(name)
        if first is None:
            first = self._first[name] = torch.full((), -1, dtype=torch.long, device=self.device)
        bad = bad.to(self.device).reshape(()).bool()
        here = torch.full((), step, dtype=torch.long, device=self.device)
        self._first[name] = torch.where((first < 0) & bad, here, first)

    def watch(self, step: int, name: str, values: Iterable[Any]) -> None:
        """Flag ``name`` at ``step`` when any of ``values`` (floats or tensors) is non-finite."""
        parts = []
        for v in values:
            if isinstance(v, torch.Tensor):
                parts.append(v.detach().reshape(-1).float().to(self.device))
            elif isinstance(v, (int, float)):
                parts.append(torch.tensor([float(v)], device=self.device))
        if parts:
            self._update(step, name, ~torch.isfinite(torch.cat(parts)).all())

    def flags(self, step: int, checks: Optional[Dict[str, torch.Tensor]]) -> None:
        """Record a method's declared checks (``{name: bool tensor}``, True = broken)."""
        for name, bad in (checks or {}).items():
            self._update(step, str(name), torch.as_tensor(bad))

    def first_failure(self) -> Optional[Tuple[int, str]]:
        """``(step, name)`` of the earliest failure, or None. Reads the device (one sync)."""
        if not self._first:
            return None
        names = list(self._first)
        steps = torch.stack([self._first[n] for n in names]).cpu().tolist()
        failed = [(s, n) for s, n in zip(steps, names) if s >= 0]
        return min(failed) if failed else None


def collapse_streak(lines: List[Dict[str, Any]], task: Task, num_classes: int) -> int:
    """How many of the last evaluations (metrics lines) in a row show a collapsed student
    (:meth:`datafree.tasks.Task.at_chance`)."""
    n = 0
    for line in reversed(list(lines)):
        if not task.at_chance(line, num_classes):
            break
        n += 1
    return n


def is_collapsed(lines: List[Dict[str, Any]], task: Task, num_classes: int, patience: int, grace: int) -> bool:
    """True when the last ``patience`` evaluations after the first ``grace`` show a collapsed student."""
    return collapse_streak(list(lines)[grace:], task, num_classes) >= patience
