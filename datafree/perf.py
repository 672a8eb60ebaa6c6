"""``datafree perf``: the cost of each method's synthesis round and student step, beside its floor.

For each method the synthesizer and distiller are built exactly as a run would
build them (the method's resolved config for the pair), on synthetic tensors
and untrained models: cost does not depend on the weights or the data. Each
measurement has warm-up calls and repeats and reports the median and the
spread (min, max).

* synthesis: one ``synthesize()`` round. Rounds with many inner iterations
  (DeepInversion's 2000, CMI's 200) are timed over ``--max-iters`` of them and
  scaled to the full round; the table says so.
* student step: ``sample(batch)`` plus ``trainer.step(x)``, what the engine's
  distillation phase runs per step, timed as the engine runs it: after a
  (untimed) synthesis round, the round's student steps (at most ``--max-iters``)
  are timed together and divided by their number.
* floors, the work each phase cannot avoid at the same batch size:
  student step = teacher forward (no grad) + student forward and backward +
  optimiser step, plus the no-grad generator forwards of the batch that the
  method runs per student step (marked "+k G": 1 for DFAD, DFQ, MB-DFKD,
  PRE-DFKD and CuDFKD, which draw new images for every step; 1/kd_steps for
  ZSKT, which regenerates its round's batch once);
  synthesis iteration = generator forward (none for pixel methods) + teacher
  forward and backward to the images + Adam step. The student is not in the
  synthesis floor: methods with an adversarial term also run it, so their
  ratio shows what the adversary costs. The synthesis floor, and the generator
  forwards of the student floor, run at the method's synthesis precision (fp32 on
  CUDA for the methods that declare it, docs/precision.md), the student floor at
  the run's.

Each method is measured in a fresh subprocess, so peak memory (CUDA max
allocated, or peak RSS on CPU) is the method's own.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .config import build_dataclass, deep_merge
from .data import get_spec
from .engine import resolve_device
from .engine.meter import peak_rss_bytes
from .engine.rng import seed_everything
from .engine.trainer import Trainer
from .methods import method_tasks, resolve
from .models import create_model
from .registry import DISTILLERS, SYNTHESIZERS, load_plugins
from .report import markdown
from .results import atomic_write_json
from .runtime import precision_name, tune_cpu_malloc, use_channels_last
from .synthesis.base import ROUND_ITERATION_FIELDS, Amp, Context

SCALES = {
    "cifar": {"dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"},
    "mnist": {"dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"},
    # segmentation: the CPU test bed's pair (docs/segmentation.md) and DFAD's NYUv2 pair
    "mnist_seg": {"dataset": "mnist_seg", "teacher": "deeplab_tiny", "student": "deeplab_tiny_half"},
    "nyuv2": {"dataset": "nyuv2", "teacher": "deeplabv3_resnet50", "student": "deeplabv3_mobilenet"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int, before: Optional[Callable[[], Any]] = None
) -> Dict[str, float]:
    """Median and range of ``fn``'s wall time; ``before`` runs untimed ahead of every call."""
    for _ in range(warmup):
        if before:
            before()
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if before:
            before()
            _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "max_ms": 1000 * max(times),
        "repeats": repeats,
    }


def _scaled(t: Dict[str, float], factor: float) -> Dict[str, float]:
    return {k: (v * factor if k.endswith("_ms") else v) for k, v in t.items()}


def resolve_run(method: str, scale: str, device: str = "auto", overrides: Optional[Dict[str, Any]] = None):
    """The RunConfig a perf measurement of ``method`` at ``scale`` uses."""
    load_plugins([])  # methods from installed plugins resolve too
    pair = SCALES[scale]
    return resolve(deep_merge({"method": method, **pair, "device": device, "progress": False}, overrides or {}))


def round_iterations(cfg) -> Tuple[Optional[str], int, bool]:
    """From a run's config alone (no models built): the synthesizer's field counting the inner iterations of a
    round (None if it has none), their number, and whether the synthesizer trains a GAN (HiDFD)."""
    cls = SYNTHESIZERS.get(cfg.synthesizer)
    scfg = build_dataclass(cls.Config, cfg.synth, f"synth ({cls.__name__})")
    field = next((f for f in ROUND_ITERATION_FIELDS if hasattr(scfg, f)), None)
    return field, int(getattr(scfg, field)) if field else 1, hasattr(cls, "gan_step")


def build(method: str, scale: str, device: str = "auto", overrides: Optional[Dict[str, Any]] = None):
    """(ctx, synthesizer, trainer, cfg) for ``method`` at ``scale``, with untrained models: ``trainer.step(x, y)``
    is the student step the engine takes (its distiller is ``trainer.distiller``)."""
    pair = SCALES[scale]
    cfg = resolve_run(method, scale, device, overrides)
    seed_everything(0)
    dev = resolve_device(cfg.device)
    spec = get_spec(cfg.dataset)
    teacher = create_model(pair["teacher"], spec.num_classes, spec.channels, spec.size).to(dev).eval()
    teacher.requires_grad_(False)
    student = create_model(cfg.student, spec.num_classes, spec.channels, spec.size).to(dev)
    tune_cpu_malloc(cfg.cpu_malloc)
    channels_last = use_channels_last(cfg.channels_last, dev)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    ctx = Context(teacher, student, spec, dev, cfg=cfg, amp=Amp(dev, cfg.amp), channels_last=channels_last)
    ctx.total_steps = cfg.epochs * (cfg.ep_steps or 100)
    # time the epochs that train the student: after any warm-up (Fast's adversarial term is on then), and a
    # round from the middle of the run (DFAD skips the generator in the first round, its students step first)
    ctx.epoch = cfg.warmup
    ctx.round = 1
    synth = SYNTHESIZERS.build(cfg.synthesizer, ctx, **cfg.synth)
    synth.on_epoch_start(ctx.epoch)
    distiller = DISTILLERS.build(cfg.distiller, ctx, **cfg.distill)
    return ctx, synth, Trainer(distiller, ctx), cfg


def measure_method(
    method: str,
    scale: str,
    repeats: int = 5,
    warmup: int = 3,
    max_iters: int = 20,
    device: str = "auto",
    overrides: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Time one method at one scale (in this process)."""
    cfg = resolve_run(method, scale, device, overrides)
    field, full_iters, gan = round_iterations(cfg)
    over = dict(overrides or {})
    if gan:  # just the GAN steps that are timed, and a small synthetic set to draw student batches from
        over = deep_merge(
            over,
            {
                "synth": {
                    "gan_steps": repeats + warmup,
                    "pool_size": 4 * cfg.batch_size,
                    "synthetic_size": 2 * cfg.batch_size,
                }
            },
        )
    timed_iters = full_iters
    if field and full_iters > max_iters:
        timed_iters = max_iters
        over = deep_merge(over, {"synth": {field: max_iters}})
    ctx, synth, trainer, cfg = build(method, scale, device, over)
    dev = ctx.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    bs = cfg.batch_size
    if hasattr(synth, "gan_step"):
        # HiDFD trains its GAN during warm-up and generates its data once: a "round" is one GAN step here,
        # and the student's data is built once (untimed) before the student steps are timed
        full_iters = timed_iters = 1
        ctx.epoch = 0
        synth_t = timeit(synth.gan_step, dev, repeats, warmup)
        ctx.epoch = cfg.warmup
        synth.synthesize()
    else:
        synth_t = timeit(lambda: synth.synthesize(), dev, repeats, warmup)
        synth_t = _scaled(synth_t, full_iters / timed_iters)

    steps = max(1, min(cfg.kd_steps or cfg.ep_steps or 1, max_iters))

    def student_steps():
        for _ in range(steps):
            batch = synth.sample(bs)
            x, y = batch if isinstance(batch, tuple) else (batch, None)
            trainer.step(ctx.to_device(x), y)

    step_t = timeit(student_steps, dev, repeats, warmup, before=synth.synthesize)
    step_t = _scaled(step_t, 1.0 / steps)
    floors = measure_floors(ctx, synth, trainer, cfg, repeats, warmup, steps)
    synth_per_iter = synth_t["median_ms"] / max(1, full_iters)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss()) / 2**20
    synth.close()
    return {
        "method": method,
        "scale": scale,
        "device": str(dev),
        "batch_size": bs,
        "synthesis_batch_size": getattr(synth.cfg, "synthesis_batch_size", None),
        "round_iterations": full_iters,
        "timed_iterations": timed_iters,
        "synthesis_round": synth_t,
        "student_step": step_t,
        "floor": floors,
        "synthesis_ratio": synth_per_iter / floors["synthesis_iteration"]["median_ms"],
        "student_ratio": step_t["median_ms"] / floors["student_step"]["median_ms"],
        "peak_memory_mb": peak,
        "memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "cpu_peak_rss",
        "precision": {"synthesis": synth.ctx.amp.mode, "distillation": ctx.amp.mode},
    }


def _peak_rss() -> int:
    return peak_rss_bytes()


def generator_calls_per_step(synth, n: int, steps: int) -> float:
    """How many generator forwards one student step costs, as the engine runs them: a synthesis round, then
    ``steps`` batches of ``n`` (1.0 for DFAD/DFQ/MB-DFKD/..., which draw fresh images every step; 1/steps for
    ZSKT, which regenerates its round's batch once; 0 for DAFL's reused batch and for pool methods)."""
    generator = getattr(synth, "generator", None)
    if not isinstance(generator, torch.nn.Module) or not hasattr(synth, "latent"):
        return 0.0
    synth.synthesize()
    calls = []
    handle = generator.register_forward_hook(lambda *a: calls.append(1))
    try:
        for _ in range(steps):
            synth.sample(n)
    finally:
        handle.remove()
    return len(calls) / steps


def measure_floors(ctx, synth, trainer, cfg, repeats: int, warmup: int, steps: int = 1) -> Dict[str, Dict[str, float]]:
    """The bare work of a student step and of one synthesis iteration at the method's batch sizes."""
    dev, spec = ctx.device, ctx.spec
    teacher, student = ctx.teacher, ctx.student
    synth_amp = synth.ctx.amp  # the synthesis floor runs at the method's synthesis precision (docs/precision.md)
    bs = cfg.batch_size
    x = ctx.to_device(torch.randn(bs, *spec.shape, device=dev))
    opt = torch.optim.SGD(student.parameters(), lr=1e-6, momentum=0.9)

    def student_floor():
        with torch.no_grad(), ctx.amp.autocast():
            t = teacher(x)
        with ctx.amp.autocast():
            s = student(x)
        loss = (s.float() - t.float()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    student_t = timeit(student_floor, dev, repeats, warmup)
    # a method whose student batches come from its generator cannot avoid that forward: it is part of the floor,
    # counted as often as the method runs it per step
    gen_per_step = generator_calls_per_step(synth, bs, steps)
    if gen_per_step > 0:

        def generate():
            with torch.no_grad(), synth_amp.autocast():
                synth.generate(synth.latent(bs))

        gen_t = timeit(generate, dev, repeats, warmup)
        student_t = {k: (v + gen_per_step * gen_t[k] if k.endswith("_ms") else v) for k, v in student_t.items()}

    sbs = getattr(synth.cfg, "synthesis_batch_size", None) or bs
    generator = getattr(synth, "generator", None)
    if isinstance(generator, torch.nn.Module):
        floor_opt = torch.optim.Adam(generator.parameters(), lr=1e-6)

        def make_images():
            if hasattr(synth, "generate") and hasattr(synth, "latent"):
                z = synth.latent(sbs)
                try:
                    return synth.generate(z)  # the method's own generator and normalisation
                except TypeError:  # a class-conditional generator (HiDFD)
                    return synth.generate(z, torch.randint(0, spec.num_classes, (sbs,), device=dev))
            # generators driven by the method's own loop (CMI's per-round one, Fast's meta-generator clone)
            return generator(torch.randn(sbs, generator.nz, device=dev))
    else:  # pixels optimised directly (DeepInversion)
        pix = torch.randn(sbs, *spec.shape, device=dev, requires_grad=True)
        floor_opt = torch.optim.Adam([pix], lr=1e-6)

        def make_images():
            return pix

    def synth_floor():
        img = make_images()
        with synth_amp.autocast():
            out = teacher(ctx.to_device(img))
        loss = out.float().logsumexp(1).mean()
        floor_opt.zero_grad(set_to_none=True)
        loss.backward()
        floor_opt.step()

    return {
        "student_step": student_t,
        "synthesis_iteration": timeit(synth_floor, dev, repeats, warmup),
        "generator_forwards_per_step": gen_per_step,
    }


# --------------------------------------------------------------------------- many methods, one table


def run_perf(
    methods: List[str],
    scales: List[str],
    repeats: int = 5,
    warmup: int = 3,
    max_iters: int = 20,
    device: str = "auto",
    out_json: Optional[str] = None,
    log=print,
) -> List[Dict[str, Any]]:
    """Measure each (method, scale) in its own subprocess; return the records."""
    records = []
    for scale in scales:
        task = get_spec(SCALES[scale]["dataset"]).task
        for m in methods:
            if task not in method_tasks(m):  # a classification-only method has no segmentation step to time
                log(f"[perf] {m:<10} {scale:<6} skipped: the method serves {', '.join(method_tasks(m))} only")
                continue
            cmd = [sys.executable, "-m", "datafree.perf", m, scale, str(repeats), str(warmup), str(max_iters), device]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                log(f"[perf] {m} {scale}: FAILED {err}")
                records.append({"method": m, "scale": scale, "error": err})
                continue
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            records.append(rec)
            log(
                f"[perf] {m:<10} {scale:<6} synthesis {rec['synthesis_round']['median_ms']:.0f} ms/round "
                f"(x{rec['synthesis_ratio']:.2f} floor), student {rec['student_step']['median_ms']:.0f} ms/step "
                f"(x{rec['student_ratio']:.2f}), peak {rec['peak_memory_mb']:.0f} MB [{time.time() - t0:.0f} s]"
            )
            if out_json:
                atomic_write_json(out_json, records)
    return records


def _precision_note(prec: Optional[Dict[str, str]]) -> str:
    """`` (synthesis fp32, student bf16)`` where either phase autocasts; nothing for an all-fp32 record."""
    if not prec or (prec.get("synthesis") == "off" and prec.get("distillation") == "off"):
        return ""
    return (
        f" (synthesis {precision_name(prec.get('synthesis', 'off'))}, "
        f"student {precision_name(prec.get('distillation', 'off'))})"
    )


def perf_table(records: List[Dict[str, Any]]) -> str:
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["method"], r["scale"], "failed: " + r["error"]] + [""] * 7)
            continue
        s, st, fl = r["synthesis_round"], r["student_step"], r["floor"]
        extrap = (
            ""
            if r["timed_iterations"] == r["round_iterations"]
            else f" ({r['timed_iterations']} of {r['round_iterations']} its)"
        )
        rows.append(
            [
                r["method"],
                r["scale"],
                f"{s['median_ms']:.0f} [{s['min_ms']:.0f}-{s['max_ms']:.0f}]{extrap}",
                f"{st['median_ms']:.1f} [{st['min_ms']:.1f}-{st['max_ms']:.1f}]",
                f"{fl['synthesis_iteration']['median_ms']:.1f}",
                f"{fl['student_step']['median_ms']:.1f}"
                + (f" (+{fl['generator_forwards_per_step']:.2g} G)" if fl.get("generator_forwards_per_step") else ""),
                f"{r['synthesis_ratio']:.2f}",
                f"{r['student_ratio']:.2f}",
                f"{r['peak_memory_mb']:.0f}",
                r["device"] + _precision_note(r.get("precision")),
            ]
        )
    return markdown(
        [
            "method",
            "scale",
            "synthesis ms/round [min-max]",
            "student ms/step [min-max]",
            "floor ms/synth iter",
            "floor ms/student step",
            "synth / floor",
            "student / floor",
            "peak MB",
            "device",
        ],
        rows,
        "ll" + "r" * 7 + "l",
    )


def main(argv: Optional[List[str]] = None) -> int:
    """Subprocess entry: ``python -m datafree.perf METHOD SCALE REPEATS WARMUP MAX_ITERS DEVICE`` -> one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    method, scale, repeats, warmup, max_iters, device = argv
    torch.manual_seed(0)
    rec = measure_method(method, scale, int(repeats), int(warmup), int(max_iters), device)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
