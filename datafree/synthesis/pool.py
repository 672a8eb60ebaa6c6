"""A device-resident pool of synthetic images.

Images enter in [0, 1] pixel space and are stored on the run's device as
uint8 (the quantisation of the PNG files the reference code writes, at a
quarter of the memory of float32), float16 or float32. The pool grows by
doubling; with a ``capacity`` it becomes a ring buffer that overwrites the
oldest images. Every pool belongs to one run: nothing is read from disk, so
a new run can never see an earlier run's images (a trap of the reference
code, whose image folders were never cleared), unless it asks for a saved set
by name (``synth.init_from``, see ``PoolSampling.fill_pool``). A run keeps its
pool as ``pool.pt`` when it ends; ``datafree export`` writes that out as PNGs.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


class DataPool:
    def __init__(self, capacity: Optional[int] = None, dtype: str = "uint8", device="cpu"):
        if dtype not in _DTYPES:
            raise ValueError(f"pool dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if capacity is not None and capacity <= 0:
            raise ValueError("pool capacity must be positive (or None for unbounded)")
        self.capacity = capacity
        self.dtype = dtype
        self.device = torch.device(device)
        self._images: Optional[torch.Tensor] = None
        self._labels: Optional[torch.Tensor] = None
        self._size = 0  # valid entries
        self._next = 0  # ring write position
        self.total_added = 0

    def __len__(self) -> int:
        return self._size

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(self.device, torch.float32).clamp_(0, 1)
        if self.dtype == "uint8":
            return x.mul_(255).round_().to(torch.uint8)
        return x.to(_DTYPES[self.dtype])

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if self.dtype == "uint8" else x.float()

    def _reserve(self, n: int, shape: Tuple[int, ...]) -> None:
        need = self._size + n if self.capacity is None else min(self.capacity, self._size + n)
        have = 0 if self._images is None else self._images.shape[0]
        if need <= have:
            return
        new = max(need, 2 * have)
        if self.capacity is not None:
            new = min(new, self.capacity)
        images = torch.empty((new, *shape), dtype=_DTYPES[self.dtype], device=self.device)
        labels = torch.full((new,), -1, dtype=torch.long, device=self.device)
        if self._images is not None:
            images[:have] = self._images
            labels[:have] = self._labels
        self._images, self._labels = images, labels

    @torch.no_grad()
    def add(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        """Add a batch of [0, 1] images (copied: later changes to ``images`` do not reach the pool), with a label
        each. The pool keeps a class per image: class maps (a segmentation target, ``(N, H, W)``) are not kept,
        their images stored with -1 (the student's targets are the teacher's outputs on the view it sees)."""
        if images.dim() != 4:
            raise ValueError(f"pool images must be (N, C, H, W), got {tuple(images.shape)}")
        if labels is not None and labels.dim() > 1:
            labels = None
        n = images.shape[0]
        if self.capacity is not None and n > self.capacity:
            images, labels = images[-self.capacity :], None if labels is None else labels[-self.capacity :]
            n = self.capacity
        self._reserve(n, tuple(images.shape[1:]))
        enc = self._encode(images)
        lab = (
            labels.detach().to(self.device, torch.long)
            if labels is not None
            else torch.full((n,), -1, dtype=torch.long, device=self.device)
        )
        if self.capacity is None:
            self._images[self._size : self._size + n] = enc
            self._labels[self._size : self._size + n] = lab
            self._size += n
        else:
            idx = (torch.arange(n, device=self.device) + self._next) % self.capacity
            self._images[idx] = enc
            self._labels[idx] = lab
            self._next = int((self._next + n) % self.capacity)
            self._size = min(self.capacity, self._size + n)
        self.total_added += n

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` images drawn uniformly with replacement, as float [0, 1], with their labels (-1: none)."""
        if self._size == 0:
            raise RuntimeError("the data pool is empty: synthesize() must run before sample()")
        idx = torch.randint(0, self._size, (n,), generator=generator).to(self.device)
        return self._decode(self._images[idx]), self._labels[idx]

    def latest(self, n: int) -> torch.Tensor:
        """The ``n`` most recently added images (for previews)."""
        if self._size == 0:
            raise RuntimeError("the data pool is empty")
        n = min(n, self._size)
        end, span = (self._size, self._size) if self.capacity is None else (self._next or self._size, self.capacity)
        idx = torch.arange(end - n, end, device=self.device) % span
        return self._decode(self._images[idx])

    def all(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._size == 0:
            raise RuntimeError("the data pool is empty")
        return self._decode(self._images[: self._size]), self._labels[: self._size]

    def clear(self) -> None:
        self._images = self._labels = None
        self._size = self._next = 0

    def state_dict(self) -> Dict:
        # entries [0, size) are the valid ones both while growing and once a ring is full
        return {
            "images": None if self._images is None else self._images[: self._size].cpu(),
            "labels": None if self._labels is None else self._labels[: self._size].cpu(),
            "size": self._size,
            "next": self._next,
            "total_added": self.total_added,
        }

    def load_state_dict(self, state: Dict) -> None:
        self._images = None if state["images"] is None else state["images"].to(self.device)
        self._labels = None if state["labels"] is None else state["labels"].to(self.device)
        self._size, self._next = int(state["size"]), int(state["next"])
        self.total_added = int(state["total_added"])
