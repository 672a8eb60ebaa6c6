"""Typed run configuration: YAML in, dotted ``key=value`` overrides, validated.

A run is fully described by one :class:`RunConfig`. It is resolved in layers,
later layers winning:

1. the defaults below;
2. the method's YAML entry (``datafree/configs/methods/<name>.yaml``), its
   ``datasets.<dataset>`` section, then its ``pairs.<dataset>/<teacher>-<student>``
   section;
3. a user config file (``--config run.yaml``, e.g. a previous run's
   ``config.yaml``: a config file is the whole record of a run);
4. ``key=value`` overrides from the command line (``synth.lr_g=1e-3``).

Unknown keys are errors with close-match suggestions, never silently ignored.
The synthesizer and distiller sections are checked against the hyper-parameter
dataclass (``Config``) of the class they name.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
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
    optim: OptimConfig = field(default_factory=OptimConfig)
    synthesizer: str = "dafl"
    synth: Dict[str, Any] = field(default_factory=dict)
    distiller: str = "kd"
    distill: Dict[str, Any] = field(default_factory=dict)
    uses_real_data: str = ""  # what real data a method uses, for the tables ("" for none)
    amp: str = "auto"  # auto (bf16 on CUDA) | off | bf16 | fp16
    channels_last: str = "auto"  # auto (on: CPU and CUDA) | on | off; see datafree/runtime.py
    cpu_malloc: str = "tuned"  # tuned (glibc keeps freed memory for reuse) | default; see datafree/runtime.py
    compile: bool = False  # torch.compile the student and teacher forward
    samples: int = 64  # images in each samples_<epoch>.png grid (0: none)
    log: str = "none"  # none | tensorboard
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


def load_yaml(path: str) -> Dict[str, Any]:
    import os

    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    return data


def pair_key(dataset: str, teacher: Optional[str], student: str) -> str:
    return f"{dataset}/{teacher}-{student}"


def resolve(
    user: Optional[Dict[str, Any]] = None,
    overrides: Optional[Dict[str, Any]] = None,
) -> RunConfig:
    """Resolve a run configuration from the method defaults, a user dict and overrides."""
    from .methods import method_layers

    user = deep_merge(user or {}, overrides or {})
    base = to_dict(RunConfig())
    head = deep_merge(base, user)
    method = head.get("method") or base["method"]
    layers = method_layers(str(method), str(head.get("dataset")), head.get("teacher"), str(head.get("student")))
    merged = base
    for layer in layers:
        merged = deep_merge(merged, layer)
    merged = deep_merge(merged, user)
    merged["method"] = method
    return build_dataclass(RunConfig, merged, "config")


def close_matches(name: str, known: List[str]) -> List[str]:
    return difflib.get_close_matches(name, known, n=3, cutoff=0.5)
