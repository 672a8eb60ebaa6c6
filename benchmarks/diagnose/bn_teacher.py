#!/usr/bin/env python
"""How a BatchNorm teacher meets synthetic images: the figures behind results/mnist_bn/README.md.

Two measurements, on CPU in a few seconds:

1. **Confidence off the data.** For each teacher given (zoo names or checkpoint paths), its softmax confidence
   and logit spread on three kinds of non-digit input: uniform pixels, normalised Gaussian noise and sparse
   dots. A teacher that is sure of itself on noise is easy to satisfy for the generator methods whose only
   priors are the teacher's outputs (DAFL's one-hot and balance terms, ZSKT's and DFAD's disagreement).
2. **The BN-statistics term** (``losses.BNStatistics``, the sum over BatchNorm2d layers of
   ``||running_var - var|| + ||running_mean - mean||``), per layer, with the root-mean-square of its gradient
   with respect to the pixels, on a batch of real test images (the floor a batch of that size can reach) and
   on the last images of each run's pool (``pool.pt`` of a finished run directory, e.g. DeepInversion or CMI).

    DATAFREE_DATA=../shared/data python benchmarks/diagnose/bn_teacher.py \
        --teachers lenet5,lenet5_bn --bn-teacher lenet5_bn --runs results/runs/mnist/cmi/lenet5_bn-lenet5_half-s0
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import torch

from datafree.data.augment import to_unit
from datafree.data.datasets import get_source, get_spec, default_root
from datafree.data.spec import Normalizer
from datafree.synthesis.losses import BNStatistics
from datafree.results import report_json
from datafree.teacher import load_teacher


def noise_inputs(n: int, spec, seed: int) -> Dict[str, torch.Tensor]:
    normalise = Normalizer(spec)
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.channels, spec.size, spec.size)
    return {
        "uniform pixels": normalise(torch.rand(shape, generator=g)),
        "gaussian (normalised space)": torch.randn(shape, generator=g),
        "sparse dots (10 % on)": normalise((torch.rand(shape, generator=g) < 0.1).float()),
    }


def confidence(teacher: torch.nn.Module, x: torch.Tensor) -> Dict[str, float]:
    with torch.no_grad():
        z = teacher(x)
    p = z.softmax(1)
    top = torch.bincount(z.argmax(1), minlength=z.shape[1]).max().item() / z.shape[0]
    return {
        "max_prob": round(p.max(1).values.mean().item(), 3),
        "logit_std": round(z.std().item(), 2),
        "top_class_share": round(top, 3),
    }


def bn_term(teacher: torch.nn.Module, x: torch.Tensor) -> Dict[str, object]:
    x = x.clone().requires_grad_(True)
    stats = BNStatistics(teacher)
    with stats:
        teacher(x)
        parts = [round(v.item(), 3) for v in stats._losses]
        total = stats.loss()
    total.backward()
    return {
        "total": round(total.item(), 3),
        "per_layer": parts,
        "grad_rms": float(f"{(x.grad.pow(2).mean().sqrt()).item():.3e}"),
    }


def pool_images(run_dir: str, n: int) -> torch.Tensor:
    pool = torch.load(os.path.join(run_dir, "pool.pt"), map_location="cpu", weights_only=True)["pool"]
    return pool["images"][-n:]


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--teachers", default="lenet5,lenet5_bn", help="comma-separated zoo names or paths")
    ap.add_argument("--bn-teacher", default="lenet5_bn", help="the teacher whose BN term is measured")
    ap.add_argument("--runs", default="", help="comma-separated finished run directories holding pool.pt")
    ap.add_argument("--n", type=int, default=256, help="images per batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the figures here")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    spec = get_spec(a.dataset)
    out: Dict[str, object] = {"confidence": {}, "bn_term": {}}

    for name in [t for t in a.teachers.split(",") if t]:
        teacher, _ = load_teacher(name, dataset=a.dataset)
        out["confidence"][name] = {k: confidence(teacher, x) for k, x in noise_inputs(a.n, spec, a.seed).items()}

    teacher, _ = load_teacher(a.bn_teacher, dataset=a.dataset)
    real = get_source(a.dataset)._loader(default_root(), "test").images[: a.n]
    batches = {"real test images": real}
    for run in [r for r in a.runs.split(",") if r]:
        batches[f"pool of {run}"] = pool_images(run, a.n)
    for label, images in batches.items():
        pixels = to_unit(images)
        entry = bn_term(teacher, Normalizer(spec)(pixels))
        entry["pixel_mean"] = round(pixels.mean().item(), 3)
        out["bn_term"][label] = entry

    report_json(out, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
