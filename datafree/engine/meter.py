"""The meter: wall time per phase, peak memory, images synthesised and seen.

Phase timers synchronise the GPU on entry and exit, so asynchronous CUDA work
is charged to the phase that queued it (the reference code timed synthesis
without synchronising). GPU-hours are wall hours times the GPUs the run used
(zero on CPU). Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and
the process's peak resident set size on CPU.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from typing import Dict, Iterator

import torch


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class Meter:
    PHASES = ("synthesis", "distill", "eval", "other")

    def __init__(self, device: torch.device, world_size: int = 1):
        self.device = torch.device(device)
        self.world_size = world_size
        self.seconds: Dict[str, float] = {p: 0.0 for p in self.PHASES}
        self.images_synthesized = 0
        self.images_seen = 0
        self._peak_cuda = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            self._peak_cuda = max(self._peak_cuda, torch.cuda.max_memory_allocated(self.device))
            return self._peak_cuda
        return peak_rss_bytes()

    def gpus(self) -> int:
        return self.world_size if self.device.type == "cuda" else 0

    def report(self) -> Dict[str, float]:
        h = {k: v / 3600.0 for k, v in self.seconds.items()}
        total_h = self.total_seconds / 3600.0
        return {
            "synthesis_hours": h["synthesis"],
            "distill_hours": h["distill"],
            "eval_hours": h["eval"],
            "total_hours": total_h,
            "synthesis_gpu_hours": h["synthesis"] * self.gpus(),
            "distill_gpu_hours": h["distill"] * self.gpus(),
            "gpu_hours": total_h * self.gpus(),
            "synthesis_seconds": self.seconds["synthesis"],
            "distill_seconds": self.seconds["distill"],
            "total_seconds": self.total_seconds,
            "peak_memory_mb": self.peak_memory_bytes() / 2**20,
            "memory_kind": "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss",
            "images_synthesized": self.images_synthesized,
            "images_seen": self.images_seen,
        }

    def state_dict(self) -> Dict:
        return {
            "seconds": dict(self.seconds),
            "images_synthesized": self.images_synthesized,
            "images_seen": self.images_seen,
            "peak_cuda": self._peak_cuda,
        }

    def load_state_dict(self, state: Dict) -> None:
        self.seconds.update(state["seconds"])
        self.images_synthesized = int(state["images_synthesized"])
        self.images_seen = int(state["images_seen"])
        self._peak_cuda = int(state.get("peak_cuda", 0))
