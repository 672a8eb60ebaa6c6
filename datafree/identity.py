"""Run identity: what makes a record the result of the run that is asked for.

A run's fingerprint is the sha256 of

* its resolved config (every synthesizer and distiller default included, see
  :func:`datafree.config.resolve`) minus the keys that do not change results
  (:data:`NEUTRAL_KEYS`: where files go, progress bars, logging, thread count), with ``device`` and
  ``amp`` resolved for the machine the run goes to, and ``synth_amp`` where synthesis runs at another
  precision than the student's steps (the inversion methods on CUDA, docs/precision.md);
* the teacher file's sha256 (in place of the teacher's name or path: the same
  weights under another path are the same teacher, new weights under the same
  name are not);
* the dataset's name and spec (channels, size, classes).

A saved image set named by ``synth.init_from`` or ``synth.folder`` enters by the sha256 of its
files, not its path. Keys whose value is None are left out: a new option whose default None means
"off" does not make the records made before it stale.

``fingerprint.json`` in the run directory keeps the fingerprint and the flat
key/value fields it was hashed from, so a mismatch can be explained key by
key. The fingerprint is checked by ``--resume`` (another config or teacher is
refused), by the benchmark runner and the demo (a finished cell is reused only
when it matches; otherwise it is set aside as ``<cell>.stale-<n>/`` and run
again), and by ``train-teacher`` (a teacher run is reused only for the same
recipe and seed).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .config import RunConfig, to_dict

FINGERPRINT_FILE = "fingerprint.json"

#: config keys that say where and how loudly a run runs, or how it is watched, not what it computes
#: (the allocator and the evaluation batch change speed only; the collapse settings only when a run is
#: marked or stopped, which :func:`datafree.runner.classify` checks on the record itself)
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


def resolved_device(cfg: RunConfig, device_kind: Optional[str] = None) -> tuple:
    """``(device type, amp mode)`` the run will use: ``auto`` resolved as the engine resolves it, on this machine
    or, with ``device_kind``, on the machine the run goes to (a Slurm GPU node, seen from a login node)."""
    import torch

    dev = cfg.device
    if dev == "auto":
        kind = device_kind or ("cuda" if torch.cuda.is_available() else "cpu")
    else:
        kind = dev.split(":")[0]
    from .runtime import resolve_amp

    return kind, resolve_amp(cfg.amp, kind)


def synthesis_precision(cfg: RunConfig) -> str:
    """What the run's synthesizer declares as its ``synthesis_precision`` (``amp`` when it declares nothing)."""
    from .errors import UnknownNameError
    from .registry import SYNTHESIZERS

    try:
        return getattr(SYNTHESIZERS.get(cfg.synthesizer), "synthesis_precision", "amp")
    except UnknownNameError:  # a plugin not loaded here: the engine reports it
        return "amp"


def resolved_precision(cfg: RunConfig, device_kind: Optional[str] = None) -> Dict[str, str]:
    """``{"device", "synthesis", "distillation"}``: the device type and the autocast mode (off, bf16, fp16) that
    synthesis and the student's steps (and the evaluation) will run at, as :class:`datafree.synthesis.base.Amp`
    resolves them (docs/precision.md)."""
    from .runtime import synthesis_amp

    kind, amp = resolved_device(cfg, device_kind)
    return {"device": kind, "synthesis": synthesis_amp(cfg.amp, kind, synthesis_precision(cfg)), "distillation": amp}


_SHA_CACHE: Dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file, cached per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        from .models import sha256_file

        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


#: architectures whose name was given to another network: a record of the old one is another run (mobilenetv2
#: was the CIFAR-stride network, now mobilenetv2_cifar, until the name went to the reference repositories' one)
MODEL_REVISIONS = {"mobilenetv2": 2}

#: config keys that name a saved image set (``datafree export``): the set's files go into the fingerprint
SET_KEYS = ("synth.init_from", "synth.folder")


def folder_sha256(path: str) -> str:
    """sha256 over the image files a saved set is read from (:func:`datafree.data.image_set.list_images`: their
    paths relative to the set and their bytes, in its order), cached per process by the files' (size, mtime)."""
    from .data.image_set import list_images

    files = [f for f, _ in list_images(path)]
    stats = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    key = ("folder", os.path.abspath(path), stats)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.relpath(f, path).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read())
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"synth": {"lr_g": 1e-3}}`` -> ``{"synth.lr_g": 1e-3}`` (lists stay values)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


@dataclass
class Identity:
    fingerprint: str
    fields: Dict[str, Any]

    def as_dict(self) -> Dict[str, Any]:
        return {"fingerprint": self.fingerprint, "fields": self.fields}


def needs_teacher(cfg: RunConfig) -> bool:
    from .registry import DISTILLERS, SYNTHESIZERS

    return bool(
        getattr(SYNTHESIZERS.get(cfg.synthesizer), "needs_teacher", True)
        or getattr(DISTILLERS.get(cfg.distiller), "needs_teacher", True)
    )


def teacher_path(cfg: RunConfig) -> Optional[str]:
    """The checkpoint file of the run's teacher, or None for methods that use none."""
    if not needs_teacher(cfg):
        return None
    from .errors import ConfigError
    from .zoo import resolve_teacher

    if not cfg.teacher:
        raise ConfigError(f"method {cfg.method} needs a teacher: set teacher=<model or path>")
    return resolve_teacher(cfg.teacher, cfg.dataset, cfg.model_zoo)


def run_identity(cfg: RunConfig, teacher_file: Optional[str] = "auto", device_kind: Optional[str] = None) -> Identity:
    """The identity of the run ``cfg`` describes. ``teacher_file="auto"`` looks the teacher up; ``device_kind``
    says where ``device=auto`` will run when that is not this machine."""
    from .data import get_spec

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
    except Exception:  # an image folder that is not there: the engine reports it
        pass
    return Identity(fingerprint_of(fields), fields)


def fingerprint_of(fields: Dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def same_run(old: Optional[Identity], new: Identity) -> bool:
    """Whether a recorded identity is the one asked for: the same fingerprint, or a record made before unset
    (None) keys were left out whose fields, without them, give the new fingerprint."""
    if old is None:
        return False
    if old.fingerprint == new.fingerprint:
        return True
    legacy = {k: v for k, v in old.fields.items() if v is not None}
    return len(legacy) < len(old.fields) and fingerprint_of(legacy) == new.fingerprint


def read_identity(run_dir: str) -> Optional[Identity]:
    """The identity recorded in ``run_dir``, or None (no record, or one from before fingerprints)."""
    path = os.path.join(run_dir, FINGERPRINT_FILE)
    try:
        with open(path) as f:
            d = json.load(f)
        return Identity(str(d["fingerprint"]), dict(d["fields"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_identity(run_dir: str, ident: Identity) -> None:
    from .results import atomic_write_json

    atomic_write_json(os.path.join(run_dir, FINGERPRINT_FILE), ident.as_dict())


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:12] + "..."


def differences(old: Optional[Identity], new: Identity, limit: int = 6) -> str:
    """``"synth.lr_g 0.001 -> 0.002, teacher.sha256 27cf5cd0... -> 9a1b..."`` (or why there is nothing to compare)."""
    if old is None:
        return "it has no fingerprint.json (recorded before run fingerprints, or not by datafree)"
    keys = sorted(set(old.fields) | set(new.fields))
    missing = object()
    diffs: List[str] = []
    for k in keys:
        a, b = old.fields.get(k, missing), new.fields.get(k, missing)
        if a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            diffs.append(
                f"{k} {'(unset)' if a is missing else _short(a)} -> {'(unset)' if b is missing else _short(b)}"
            )
    if not diffs:
        return "the fingerprints differ"
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def matches(run_dir: str, ident: Identity) -> bool:
    return same_run(read_identity(run_dir), ident)


def stale_name(run_dir: str) -> str:
    n = 1
    while os.path.exists(f"{run_dir}.stale-{n}"):
        n += 1
    return f"{run_dir}.stale-{n}"


def set_aside(run_dir: str) -> str:
    """Move a stale record to ``<run_dir>.stale-<n>/`` (under its lock); return the new path."""
    from .lock import DirLock

    target = stale_name(run_dir)
    with DirLock(run_dir, "run directory"):
        os.rename(run_dir, target)
    return target


def has_records(run_dir: str) -> bool:
    return any(
        os.path.exists(os.path.join(run_dir, f))
        for f in ("summary.json", "metrics.jsonl", "checkpoint.pt", FINGERPRINT_FILE)
    )
