"""Shared helpers of the THEIRS-side parity adapters (cmi_repo.py, fast_datafree.py, ljrprocc.py) and of
benchmarks/parity/parity.py (hashing, atomic writes, git, machine info, budget layouts).

Nothing here imports this repository's ``datafree`` package: the reference
packages have the same name, and each adapter runs in its own process with the
reference work tree first on ``sys.path``. What lives here is ours: the
import stand-ins, LeNet-5 modules whose parameter names equal those of
``datafree/models/lenet.py`` (so our teacher file loads with strict=True), the
MNIST test set prepared as ``datafree/data/datasets.py`` prepares it, seeding,
budget loading and the atomic record writers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import types
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------- arguments / budget


def arg_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The arguments parity.py passes every adapter (an adapter may add its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", required=True, help="benchmarks/parity/budgets/<method>.yaml")
    p.add_argument("--teacher", required=True, help="our checkpoint file (dict with state_dict, arch, spec)")
    p.add_argument("--data-root", required=True, help="folder holding mnist/ (torchvision or flat IDX layout)")
    p.add_argument("--worktree", required=True, help="the reference repository's work tree (outside ours)")
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="2 epochs, few steps: a test that the wiring runs")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return arg_parser().parse_args(argv)


def start(argv: Optional[List[str]], method: str):
    """``(args, budget file, effective budget)`` of a shared-layout adapter run.

    One torch thread per OMP_NUM_THREADS."""
    a = parse_args(argv)
    spec = load_budget(a.budget)
    if a.method != spec["method"] or a.method != method:
        raise SystemExit(f"error: this adapter runs {method} (budget says {spec['method']!r}, --method {a.method!r})")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return a, spec, effective_budget(spec, a.smoke)


def load_budget(path: str) -> Dict[str, Any]:
    import yaml

    with open(path) as f:
        b = yaml.safe_load(f)
    for key in ("method", "shared", "sources", "ours", "smoke"):
        if key not in b:
            raise SystemExit(f"error: budget {path} has no {key!r} section")
    return b


def effective_budget(b: Dict[str, Any], smoke: bool) -> Dict[str, Any]:
    """The shared values (``budget`` or, in the fast10 / cudfkd layout, ``shared``), with the smoke section's
    replacements under --smoke: the ``budget`` dict both sides record."""
    shared = dict(b["budget"] if "budget" in b else b["shared"])
    if smoke:
        shared.update(b.get("smoke") or {})
    return shared


# ----------------------------------------------------------------------------- import stand-ins


def import_shims(stub_modules=()) -> List[str]:
    """Stand-ins for modules the reference code imports but newer environments lack."""
    applied = []
    try:
        import termcolor  # noqa: F401
    except ImportError:  # their logger's colours only
        mod = types.ModuleType("termcolor")
        mod.colored = lambda text, *a, **k: text
        sys.modules["termcolor"] = mod
        applied.append("termcolor: stub, colored() returns the text")
    import torch.hub
    import torchvision.models

    try:
        import torchvision.models.utils  # noqa: F401
    except ImportError:  # removed from torchvision; imported by their ImageNet model files, never called here
        mod = types.ModuleType("torchvision.models.utils")
        mod.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = mod
        torchvision.models.utils = mod
        applied.append("torchvision.models.utils -> torch.hub.load_state_dict_from_url")
    for name in stub_modules:
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__getattr__ = lambda attr, _n=name: type(attr, (), {})  # any name: an inert placeholder
            sys.modules[name] = mod
            applied.append(f"{name}: inert stub (imported by a file this method never uses)")
    return applied


def import_reference(worktree: str, stub_modules=()):
    """Put the reference work tree first on sys.path and import ITS datafree, registry and datafree_kd."""
    root = os.path.abspath(worktree)
    if not os.path.isfile(os.path.join(root, "datafree_kd.py")):
        raise SystemExit(f"error: {root} is not a reference work tree (no datafree_kd.py)")
    if "datafree" in sys.modules:
        raise SystemExit("error: a datafree package is already imported; the adapter needs a fresh process")
    sys.path.insert(0, root)
    shims = import_shims(stub_modules)
    import datafree  # THEIR package
    import registry
    import datafree_kd

    for mod in (datafree, registry, datafree_kd):
        if not os.path.abspath(mod.__file__).startswith(root + os.sep):
            raise SystemExit(f"error: imported {mod.__name__} from {mod.__file__}, not from {root}")
    return datafree, registry, datafree_kd, shims


def git_commit(root: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def git_origin(root: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", root, "config", "--get", "remote.origin.url"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def no_file_mnist(registry) -> str:
    """``registry.datasets.MNIST`` -> a stub that keeps the transform it is given and reads no files (their
    get_dataset would download into data_root/torchdata); the test set is read by :func:`mnist_test`."""

    class NoFilesMNIST:
        def __init__(self, root=None, train=True, download=False, transform=None, target_transform=None, **kw):
            self.transform = transform

    ds = types.SimpleNamespace(
        **{k: getattr(registry.datasets, k) for k in dir(registry.datasets) if not k.startswith("_")}
    )
    ds.MNIST = NoFilesMNIST
    registry.datasets = ds
    return "registry.datasets.MNIST -> no-file stub (their transform kept; test set read by the adapter)"


def observe_losses(module, cross_entropy, adv) -> None:
    """Observe-only wrappers in a synthesizer's module: ``module.F`` -> torch.nn.functional with
    ``cross_entropy(out, input, target)`` called after each cross-entropy (to log what it likes), and
    ``module.kldiv`` calling ``adv(value)`` with -(masked KL summed over classes).mean(), their adversarial
    term's formula recomputed on the values they pass. Their results are returned unchanged."""
    import torch.nn.functional as F

    proxy = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})

    def ce(input, target, *args, **kw):
        out = F.cross_entropy(input, target, *args, **kw)
        cross_entropy(out, input, target)
        return out

    proxy.cross_entropy = ce
    module.F = proxy
    orig_kldiv = module.kldiv

    def kldiv(logits, targets, T=1.0, reduction="batchmean"):
        out = orig_kldiv(logits, targets, T=T, reduction=reduction)
        with torch.no_grad():
            mask = (logits.max(1)[1] == targets.max(1)[1]).float()
            adv(-(out.sum(1) * mask).mean())
        return out

    module.kldiv = kldiv


# ----------------------------------------------------------------------------- models


class ShimLeNet5(nn.Module):
    """LeNet-5 (optionally with BN), parameter names equal to datafree/models/lenet.py at 32x32, 1 channel.

    ``forward(x, return_features=False, l=0)``: the reference classifiers return (logits, pooled features) with
    return_features; ljrprocc/DataFree's CuDFKD also passes ``l`` (a feature-level index; level 0 is the whole
    network, the only one its --no_feature scripts use), accepted and ignored.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0, bn: bool = False):
        super().__init__()
        c1, c2, c3, f1 = (int(round(c * width)) for c in (6, 16, 120, 84))

        def block(conv, pool):
            layers = [conv] + ([nn.BatchNorm2d(conv.out_channels)] if bn else []) + [nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(
            *block(nn.Conv2d(in_channels, c1, 5), True),
            *block(nn.Conv2d(c1, c2, 5), True),
            *block(nn.Conv2d(c2, c3, 5), False),
        )
        hidden = [nn.Linear(c3, f1)] + ([nn.BatchNorm1d(f1)] if bn else []) + [nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*hidden, nn.Linear(f1, num_classes))

    def forward(self, x, return_features: bool = False, l: int = 0):
        f = torch.flatten(self.features(x), 1)  # the map is 1x1 at 32x32: the same as ours' avg-pool + flatten
        out = self.head(f)
        return (out, f) if return_features else out


SHIM_MODELS = {
    "lenet5": lambda num_classes=10, **kw: ShimLeNet5(num_classes, width=1.0),
    "lenet5_half": lambda num_classes=10, **kw: ShimLeNet5(num_classes, width=0.5),
    "lenet5_bn": lambda num_classes=10, **kw: ShimLeNet5(num_classes, width=1.0, bn=True),
}


def register_models(registry) -> List[str]:
    added = []
    for name, fn in SHIM_MODELS.items():
        if name not in registry.MODEL_DICT:
            registry.MODEL_DICT[name] = fn
            added.append(name)
    return [f"registry.MODEL_DICT += {added} (adapter's LeNet-5 modules, our parameter names)"] if added else []


def load_teacher(registry, path: str):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    arch = ck["arch"]
    t = registry.get_model(arch, num_classes=ck["spec"]["num_classes"])
    t.load_state_dict(ck["state_dict"], strict=True)
    return t.eval(), ck


def build_models(datafree, registry, a, b):
    """Their main_worker's first steps for MNIST, after seeding: ``(num_classes, train set (transform only),
    normalizer, student, teacher)``; our teacher file loaded strictly, its normalisation checked against theirs."""
    seed_all(a.seed)
    num_classes, ori_dataset, _ = registry.get_dataset(name="mnist", data_root="/nonexistent")
    norm = registry.NORMALIZE_DICT["mnist"]
    normalizer = datafree.utils.Normalizer(**norm)
    student = registry.get_model(b["student"], num_classes=num_classes)
    teacher, ck = load_teacher(registry, a.teacher)
    if list(ck["spec"]["mean"]) != list(norm["mean"]) or list(ck["spec"]["std"]) != list(norm["std"]):
        raise SystemExit(f"error: teacher normalisation {ck['spec']} != their NORMALIZE_DICT['mnist']")
    return num_classes, ori_dataset, normalizer, student, teacher


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fast_meta_on_cpu(gen_mod, fast_meta) -> str:
    """Fast-Datafree's Generator.clone() and fast_meta's fomaml_grad / reptile_grad call ``.cuda()``: the same
    operations on the generator's own device. Returns the shim's description."""

    def clone(self):
        c = type(self)(*self.params)
        c.load_state_dict(self.state_dict())
        return c.to(next(self.parameters()).device)

    def fomaml_grad(src, tar):
        for p, tar_p in zip(src.parameters(), tar.parameters()):
            if p.grad is None:
                p.grad = torch.zeros(p.size(), device=p.device)
            p.grad.data.add_(tar_p.grad.data)

    def reptile_grad(src, tar):
        for p, tar_p in zip(src.parameters(), tar.parameters()):
            if p.grad is None:
                p.grad = torch.zeros(p.size(), device=p.device)
            p.grad.data.add_(p.data - tar_p.data, alpha=67)

    gen_mod.Generator.clone = clone
    fast_meta.fomaml_grad = fomaml_grad
    fast_meta.reptile_grad = reptile_grad
    return "Generator.clone / fast_meta.fomaml_grad / reptile_grad: .cuda() -> the generator's device"


# ----------------------------------------------------------------------------- data


def _read_idx(path: str) -> np.ndarray:
    import gzip
    import struct

    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and code == 0x08, path
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: str, stem: str) -> str:
    for folder in ("MNIST/raw", "mnist", "MNIST", ""):
        for name in (stem, stem + ".gz"):
            p = os.path.join(root, folder, name)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"{stem} under {root}")


def mnist_test(data_root: str, mean=(0.1307,), std=(0.3081,)):
    """MNIST test split as ours prepares it: uint8 resized to 32x32 (antialiased), /255, normalised."""
    from torchvision.transforms.functional import resize

    x = torch.from_numpy(_read_idx(_find(data_root, "t10k-images-idx3-ubyte")).copy())[:, None]
    y = torch.from_numpy(_read_idx(_find(data_root, "t10k-labels-idx1-ubyte")).astype(np.int64))
    x = resize(x, [32, 32], antialias=True).float().div_(255)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s, y


def test_split(registry, data_root: str):
    """Our MNIST test split with their normaliser's values (checked equal to the teacher's by build_models)."""
    norm = registry.NORMALIZE_DICT["mnist"]
    return mnist_test(data_root, norm["mean"], norm["std"])


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    model.train(was)
    return 100.0 * correct / len(x)


# ----------------------------------------------------------------------------- misc


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(out: str, record: Dict[str, Any], curves: List[Dict[str, Any]]) -> None:
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "curves.jsonl"), "".join(json.dumps(c) + "\n" for c in curves))
    atomic_write(os.path.join(out, "record.json"), json.dumps(record, indent=1))


def epoch_row(
    method: str, epoch: int, terms: "TermLog", acc: float, lr: float, seconds: float, shown=("bn", "oh", "adv")
) -> Dict[str, Any]:
    """curves.jsonl's line of an epoch (the epoch means of the observed terms), printed."""
    row = {"epoch": epoch, **terms.pop(), "acc": acc, "lr": lr, "seconds": seconds}
    print(
        f"[theirs {method}] epoch {epoch} acc {acc:.2f} {seconds:.1f}s "
        + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k in shown),
        flush=True,
    )
    return row


def theirs_record(
    a,
    spec: Dict[str, Any],
    b: Dict[str, Any],
    datafree,
    accs: List[float],
    secs: List[float],
    shims: List[str],
    **extra,
) -> Dict[str, Any]:
    """record.json of a shared-layout adapter run (schema: benchmarks/parity/README.md)."""
    return {
        "method": a.method,
        "side": "theirs",
        "seed": a.seed,
        "acc_last": accs[-1],
        "acc_best": max(accs),
        "epochs": b["epochs"],
        "epoch_seconds": secs,
        "eval_acc": accs,
        "budget": b,
        "smoke": a.smoke,
        "teacher_sha256": sha256(a.teacher),
        **extra,
        "reference_repo": spec["reference"]["repo"],
        "reference_commit": git_commit(a.worktree),
        "reference_origin": git_origin(a.worktree),
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "torch": torch.__version__,
        "shims": shims,
        "their_package": os.path.dirname(datafree.__file__),
    }


def machine() -> Dict[str, Any]:
    """The CPU (lscpu's model name), its cores and hardware threads, the host and the Python version."""
    info: Dict[str, Any] = {
        "cpu": "",
        "cores": None,
        "threads": os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "node": platform.node(),
        "python": platform.python_version(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        kv = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}
        info["cpu"] = kv.get("Model name", "")
        per_socket, sockets = kv.get("Core(s) per socket"), kv.get("Socket(s)")
        if per_socket and sockets:
            info["cores"] = int(per_socket) * int(sockets)
        info["threads"] = int(kv.get("CPU(s)", os.cpu_count() or 0))
    except (OSError, ValueError):
        pass
    return info


class TermLog:
    """Epoch means of observed loss terms."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, name: str, value) -> None:
        v = float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)
        self.sums[name] = self.sums.get(name, 0.0) + v
        self.counts[name] = self.counts.get(name, 0) + 1

    def pop(self) -> Dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out
