"""The Python side of ``scripts/gpu_check.sh``: the environment record, the fp32-against-bf16 synthesis comparison
and the summary (docs/precision.md).

``python -m datafree.gpucheck env --out DIR [--dry-run]``
    ``DIR/env.json``: torch, CUDA, the GPU, the TF32 switches, the commit. Exits 3 when a GPU run finds no CUDA.
``python -m datafree.gpucheck precision --out DIR [--dry-run] [--device D] [--teacher FILE] [--methods m,...]``
    For DeepInversion, CMI and Fast-10, a short CIFAR-shaped synthesis run twice from the same seed: once with
    synthesis in fp32 (``amp=off``) and once under bf16 autocast (``amp=bf16``). Written as each method finishes
    (a timeout keeps what was done): ``DIR/precision.json`` (per method and precision: each round's logged
    terms, the BN-statistics term at every inner iteration, the seconds, the teacher's agreement with the
    target labels on the kept images, and the BN term of one kept batch evaluated both in fp32 and under bf16)
    and ``DIR/precision_curves.csv`` (the same curves, one value a row).
``python -m datafree.gpucheck report --out DIR``
    ``DIR/gpu_check.md``: every step's status (the ``[gpu_check] step`` lines of ``DIR/steps.log``), the
    tests' summary line, the perf table and the precision comparison side by side.

The teacher of the comparison is a real one when ``--teacher`` names a checkpoint, else an untrained network
whose BatchNorm running statistics are calibrated on smooth random images: its BN term then has a target of the
same kind as a trained teacher's (running statistics of real activations), which is what the comparison is
about. A GPU run uses the CMI table's pair, wrn40_2 -> wrn16_1, at the methods' own batch sizes; ``--dry-run``
uses resnet8 at tiny sizes on the CPU (bf16 autocast works there too), for ``make test``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .data import get_spec
from .data.spec import Normalizer
from .engine import resolve_device
from .engine.rng import seed_everything
from .methods import resolve
from .models import create_model
from .perf import perf_table
from .registry import SYNTHESIZERS
from .report import markdown
from .results import atomic_write_json, atomic_write_text, machine
from .runtime import use_channels_last
from .synthesis.base import Amp, Context
from .synthesis.losses import BNStatistics
from .teacher import load_teacher

#: the methods of the comparison (issue 13, item 8)
METHODS = ("deepinv", "cmi", "fast10")
#: fp32 is the run without autocast (amp=off), bf16 the one that forces it on synthesis (amp=bf16)
PRECISIONS = {"fp32": "off", "bf16": "bf16"}
#: what the comparison runs: on a GPU, the CMI table's pair at the methods' batch sizes, short; dry, tiny
PLANS: Dict[str, Dict[str, Any]] = {
    "gpu": {
        "dataset": "cifar10",
        "teacher": "wrn40_2",
        "student": "wrn16_1",
        "calibration": (8, 256),
        "methods": {
            # one whole round: 1000 iterations (the CMI script's --g_steps), the BN term's curve from noise
            "deepinv": {"rounds": 1, "synth": {}},
            # two rounds of 200 generator steps (the scratch CMI script's), the generator re-initialised per round
            "cmi": {"rounds": 2, "synth": {}},
            # 30 rounds of 10 steps: the meta-generator's first epochs (warm-up: bn and oh terms only)
            "fast10": {"rounds": 30, "synth": {}},
        },
    },
    "dry": {
        "dataset": "cifar10",
        "teacher": "resnet8",
        "student": "resnet8",
        "calibration": (2, 16),
        "methods": {
            "deepinv": {"rounds": 1, "synth": {"iterations": 4, "synthesis_batch_size": 8}},
            "cmi": {
                "rounds": 2,
                "synth": {
                    "g_steps": 3,
                    "synthesis_batch_size": 8,
                    "ngf": 8,
                    "head_dim": 16,
                    "bank_size": 64,
                    "n_neg": 16,
                },
            },
            "fast10": {"rounds": 3, "synth": {"g_steps": 2, "synthesis_batch_size": 8, "ngf": 8}},
        },
    },
}
FILES = (
    "env.json",
    "steps.log",
    "tests.log",
    "perf.json",
    "perf.md",
    "precision.json",
    "precision_curves.csv",
    "gpu_check.md",
)


def _write_json(path: str, obj: Any) -> None:
    atomic_write_json(path, obj)


def _git_commit() -> Optional[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- env


def environment(dry_run: bool) -> Dict[str, Any]:
    import platform

    cuda = torch.cuda.is_available()
    env: Dict[str, Any] = {
        "dry_run": dry_run,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "torch_cuda": torch.version.cuda,
        "machine": machine(),
        "commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # what "fp32" means on the GPU: with these on (PyTorch's default for convolutions), fp32 convolutions
        # and (if on) matrix products run in TF32 on Ampere and later, as the reference code's fp32 did there
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if cuda:
        p = torch.cuda.get_device_properties(0)
        env.update(
            {
                "gpu": p.name,
                "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                "gpu_capability": f"{p.major}.{p.minor}",
                "gpu_count": torch.cuda.device_count(),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    try:
        import kornia

        env["kornia"] = kornia.__version__
    except ImportError:
        env["kornia"] = None
    return env


# --------------------------------------------------------------------------- precision


class _BNRecorder:
    """Wraps a synthesizer's :class:`~datafree.synthesis.common.TeacherTerms`: the BN term of every teacher
    pass is kept (0-d tensors on the device, read once at the end: no host sync in the loop)."""

    def __init__(self, terms):
        self.terms = terms
        self.values: List[torch.Tensor] = []

    def __call__(self, x, features: bool = False):
        out = self.terms(x, features)
        self.values.append(out[2].detach())
        return out

    def __getattr__(self, name: str):
        return getattr(self.terms, name)


@torch.no_grad()
def calibrate_bn(model: nn.Module, spec, device, batches: int, batch_size: int, seed: int) -> None:
    """Set every BatchNorm's running statistics to the exact mean and variance of its inputs over ``batches``
    batches of smooth random images (uniform noise at 1/4 of the size, bilinearly upsampled, normalised)."""
    norm = Normalizer(spec, device)
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    small = max(2, spec.size // 4)
    for _ in range(batches):
        x = torch.rand(batch_size, spec.channels, small, small, generator=g)
        x = nn.functional.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
        model(norm(x.to(device)))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()


@torch.no_grad()
def bn_term(teacher: nn.Module, x: torch.Tensor, amp) -> float:
    """The BN-statistics term (DeepInversion's form, no momentum) of the teacher on the normalised batch ``x``
    under ``amp``'s autocast."""
    stats = BNStatistics(teacher)
    with stats, amp.autocast():
        teacher(x)
    return float(stats.loss())


def _models(plan: Dict[str, Any], device: torch.device, teacher_file: Optional[str], seed: int):
    spec = get_spec(plan["dataset"])
    seed_everything(seed)
    if teacher_file:
        teacher, record = load_teacher(teacher_file, dataset=plan["dataset"], device=device, spec=spec)
        desc = f"{record.get('arch', '?')} from {teacher_file} (sha256 {str(record.get('sha256', ''))[:12]})"
        arch = record.get("arch") or plan["teacher"]
    else:
        teacher = create_model(plan["teacher"], spec.num_classes, spec.channels, spec.size).to(device)
        batches, bs = plan["calibration"]
        calibrate_bn(teacher, spec, device, batches, bs, seed)
        desc = f"{plan['teacher']}, untrained, BN running statistics calibrated on {batches}x{bs} smooth noise images"
        arch = plan["teacher"]
    teacher.eval().requires_grad_(False)
    student = create_model(plan["student"], spec.num_classes, spec.channels, spec.size).to(device)
    return spec, teacher, student, desc, arch


def run_precision(
    method: str,
    precision: str,
    plan: Dict[str, Any],
    teacher: nn.Module,
    student0: nn.Module,
    spec,
    arch: str,
    device: torch.device,
    seed: int,
) -> Dict[str, Any]:
    """One short synthesis run of ``method`` at ``precision`` (fp32 or bf16) from ``seed``."""
    mplan = plan["methods"][method]
    cfg = resolve(
        {
            "method": method,
            "dataset": plan["dataset"],
            "teacher": arch,
            "student": plan["student"],
            "device": str(device),
            "amp": PRECISIONS[precision],
            "progress": False,
            "synth": dict(mplan["synth"]),
        }
    )
    student = copy.deepcopy(student0)
    channels_last = use_channels_last(cfg.channels_last, device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    ctx = Context(teacher, student, spec, device, cfg=cfg, amp=Amp(device, cfg.amp), channels_last=channels_last)
    seed_everything(seed)
    synth = SYNTHESIZERS.build(cfg.synthesizer, ctx, **cfg.synth)
    synth.on_epoch_start(0)
    synth.terms = _BNRecorder(synth.terms)
    rounds: List[Dict[str, float]] = []
    per_round_iters: List[int] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for r in range(mplan["rounds"]):
        ctx.round = r
        before = len(synth.terms.values)
        logs = synth.synthesize()
        per_round_iters.append(len(synth.terms.values) - before)
        rounds.append({k: float(torch.as_tensor(v).float()) for k, v in logs.items()})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    bn_curve = [float(v) for v in torch.stack(synth.terms.values).float().cpu()] if synth.terms.values else []
    images, labels = synth.pool.all()
    n = synth.cfg.synthesis_batch_size
    last = ctx.to_device(synth.normalizer(images[-n:].float()))
    with torch.no_grad():
        agree = float((teacher(synth.normalizer(images.float())).argmax(1) == labels.to(device)).float().mean())
    same_batch = {
        "fp32": bn_term(teacher, last, Amp(device, "off")),
        "bf16": bn_term(teacher, last, Amp(device, "bf16")),
    }
    synth.close()
    return {
        "precision": precision,
        "amp": cfg.amp,
        "synthesis_autocast": synth.ctx.amp.mode,
        "seconds": seconds,
        "rounds": rounds,
        "iterations_per_round": per_round_iters,
        "bn_per_iteration": bn_curve,
        "teacher_agreement": agree,
        "last_batch_bn": same_batch,
        "settings": {
            k: getattr(synth.cfg, k) for k in ("synthesis_batch_size", "bn", "oh", "adv") if hasattr(synth.cfg, k)
        },
    }


def _tail_mean(values: List[float], fraction: float = 0.1) -> Optional[float]:
    if not values:
        return None
    k = max(1, int(len(values) * fraction))
    return sum(values[-k:]) / k


def _warm_up(teacher: nn.Module, student: nn.Module, spec, device: torch.device, n: int) -> None:
    """One forward and backward of both networks in fp32 and under bf16, untimed: the first timed run (fp32)
    does not pay for the CUDA context and the first kernels' set-up alone."""
    s = copy.deepcopy(student)
    for mode in ("off", "bf16"):
        x = torch.randn(n, *spec.shape, device=device, requires_grad=True)
        with Amp(device, mode).autocast():
            loss = teacher(x).float().sum() + s(x).float().sum()
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    methods, out: str, dry_run: bool, device: str = "auto", teacher_file: Optional[str] = None, seed: int = 0, log=print
) -> Dict[str, Any]:
    plan = PLANS["dry" if dry_run else "gpu"]
    dev = resolve_device("cpu" if dry_run and device == "auto" else device)
    spec, teacher, student0, desc, arch = _models(plan, dev, teacher_file, seed)
    _warm_up(teacher, student0, spec, dev, 8 if dry_run else 256)
    record: Dict[str, Any] = {
        "device": str(dev),
        "dry_run": dry_run,
        "dataset": plan["dataset"],
        "pair": f"{arch}->{plan['student']}",
        "teacher": desc,
        "seed": seed,
        "methods": {},
    }
    for m in methods:
        entry: Dict[str, Any] = {}
        for prec in PRECISIONS:
            t0 = time.time()
            entry[prec] = run_precision(m, prec, plan, teacher, student0, spec, arch, dev, seed)
            log(
                f"[precision] {m:<8} {prec}: {entry[prec]['seconds']:.1f} s, final round "
                + ", ".join(f"{k} {v:.4g}" for k, v in entry[prec]["rounds"][-1].items())
                + f" [{time.time() - t0:.0f} s]"
            )
        f, b = entry["fp32"], entry["bf16"]
        entry["summary"] = {
            "bn_tail_fp32": _tail_mean(f["bn_per_iteration"]),
            "bn_tail_bf16": _tail_mean(b["bn_per_iteration"]),
            "loss_g_fp32": f["rounds"][-1].get("loss_g"),
            "loss_g_bf16": b["rounds"][-1].get("loss_g"),
            "agreement_fp32": f["teacher_agreement"],
            "agreement_bf16": b["teacher_agreement"],
            "seconds_fp32": f["seconds"],
            "seconds_bf16": b["seconds"],
            # the term's own rounding: the fp32 run's last batch, evaluated in fp32 and under bf16
            "same_batch_bn_fp32": f["last_batch_bn"]["fp32"],
            "same_batch_bn_bf16": f["last_batch_bn"]["bf16"],
            "same_batch_rel_diff": abs(f["last_batch_bn"]["bf16"] - f["last_batch_bn"]["fp32"])
            / max(abs(f["last_batch_bn"]["fp32"]), 1e-12),
        }
        record["methods"][m] = entry
        _write_json(os.path.join(out, "precision.json"), record)
        write_curves(record, os.path.join(out, "precision_curves.csv"))
    return record


def write_curves(record: Dict[str, Any], path: str) -> None:
    """``method,precision,curve,index,term,value``: curve ``round`` (each round's logged terms) or ``iteration``
    (the BN term at every inner iteration)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "precision", "curve", "index", "term", "value"])
        for m, entry in record["methods"].items():
            for prec in PRECISIONS:
                run = entry[prec]
                for i, logs in enumerate(run["rounds"]):
                    for k, v in logs.items():
                        w.writerow([m, prec, "round", i, k, repr(v)])
                for i, v in enumerate(run["bn_per_iteration"]):
                    w.writerow([m, prec, "iteration", i, "bn", repr(v)])
    os.replace(tmp, path)


# --------------------------------------------------------------------------- report

_STEP = re.compile(r"^\[gpu_check\] step (\S+) rc=(-?\d+) seconds=(\d+) limit=(\d+)")


def read_steps(path: str) -> List[Dict[str, Any]]:
    steps = []
    try:
        with open(path) as fh:
            for line in fh:
                m = _STEP.match(line)
                if m:
                    rc = int(m.group(2))
                    steps.append(
                        {
                            "step": m.group(1),
                            "rc": rc,
                            "seconds": int(m.group(3)),
                            "limit": int(m.group(4)),
                            "status": "ok" if rc == 0 else ("timed out" if rc in (124, 137) else "failed"),
                        }
                    )
    except OSError:
        pass
    return steps


def tests_summary(path: str) -> str:
    """The last line of a pytest log that counts passed/failed tests."""
    try:
        with open(path) as fh:
            lines = [l.strip() for l in fh if re.search(r"\d+ (passed|failed|error|skipped)", l)]
    except OSError:
        return "(no tests.log)"
    return lines[-1].strip("= ") if lines else "(no summary line: see tests.log)"


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "" if v is None else format(v, spec)


def report(out: str) -> str:
    parts = ["# gpu_check\n"]
    try:
        with open(os.path.join(out, "env.json")) as fh:
            env = json.load(fh)
        parts.append(
            f"{'Dry run (CPU)' if env.get('dry_run') else 'GPU run'} on {env.get('gpu') or env.get('machine')}"
            f", torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), commit {env.get('commit')}, "
            f"{env.get('time')}; cudnn TF32 {env.get('cudnn_allow_tf32')}, matmul TF32 "
            f"{env.get('matmul_allow_tf32')}.\n"
        )
    except (OSError, ValueError):
        parts.append("(no env.json)\n")
    steps = read_steps(os.path.join(out, "steps.log"))
    parts.append(
        "## Steps\n\n"
        + markdown(
            ["step", "status", "rc", "seconds", "limit"],
            [[s["step"], s["status"], s["rc"], s["seconds"], s["limit"]] for s in steps],
            "llrrr",
        )
        + "\n"
    )
    parts.append(f"Tests: {tests_summary(os.path.join(out, 'tests.log'))}\n")
    try:
        with open(os.path.join(out, "perf.json")) as fh:
            parts.append("## datafree perf\n\n" + perf_table(json.load(fh)) + "\n")
    except (OSError, ValueError):
        parts.append("## datafree perf\n\n(no perf.json)\n")
    try:
        with open(os.path.join(out, "precision.json")) as fh:
            prec = json.load(fh)
    except (OSError, ValueError):
        prec = None
    if prec:
        rows = []
        for m, e in prec["methods"].items():
            s = e["summary"]
            rows.append(
                [
                    m,
                    _fmt(s["bn_tail_fp32"]),
                    _fmt(s["bn_tail_bf16"]),
                    _fmt(s["loss_g_fp32"]),
                    _fmt(s["loss_g_bf16"]),
                    _fmt(s["same_batch_bn_fp32"]),
                    _fmt(s["same_batch_bn_bf16"]),
                    _fmt(s["same_batch_rel_diff"], ".2%"),
                    _fmt(s["agreement_fp32"], ".1%"),
                    _fmt(s["agreement_bf16"], ".1%"),
                    _fmt(s["seconds_fp32"], ".1f"),
                    _fmt(s["seconds_bf16"], ".1f"),
                ]
            )
        parts.append(
            f"## fp32 against bf16 synthesis\n\n{prec['pair']} on {prec['dataset']}-shaped tensors, {prec['device']}, "
            f"seed {prec['seed']}; teacher: {prec['teacher']}. BN tail: mean BN term over the last 10% of the "
            "inner iterations; same batch: the fp32 run's last kept batch, its BN term evaluated in fp32 and "
            "under bf16; agreement: the teacher's argmax equals the target label on the kept images; seconds: "
            "the run's synthesis rounds (beside the tests step, so indicative only). Curves: "
            "precision_curves.csv.\n\n"
            + markdown(
                [
                    "method",
                    "BN tail fp32",
                    "BN tail bf16",
                    "loss_g fp32",
                    "loss_g bf16",
                    "same batch fp32",
                    "same batch bf16",
                    "rel. diff",
                    "agree fp32",
                    "agree bf16",
                    "s fp32",
                    "s bf16",
                ],
                rows,
                "l" + "r" * 11,
            )
            + "\n"
        )
    else:
        parts.append("## fp32 against bf16 synthesis\n\n(no precision.json)\n")
    text = "\n".join(parts)

    atomic_write_text(os.path.join(out, "gpu_check.md"), text)
    return text


# --------------------------------------------------------------------------- entry


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datafree.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("env", "precision", "report"))
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--teacher",
        default=None,
        help="a teacher checkpoint for the comparison (default: untrained, BN statistics calibrated)",
    )
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.what == "env":
        env = environment(args.dry_run)
        _write_json(os.path.join(args.out, "env.json"), env)
        print(json.dumps(env, indent=1))
        if not args.dry_run and not env["cuda_available"]:
            print(
                "gpu_check: no CUDA device here; use --dry-run (GPU_CHECK_DRY_RUN=1) for the CPU plan", file=sys.stderr
            )
            return 3
        return 0
    if args.what == "precision":
        compare(
            [m for m in args.methods.split(",") if m],
            args.out,
            args.dry_run,
            args.device,
            args.teacher,
            args.seed,
            log=lambda s: print(s, flush=True),
        )
        return 0
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
