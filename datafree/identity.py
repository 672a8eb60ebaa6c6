"""Run identity: what makes a record the result of the run that is asked for.

A run's fingerprint is the sha256 of

* its resolved config (every synthesizer and distiller default included, see
  :func:`datafree.methods.resolve`) minus the keys that do not change results (:data:`NEUTRAL_KEYS`: where
  files go, progress bars, logging), with ``device`` and ``amp`` resolved for the machine the run goes to, and
  ``synth_amp`` where synthesis runs at another precision than the student's steps (the inversion methods on
  CUDA, docs/precision.md);
* on a CPU, the number of torch threads the run computes with (``threads``): a float32 sum split over two
  threads is not the one split over one, and a run's result follows every last bit of it (``threads=2`` gave
  another student than one thread under one fingerprint before, 13.89 against 15.83). ``threads=0`` counts
  what torch will use where the run goes (the benchmark runner says how many it gives each cell);
* the teacher file's sha256 (in place of the teacher's name or path: the same weights under another path are
  the same teacher, new weights under the same name are not);
* the dataset's name and spec (channels, size, classes).

A saved image set named by ``synth.init_from`` or ``synth.folder`` enters by the sha256 of its files, not
its path. Keys whose value is None are left out: a new option whose default None means "off" does not make
the records made before it stale. How a record made under an older rule is still recognised is
:func:`datafree.results.same_run`'s.

The identity is stored as ``fingerprint.json`` (:class:`datafree.results.Identity`) and checked by
``--resume`` (another config or teacher is refused), by the benchmark runner and the demo (a finished cell
is reused only when it matches; otherwise it is set aside as ``<cell>.stale-<n>/`` and run again), and by
``train-teacher`` (a teacher run is reused only for the same recipe and seed).
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, Optional, Tuple

import torch

from .config import RunConfig, to_dict
from .data import get_spec
from .data.image_set import list_images
from .errors import ConfigError, DatafreeError, UnknownNameError
from .registry import DISTILLERS, SYNTHESIZERS
from .results import THREADS_FIELD, Identity, file_sha256, fingerprint_of, flatten
from . import runtime
from .zoo import resolve_teacher

#: config keys that say where and how loudly a run runs, or how it is watched, not what it computes
#: (the allocator and the evaluation batch change speed only; the collapse settings only when a run is
#: marked or stopped, which :func:`datafree.runner.classify` checks on the record itself). ``threads`` as
#: written is left out too: the count the run computes with enters instead (see the module docstring).
NEUTRAL_KEYS = (
    "out",
    "progress",
    "log",
    "data_root",
    "model_zoo",
    "suite",
    "threads",
    "plugins",
    "tag",
    "eval_batch_size",
    "cpu_malloc",
    "collapse_patience",
    "collapse_grace",
    "stop_on_collapse",
)


def resolved_device(cfg: RunConfig, device_kind: Optional[str] = None) -> Tuple[str, str]:
    """``(device type, amp mode)`` the run will use: ``auto`` resolved as the engine resolves it, on this machine
    or, with ``device_kind``, on the machine the run goes to (a Slurm GPU node, seen from a login node)."""
    dev = cfg.device
    if dev == "auto":
        kind = device_kind or ("cuda" if torch.cuda.is_available() else "cpu")
    else:
        kind = dev.split(":")[0]
    return kind, runtime.resolve_amp(cfg.amp, kind)


def synthesis_precision(cfg: RunConfig) -> str:
    """What the run's synthesizer declares as its ``synthesis_precision``."""
    try:
        return SYNTHESIZERS.get(cfg.synthesizer).synthesis_precision
    except UnknownNameError:  # a plugin not loaded here: the engine reports it
        return "amp"


def resolved_precision(cfg: RunConfig, device_kind: Optional[str] = None) -> Dict[str, str]:
    """``{"device", "synthesis", "distillation"}``: the device type and the autocast mode (off, bf16, fp16) that
    synthesis and the student's steps (and the evaluation) will run at, as :class:`datafree.synthesis.base.Amp`
    resolves them (docs/precision.md)."""
    kind, amp = resolved_device(cfg, device_kind)
    return {
        "device": kind,
        "synthesis": runtime.synthesis_amp(cfg.amp, kind, synthesis_precision(cfg)),
        "distillation": amp,
    }


def run_threads(cfg: RunConfig, default: Optional[int] = None) -> int:
    """The torch threads a CPU run computes with: ``threads`` when set, else ``default`` (what the runner gives
    a cell) or, failing that, what torch uses in this process."""
    if cfg.threads > 0:
        return int(cfg.threads)
    return int(default) if default else torch.get_num_threads()


_SET_CACHE: Dict[tuple, str] = {}


def folder_sha256(path: str) -> str:
    """sha256 over the image files a saved set is read from (:func:`datafree.data.image_set.list_images`: their
    paths relative to the set and their bytes, in its order), cached per process by the files' (size, mtime)."""
    files = [f for f, _ in list_images(path)]
    stats = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    key = ("folder", os.path.abspath(path), stats)
    if key not in _SET_CACHE:
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.relpath(f, path).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read())
        _SET_CACHE[key] = h.hexdigest()
    return _SET_CACHE[key]


#: architectures whose name was given to another network: a record of the old one is another run (mobilenetv2
#: was the CIFAR-stride network, now mobilenetv2_cifar, until the name went to the reference repositories' one)
MODEL_REVISIONS = {"mobilenetv2": 2}

#: config keys that name a saved image set (``datafree export``): the set's files go into the fingerprint
SET_KEYS = ("synth.init_from", "synth.folder")


def needs_teacher(cfg: RunConfig) -> bool:
    return bool(SYNTHESIZERS.get(cfg.synthesizer).needs_teacher or DISTILLERS.get(cfg.distiller).needs_teacher)


def teacher_path(cfg: RunConfig) -> Optional[str]:
    """The checkpoint file of the run's teacher, or None for methods that use none."""
    if not needs_teacher(cfg):
        return None
    if not cfg.teacher:
        raise ConfigError(f"method {cfg.method} needs a teacher: pass --teacher <model or path> (teacher= in a config)")
    return resolve_teacher(cfg.teacher, cfg.dataset, cfg.model_zoo)


def run_identity(
    cfg: RunConfig,
    teacher_file: Optional[str] = "auto",
    device_kind: Optional[str] = None,
    threads: Optional[int] = None,
) -> Identity:
    """The identity of the run ``cfg`` describes. ``teacher_file="auto"`` looks the teacher up; ``device_kind``
    says where ``device=auto`` will run when that is not this machine, ``threads`` how many torch threads a
    ``threads=0`` run gets there (:func:`run_threads`)."""
    if teacher_file == "auto":
        teacher_file = teacher_path(cfg)
    conf = to_dict(cfg)
    for k in NEUTRAL_KEYS:
        conf.pop(k, None)
    # an unset key (None) is left out, so that an option added later with the default None ("off") leaves the
    # fingerprints of the records made before it as they were: they ran without it
    fields = {k: v for k, v in flatten(conf).items() if v is not None}
    # a CPU float32 record is not a CUDA bf16 one, though both configs say device=auto; "amp" is what the student's
    # steps ran at, and "synth_amp", only where it differs, what synthesis ran at (fp32 for the methods that declare
    # synthesis_precision="fp32", on CUDA under amp=auto): a record whose synthesis ran under bf16 is not one of the
    # fp32 default, and CPU records, where both are off, keep the fingerprints they had
    prec = resolved_precision(cfg, device_kind)
    fields["device"], fields["amp"] = prec["device"], prec["distillation"]
    if prec["synthesis"] != prec["distillation"]:
        fields["synth_amp"] = prec["synthesis"]
    if prec["device"] == "cpu":  # a GPU run's arithmetic does not follow the host's thread count
        fields[THREADS_FIELD] = run_threads(cfg, threads)
    for key in SET_KEYS:  # a saved image set is an input like the teacher: its content, not its path
        if isinstance(fields.get(key), str) and os.path.isdir(os.path.expanduser(fields[key])):
            fields[f"{key}.sha256"] = folder_sha256(os.path.expanduser(fields.pop(key)))
    for key in ("student", "teacher_arch"):  # a name that now means another network is another run
        rev = MODEL_REVISIONS.get(str(fields.get(key)))
        if rev:
            fields[f"{key}.revision"] = rev
    if teacher_file:
        fields.pop("teacher", None)  # the weights say which teacher it is, not the name or path
        fields["teacher.sha256"] = file_sha256(teacher_file)
    try:
        spec = get_spec(cfg.dataset)
        fields.update(
            {"dataset.channels": spec.channels, "dataset.size": spec.size, "dataset.classes": spec.num_classes}
        )
        if spec.task != "classification":  # classification records keep the fingerprints they had
            fields.update({"dataset.task": spec.task, "dataset.ignore_index": spec.ignore_index})
    except (DatafreeError, OSError):  # an image folder that is not there: the engine reports it
        pass
    return Identity(fingerprint_of(fields), fields)
