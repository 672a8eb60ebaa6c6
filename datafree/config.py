"""Typed run configuration: the :class:`RunConfig` dataclass, YAML and dotted ``key=value`` overrides in,
coercion to the declared types, and the checks that need nothing but the values.

A run is fully described by one :class:`RunConfig`. It is resolved in layers (:func:`datafree.methods.resolve`),
later layers winning:

1. the defaults below;
2. the method's YAML entry (``datafree/configs/methods/<name>.yaml``), its
   ``datasets.<dataset>`` section, then its ``pairs.<dataset>/<teacher>-<student>``
   section;
3. a user config file (``--config run.yaml``, e.g. a previous run's
   ``config.yaml``: a config file is the whole record of a run);
4. ``key=value`` overrides from the command line (``synth.lr_g=1e-3``).

Unknown keys are errors with close-match suggestions, never silently ignored. This module is a leaf: the
checks that need a dataset, a model or a logger to exist run where the run is built
(:func:`datafree.engine.check_run`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from .errors import ConfigError, UnknownNameError


@dataclass
class OptimConfig:
    """The student's optimiser and learning-rate schedule (stepped per epoch)."""

    name: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    betas: Tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"  # cosine | multistep | constant
    lr_min: float = 0.0  # cosine floor
    milestones: List[float] = field(default_factory=list)  # multistep: epochs, or fractions < 1
    gamma: float = 0.1


@dataclass
class RunConfig:
    """Everything a run needs. ``synth``/``distill`` hold method hyper-parameters."""

    method: str = "dafl"
    dataset: str = "digits"
    teacher: Optional[str] = "lenet5"  # model name (model_zoo/<dataset>_<name>.pt) or a path
    teacher_arch: Optional[str] = None  # the teacher file's architecture, when it does not say (a bare state dict)
    student: str = "lenet5_half"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core)
    epochs: int = 10
    ep_steps: Optional[int] = 100  # student steps per epoch (null: one pass over real data)
    kd_steps: Optional[int] = None  # student steps per synthesis round (null: ep_steps)
    warmup: int = 0  # first epochs synthesise only; the student does not train
    batch_size: int = 128  # student batch
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    eval_batch_size: int = 512
    # which student weights a run keeps besides the last: null (or "last") none; "best" also writes
    # student_best.pt at each evaluation that beats the best so far (selected on the test split)
    keep: Optional[str] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    synthesizer: str = "dafl"
    synth: Dict[str, Any] = field(default_factory=dict)
    distiller: str = "kd"
    distill: Dict[str, Any] = field(default_factory=dict)
    uses_real_data: str = ""  # what real data a method uses, for the tables ("" for none)
    amp: str = (
        "auto"  # auto (bf16 on CUDA, fp32 synthesis for deepinv/cmi/fast/dfq; docs/precision.md) | off | bf16 | fp16
    )
    channels_last: str = "auto"  # auto (on: CPU and CUDA) | on | off; see datafree/runtime.py
    cpu_malloc: str = "tuned"  # tuned (glibc keeps freed memory for reuse) | default; see datafree/runtime.py
    compile: bool = False  # torch.compile the student and teacher forward
    # collapse to chance: an evaluation within a point of 100/classes is "at chance"; a run whose last
    # collapse_patience evaluations (after the first collapse_grace) are all at chance is marked collapsed
    collapse_patience: int = 3
    collapse_grace: int = 2
    stop_on_collapse: bool = False  # stop a collapsed run at once (status "collapsed", exit code 0)
    samples: int = 64  # images in each samples_<epoch>.png grid (0: none)
    log: str = "none"  # none | csv | tensorboard | wandb, or several: csv,tensorboard (see datafree/loggers.py)
    progress: bool = True
    data_root: Optional[str] = None
    model_zoo: Optional[str] = None
    out: Optional[str] = None  # run directory; default results/runs/<run_id>
    suite: Optional[str] = None  # set by the benchmark runner
    tag: str = ""
    plugins: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    out = copy.deepcopy(base)
    for k, v in (update or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(items: List[str]) -> Dict[str, Any]:
    """``["synth.lr_g=1e-3", "epochs=5"]`` -> nested dict. Values are YAML scalars."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. synth.lr_g=1e-3)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp) or tp


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a clear error."""
    if isinstance(tp, str):  # postponed annotation strings are resolved by callers
        raise TypeError(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        if isinstance(value, bool):  # YAML 1.1 reads on/off (and yes/no) as booleans: our switches spell on/off
            return "on" if value else "off"
        return str(value)
    if origin in (list, List):
        if value is None:
            return []
        if isinstance(value, (str, int, float)):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        inner = args[0] if args else Any
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {value!r}")
        inner = list(args) if args and args[-1] is not Ellipsis else [args[0] if args else Any] * len(value)
        return tuple(coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    return value


def build_dataclass(cls: type, values: Dict[str, Any], where: str) -> Any:
    """Instantiate a config dataclass from a dict, rejecting unknown keys."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        k = unknown[0]
        raise UnknownNameError(f"key in {where}", str(k), names)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain YAML-able structure."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


#: PyYAML's safe loader, libyaml's parser where PyYAML was built with it (the same documents, a tenth of the
#: time: the method files are read on every command, `datafree list` included)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.load(f, Loader=_SAFE_LOADER) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    return data


def pair_key(dataset: str, teacher: Optional[str], student: str) -> str:
    return f"{dataset}/{teacher}-{student}"


#: the accepted values of the run's string switches
CHOICES = {
    "amp": ("auto", "off", "bf16", "fp16"),
    "channels_last": ("auto", "on", "off"),
    "cpu_malloc": ("tuned", "default"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.schedule": ("cosine", "multistep", "constant"),
}


def validate(cfg: RunConfig) -> RunConfig:
    """Range and choice checks of a resolved config, before any file is written or any model is loaded.

    Raises :class:`ConfigError` naming the bad key and value.
    """

    def bad(key: str, value: Any, want: str) -> ConfigError:
        return ConfigError(f"{key}={value!r} is out of range: {key} must be {want}")

    for key in ("epochs", "batch_size", "eval_every", "eval_batch_size", "collapse_patience"):
        if getattr(cfg, key) < 1:
            raise bad(key, getattr(cfg, key), "at least 1")
    for key in ("ep_steps", "kd_steps"):
        v = getattr(cfg, key)
        if v is not None and v < 1:
            raise bad(
                key,
                v,
                "at least 1, or null"
                + (" (one pass over the data)" if key == "ep_steps" else " (one round per epoch)"),
            )
    for key in ("warmup", "samples", "threads", "collapse_grace", "seed"):
        if getattr(cfg, key) < 0:
            raise bad(key, getattr(cfg, key), "0 or more")
    if cfg.warmup >= cfg.epochs:
        raise bad(
            "warmup", cfg.warmup, f"smaller than epochs ({cfg.epochs}): the student must train at least one epoch"
        )
    o = cfg.optim
    if not (o.lr > 0 and math.isfinite(o.lr)):
        raise bad("optim.lr", o.lr, "a finite number above 0")
    if not all(0 <= b < 1 for b in o.betas):
        raise bad("optim.betas", list(o.betas), "two numbers in [0, 1)")
    for key in ("momentum", "weight_decay", "lr_min", "gamma"):
        v = getattr(o, key)
        if not (v >= 0 and math.isfinite(v)):
            raise bad(f"optim.{key}", v, "a finite number, 0 or more")
    for key, allowed in CHOICES.items():
        obj, name = (o, key.split(".", 1)[1]) if key.startswith("optim.") else (cfg, key)
        v = getattr(obj, name)
        if v not in allowed:
            close = close_matches(str(v), [a for a in allowed if a])
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{key}={v!r} is not a known value: use one of {', '.join(a for a in allowed if a)}.{hint}"
            )
    if cfg.keep not in (None, "last", "best"):
        close = close_matches(str(cfg.keep), ["last", "best"])
        raise ConfigError(
            f"keep={cfg.keep!r} is not a known value: use last or best."
            + (f" Did you mean {close[0]!r}?" if close else "")
        )
    if cfg.keep == "last":
        cfg.keep = None  # the default, spelled one way: keep=last is the same run (and fingerprint) as no keep
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"device={dev!r} is not a device: use auto, cpu, cuda or cuda:N")
    return cfg


#: method hyper-parameters that are counts of at least one, by name (``*batch_size`` too)
POSITIVE_INTS = ("ngf", "nz", "iterations", "g_steps", "n_neg", "vae_width")
#: method hyper-parameters that must be above 0, by name (``lr*`` too)
POSITIVE_FLOATS = ("T", "adv_T", "temperature", "tau", "bn_eps", "eps")
#: method hyper-parameters that take one of a few values, by name: a logarithm's base (``losses.LOG_BASES``:
#: "10" as DAFL's code and the MB-/PRE-DFKD release, "e" as the CMI repository), and the student's mode in a
#: synthesis loss ("train" where a reference loop leaves it so, "eval" frozen)
METHOD_CHOICES = {"ie_log": ("10", "e"), "student_mode": ("train", "eval")}


def check_method_values(hp: Any, section: str) -> None:
    """Range checks of a synthesizer's or distiller's hyper-parameters, by the conventions of their names:
    every float finite, learning rates and temperatures above 0, batch sizes and the counts above at least 1.
    A ``Config`` declares the values a string field takes in a ``choices`` class attribute (a
    ``ClassVar[Dict[str, tuple]]``, over :data:`METHOD_CHOICES`), and may add other checks in a ``validate()``
    method that raises :class:`ConfigError` (a declaration is better: ``--print-config`` reads it without
    importing the class's module, datafree/catalog.py)."""
    choices = {**METHOD_CHOICES, **dict(getattr(hp, "choices", None) or {})}
    for f in fields(hp):
        v, key = getattr(hp, f.name), f"{section}.{f.name}"
        if isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}={v!r} is out of range: {key} must be a finite number")
        positive = f.name in POSITIVE_FLOATS or f.name.startswith("lr") and not f.name.startswith("lr_min")
        if isinstance(v, (int, float)) and positive and not v > 0:
            raise ConfigError(f"{key}={v!r} is out of range: {key} must be above 0")
        if isinstance(v, int) and (f.name in POSITIVE_INTS or f.name.endswith("batch_size")) and v < 1:
            raise ConfigError(f"{key}={v!r} is out of range: {key} must be at least 1")
        if f.name == "betas" and isinstance(v, (list, tuple)) and not all(0 <= b < 1 for b in v):
            raise ConfigError(f"{key}={list(v)!r} is out of range: {key} must be numbers in [0, 1)")
        allowed = choices.get(f.name)
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{key}={v!r} is not one of its values: choose one of {list(allowed)}")
    check = getattr(hp, "validate", None)
    if callable(check):
        check()


def set_provenance(cfg: RunConfig, why: List[str]) -> None:
    """Keep on a resolved config which method sections it was built from, each with why it applied."""
    object.__setattr__(cfg, "_provenance", list(why))


def provenance(cfg: RunConfig) -> List[str]:
    """The method sections a resolved config was built from, each with why it applied."""
    return list(cfg.__dict__.get("_provenance", []))


def config_yaml(cfg: RunConfig) -> str:
    """The config as YAML, headed by comments that say which method sections applied and why."""
    lines = [f"# {why}" for why in provenance(cfg)]
    head = (
        "# resolved config of method " + cfg.method + ": every default included; "
        "`datafree distill --config THIS_FILE` repeats the run\n"
    )
    body = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    return head + "".join(l + "\n" for l in lines) + body


def close_matches(name: str, known: List[str]) -> List[str]:
    return difflib.get_close_matches(name, known, n=3, cutoff=0.5)
