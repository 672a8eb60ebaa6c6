"""Process-level speed settings that are on by default where they are safe.

Two of them matter on a CPU as much as on a GPU:

* **channels_last** (``channels_last: auto``): models and their 4-D inputs in
  NHWC memory order. On CUDA it is what bf16 tensor-core convolutions want; on
  the CPU oneDNN's convolutions skip a layout reorder per call. Measured on the
  2-core development VM (torch 2.14.1): a KD step of wrn40_2 -> wrn16_1 at batch
  256 takes 585-600 ms against 715-730 ms, an inversion step through both models
  1.2x less, resnet34 -> resnet18 1.1-1.3x less, LeNet-5 the same. Results are
  equal up to float rounding (the convolutions' summation order differs).

* **CPU allocator** (``cpu_malloc: tuned``): glibc serves every block of more
  than 32 MiB (a 256 x 32 x 32 x 32 float activation is exactly that) with a
  fresh ``mmap`` and returns it with ``munmap``, so each such tensor costs one
  page fault per 4 KiB page on every use: 8,192 faults and about 6 ms for a ReLU
  that takes 1 ms on warm memory. :func:`tune_cpu_malloc` makes glibc keep freed
  memory in its heap (``M_MMAP_MAX`` 0, a 1 GiB trim threshold), so a training
  loop reuses the same pages every iteration. On the VM this cut a CMI synthesis
  iteration (wrn40_2, batch 256) from 6.4 s to 4.6 s and a Fast-DFKD one from
  4.3 s to 2.6 s. The cost: the heap grows over the first few iterations, until
  freed blocks have coalesced into ones the next iteration can reuse, and the
  process keeps that heap until it exits (the CUDA caching allocator does the same
  with GPU memory), so its peak RSS is higher (results/perf.md has the figures).
  It is a no-op where the C library is not glibc, and ``cpu_malloc: default``
  leaves the allocator alone.
  The setting is process-wide and cannot be undone in the same process.

And one that matters on CUDA only, the run's precision (``amp``, docs/precision.md):

* **amp** (``amp: auto``): on CUDA the student's KD step, the evaluation and the
  synthesis of most methods run under bf16 autocast; on the CPU nothing does
  (``auto`` is ``off``). A synthesizer that declares
  ``synthesis_precision = "fp32"`` (DeepInversion, CMI, Fast-DFKD, DFQ: the methods
  whose loss is dominated by the BN-statistics term, a sum of small differences
  between large activation statistics) synthesises in fp32 under ``auto``, as the
  reference code does (it has no mixed precision). An explicit ``amp=bf16`` (or
  ``fp16``) runs synthesis at that precision too; ``amp=off`` runs everything in
  fp32. :func:`resolve_amp` and :func:`synthesis_amp` say what a run will use; the
  run's fingerprint records both (:mod:`datafree.identity`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Optional

import torch

from .errors import UnknownNameError

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_tuned: Optional[bool] = None  # None: not tried yet


def use_channels_last(setting: str, device: torch.device) -> bool:
    """Whether a run keeps its models and image batches in channels_last order (``auto``: yes, CPU and CUDA)."""
    if setting not in ("auto", "on", "off"):
        raise UnknownNameError("channels_last", setting, ["auto", "on", "off"])
    if setting == "off":
        return False
    return setting == "on" or device.type in ("cpu", "cuda")


#: the values of the run's ``amp`` setting
AMP_SETTINGS = ("auto", "off", "bf16", "fp16")
#: what a synthesizer may declare as its ``synthesis_precision``: ``amp`` (the run's autocast, the default) or
#: ``fp32`` (no autocast under ``amp=auto``; an explicit ``amp=bf16``/``fp16`` still applies)
SYNTHESIS_PRECISIONS = ("amp", "fp32")


def resolve_amp(setting: str, device_type: str) -> str:
    """The autocast mode (``off``, ``bf16`` or ``fp16``) of a run's student steps and evaluation:
    ``auto`` is bf16 on CUDA and off elsewhere."""
    if setting not in AMP_SETTINGS:
        raise UnknownNameError("amp", setting, list(AMP_SETTINGS))
    if setting == "auto":
        return "bf16" if device_type == "cuda" else "off"
    return setting


def synthesis_amp(setting: str, device_type: str, precision: str = "amp") -> str:
    """The autocast mode a synthesizer that declares ``precision`` runs at (see the module docstring):
    ``fp32`` turns ``auto`` into ``off``; every explicit setting is taken as it is."""
    if precision not in SYNTHESIS_PRECISIONS:
        raise UnknownNameError("synthesis_precision", precision, list(SYNTHESIS_PRECISIONS))
    if setting == "auto" and precision == "fp32":
        resolve_amp(setting, device_type)  # the setting is checked all the same
        return "off"
    return resolve_amp(setting, device_type)


def precision_name(mode: str) -> str:
    """``fp32`` for the autocast mode ``off``, else the mode (``bf16``, ``fp16``)."""
    return "fp32" if mode == "off" else mode


def tune_cpu_malloc(setting: str = "tuned") -> bool:
    """Keep freed heap memory for reuse instead of unmapping it (see the module docstring).

    Returns whether the process's allocator is tuned. Idempotent; ``setting`` is
    ``tuned`` or ``default`` (the latter does nothing, and cannot undo an earlier tuning).
    """
    global _tuned
    if setting not in ("tuned", "default"):
        raise UnknownNameError("cpu_malloc", setting, ["tuned", "default"])
    if setting == "default" or _tuned is not None:
        return bool(_tuned)
    _tuned = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
            and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1
        )
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok
