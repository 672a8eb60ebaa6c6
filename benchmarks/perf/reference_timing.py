#!/usr/bin/env python
"""Time the reference implementations of DeepInversion, CMI and Fast-10 against ours.

One invocation measures one side (``--side ours`` or ``--side theirs``) of one
method (``deepinv``, ``cmi`` or ``fast10``) at the same settings (teacher,
student, dataset shape, synthesis and KD batch sizes, inner iterations, KD
steps) and writes a JSON record; ``--compare OURS.json THEIRS.json ...``
prints the per-epoch ratio of each pair. The reference code is read from a
work tree made OUTSIDE this repository (see benchmarks/perf/README.md) and is
never committed. Its Python package is also called ``datafree``, so the
``theirs`` side puts the work tree first on ``sys.path`` and never imports this
repository's package (it checks which ``datafree`` it got).

What one run does (both sides):

1. builds the teacher and the student with random weights (cost does not
   depend on the weights): ours with ``datafree.perf.build`` (the method's
   resolved config for the dataset and the pair, plus the batch-size and
   iteration overrides), theirs with their ``registry.get_model``;
2. builds the method's synthesizer: ours from our registry; theirs = their
   class constructed as their ``datafree_kd.py`` does, with the values of their
   script for the method (DeepInversion: ``scripts/deepinv/deepinv_cifar10_wrn402_wrn161.sh``
   of the CMI repository; CMI: ``scripts/cmi/scratch_cmi_cifar10_wrn402_wrn161.sh``;
   Fast-10: the WRN "-10" line of Fast-Datafree's ``scripts/fast_cifar.sh``),
   their normaliser, their training transform (``registry.get_dataset``) and a
   fresh ``save_dir`` under /tmp (deleted at the end unless ``--keep``);
3. fills the data pool with ``--pool-rounds`` rounds of random images (theirs:
   PNG files written by their ``ImagePool.add``; ours: our ``DataPool.add``)
   and, for CMI, the memory bank with as many rows (their ``MemoryBank.add``,
   our ``FeatureBank.add``), so that the measured epoch is one from the middle
   of a run (the default 100 is the middle of the 200 KD epochs), untimed;
4. ``--warmup`` untimed cycles of one round and two KD steps;
5. ``--repeats`` timed cycles of (a) one synthesis round with ``--iterations``
   inner iterations and (b) ``--kd-steps`` KD steps, each step timed alone:
   ours = ``synth.sample(batch)`` + ``distiller.step(x)`` (what our engine
   runs); theirs = ``synthesizer.sample()`` (their DataLoader over the PNG
   files they saved, ``num_workers=4`` as in their code) + teacher forward
   (no grad, ``return_features=True``) + student forward + their ``KLDiv`` at
   T + ``zero_grad`` / ``backward`` / SGD step + their two running metrics,
   exactly the body of ``train()`` in their ``datafree_kd.py``.

Measured and projected (all medians over the repeats):

* round tail: from the start of the pool write to the return of
  ``synthesize()``: theirs = saving the kept batch as PNG files, re-listing
  the image folder, building the DataLoader and its iterator (which forks the
  workers) and shutting the previous iterator's workers down; ours = the
  in-memory pool (and bank) write. Counted once per round.
* per iteration = (round - tail) / iterations. (Set-up done once per round
  before the loop, e.g. CMI's generator re-initialisation or Fast's clone, is
  thereby scaled with the iterations: an overestimate on both sides, nil when
  ``--iterations`` equals ``--full-iterations``.)
* KD: the first step after a round (the new loader's first batch), the steady
  step (median of the others), and for theirs the extra cost of a step on
  which their ``DataIter`` restarts an exhausted loader (new worker
  processes); observed when the timed steps cross a loader epoch, otherwise
  estimated as the iterator construction time plus the first-batch extra.
  The restarts per epoch follow from their loader's length at the measured
  pool size: ceil(full_kd_steps / len(loader)) - 1.
* projected epoch (one round per epoch, as in all three reference scripts:
  ep_steps = kd_steps = 400) = tail + full_iterations x per_iteration
  + first + (full_kd_steps - 1 - restarts) x steady + restarts x restart_step.
  Evaluation and checkpointing are not included (both sides evaluate once per
  epoch).

Runtime patches applied to THEIR code by this harness (their files are never
edited; nothing changes the computation of a synthesis iteration or KD step):

1. import shims, only when missing: ``termcolor`` (their logger's colours;
   ``colored`` returns the text) and ``torchvision.models.utils`` (removed from
   torchvision; ``load_state_dict_from_url`` comes from ``torch.hub``; only
   imported, never called with random weights);
2. ``registry.datasets.CIFAR10`` / ``CIFAR100`` replaced by a stub that keeps
   the ``transform`` it is given and reads no files, so
   ``registry.get_dataset`` returns their real training transform without the
   dataset on disk;
3. device: their ``datafree_kd.py`` passes ``device=args.gpu`` (a CUDA index)
   to every synthesizer and moves KD batches with ``images.cuda(args.gpu)``;
   the harness passes ``device='cpu'`` (or ``0`` with ``--device cuda``) and
   moves batches with ``.to(device)`` (a no-op on the CPU);
4. Fast-10 on the CPU only: ``Generator.clone()`` ends with ``.cuda()`` and
   ``fast_meta.fomaml_grad`` / ``reptile_grad`` allocate missing gradients
   with ``Variable(torch.zeros(...)).cuda()``: replaced by copies that use the
   generator's own device (same values, same operations);
5. Fast-10: their round counter ``synthesizer.ep`` is set to the warm-up (20)
   before the first round, so the adversarial term (and with it the student's
   forward and backward in synthesis) is on, as in the 200 epochs that train
   the student; ours gets ``ctx.epoch = warmup`` for the same reason;
6. timing wrappers (observe only) around their ``ImagePool.add`` and
   ``DataIter.__init__``, and on our side around the pool's ``add``.

Not patched, on purpose: their ``DataLoader(num_workers=4, pin_memory=True)``
(pin_memory is ignored without CUDA), their teacher parameters that keep
``requires_grad=True`` (so every synthesis backward also computes teacher
and student weight gradients), their per-iteration ``loss.item()`` host sync,
their CPU-resident CMI memory bank: all are part of their implementation's
cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable, Dict, List, Optional

import torch

METHODS = {
    # method: full inner iterations, synthesis batch, KD batch, which reference repository
    "deepinv": {"full_iterations": 2000, "synthesis_batch": 256, "kd_batch": 256, "repo": "CMI"},
    "cmi": {"full_iterations": 200, "synthesis_batch": 256, "kd_batch": 128, "repo": "CMI"},
    "fast10": {"full_iterations": 10, "synthesis_batch": 256, "kd_batch": 256, "repo": "Fast-Datafree"},
}
#: our config field holding a round's inner iterations
OUR_ITERATION_FIELD = {"deepinv": "iterations", "cmi": "g_steps", "fast10": "g_steps"}

# Their scripts' values (only the ones the harness needs; weights do not change the cost, adv > 0 does).
THEIR_SETTINGS = {
    # CMI repo, scripts/deepinv/deepinv_cifar10_wrn402_wrn161.sh + datafree_kd.py (tv 0.001, l2 0)
    "deepinv": dict(lr=0.1, T=20.0, lr_g=0.1, adv=1.0, bn=10.0, oh=1.0, tv=0.001, l2=0.0),
    # CMI repo, scripts/cmi/scratch_cmi_cifar10_wrn402_wrn161.sh + datafree_kd.py
    "cmi": dict(
        lr=0.1,
        T=20.0,
        lr_g=1e-3,
        adv=0.5,
        bn=1.0,
        oh=1.0,
        cr=0.8,
        cr_T=0.1,
        nz=256,
        ngf=64,
        bank_size=40960,
        n_neg=4096,
        head_dim=256,
    ),
    # Fast-Datafree, scripts/fast_cifar.sh, WRN "-10" line
    "fast10": dict(
        lr=0.2,
        T=20.0,
        lr_g=2e-3,
        lr_z=0.01,
        adv=1.1,
        bn=10.0,
        oh=0.4,
        bn_mmt=0.9,
        warmup=20,
        reset_l0=1,
        reset_bn=0,
        is_maml=1,
        nz=256,
        ngf=64,
    ),
}


# --------------------------------------------------------------------------- timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(xs: List[float]) -> Dict[str, float]:
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


class Clock:
    """Marks set by the observe-only wrappers during one synthesis round."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.tail_start: Optional[float] = None
        self.pool_add_ms = 0.0
        self.iter_build_ms = 0.0


def run_cycles(side: Dict[str, Any], a, clock: Clock) -> Dict[str, Any]:
    """Warm-up, then ``repeats`` x (one timed round, ``kd_steps`` timed KD steps)."""
    dev = side["device"]
    synthesize: Callable[[], Any] = side["synthesize"]
    kd_step: Callable[[], bool] = side["kd_step"]  # returns True when the step restarted a loader
    before_kd: Callable[[], None] = side["before_kd"]

    for _ in range(a.warmup):
        synthesize()
        before_kd()
        for _ in range(min(2, a.kd_steps)):
            kd_step()
    _sync(dev)

    rounds, tails, iters, pool_adds, iter_builds = [], [], [], [], []
    firsts, steadies, restart_steps, all_steps = [], [], [], []
    for _ in range(a.repeats):
        clock.reset()
        _sync(dev)
        t0 = time.perf_counter()
        synthesize()
        _sync(dev)
        t1 = time.perf_counter()
        round_ms = 1000 * (t1 - t0)
        tail_ms = 1000 * (t1 - clock.tail_start) if clock.tail_start is not None else 0.0
        rounds.append(round_ms)
        tails.append(tail_ms)
        iters.append((round_ms - tail_ms) / a.iterations)
        pool_adds.append(clock.pool_add_ms)
        iter_builds.append(clock.iter_build_ms)

        before_kd()
        steps = []
        for i in range(a.kd_steps):
            s0 = time.perf_counter()
            restarted = kd_step()
            _sync(dev)
            ms = 1000 * (time.perf_counter() - s0)
            steps.append(ms)
            if i == 0:
                firsts.append(ms)
            elif restarted:
                restart_steps.append(ms)
            else:
                steadies.append(ms)
        all_steps.append([round(x, 3) for x in steps])

    return {
        "round_ms": _stats(rounds),
        "tail_ms": _stats(tails),
        "per_iteration_ms": _stats(iters),
        "pool_write_ms": _stats(pool_adds),
        "loader_iterator_build_ms": _stats(iter_builds),
        "kd_first_step_ms": _stats(firsts),
        "kd_steady_step_ms": _stats(steadies),
        "kd_restart_step_ms": _stats(restart_steps),
        "kd_step_times_ms": all_steps,
        "rounds_ms": [round(x, 3) for x in rounds],
        "tails_ms": [round(x, 3) for x in tails],
    }


def project(m: Dict[str, Any], a, loader_len: Optional[int]) -> Dict[str, Any]:
    """Time per epoch (one round + full_kd_steps KD steps) from the medians."""
    per_iter = m["per_iteration_ms"]["median"]
    tail = m["tail_ms"]["median"]
    steady = m["kd_steady_step_ms"]["median"]
    first = m["kd_first_step_ms"]["median"]
    if math.isnan(steady):  # only one timed step per round: no steady sample
        steady = first
    restarts, restart_ms, restart_source = 0, 0.0, "none (no loader)"
    if loader_len:
        restarts = max(0, math.ceil(a.full_kd_steps / loader_len) - 1)
        if m["kd_restart_step_ms"]["n"]:
            restart_ms, restart_source = m["kd_restart_step_ms"]["median"], "observed"
        else:
            restart_ms = steady + m["loader_iterator_build_ms"]["median"] + max(0.0, first - steady)
            restart_source = "estimated: steady + iterator build + first-batch extra"
    restarts = min(restarts, max(0, a.full_kd_steps - 1))
    synth_ms = tail + a.full_iterations * per_iter
    kd_ms = first + (a.full_kd_steps - 1 - restarts) * steady + restarts * restart_ms
    return {
        "synthesis_round_ms": synth_ms,
        "kd_phase_ms": kd_ms,
        "epoch_s": (synth_ms + kd_ms) / 1000,
        "per_iteration_ms": per_iter,
        "round_tail_ms": tail,
        "kd_steady_step_ms": steady,
        "kd_first_step_ms": first,
        "loader_len": loader_len,
        "loader_restarts_per_epoch": restarts,
        "loader_restart_step_ms": restart_ms if loader_len else None,
        "loader_restart_source": restart_source,
        "formula": "tail + full_iterations*per_iteration + first + (full_kd_steps-1-restarts)*steady"
        " + restarts*restart_step",
    }


def _param_count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- ours


def build_ours(a, clock: Clock) -> Dict[str, Any]:
    from datafree import perf, runtime
    from datafree.config import parse_overrides

    field = OUR_ITERATION_FIELD[a.method]
    overrides = {"batch_size": a.kd_batch, "synth": {"synthesis_batch_size": a.synthesis_batch, field: a.iterations}}
    if a.set:
        from datafree.config import deep_merge

        overrides = deep_merge(overrides, parse_overrides(a.set))
    scale = "_reference_timing"
    perf.SCALES[scale] = {"dataset": a.dataset, "teacher": a.teacher, "student": a.student}
    ctx, synth, distiller, cfg = perf.build(a.method, scale, a.device, overrides)
    assert getattr(synth.cfg, field) == a.iterations, (field, synth.cfg)
    ctx.epoch = cfg.warmup  # Fast: the adversarial term is on after the warm-up (no effect for the others)
    synth.on_epoch_start(ctx.epoch)

    pool = synth.pool
    orig_add = pool.add

    def timed_add(*args, **kw):
        t0 = time.perf_counter()
        if clock.tail_start is None:
            clock.tail_start = t0
        out = orig_add(*args, **kw)
        _sync(ctx.device)
        clock.pool_add_ms += 1000 * (time.perf_counter() - t0)
        return out

    # pre-fill: pool rounds of random images (and CMI's bank), untimed
    sbs = synth.cfg.synthesis_batch_size
    g = torch.Generator().manual_seed(1)
    for _ in range(a.pool_rounds):
        orig_add(torch.rand(sbs, *ctx.spec.shape, generator=g).to(ctx.device))
        bank = getattr(synth, "bank", None)
        if bank is not None:
            bank.add(torch.randn(sbs, bank.dim, generator=g).to(ctx.device))
    pool.add = timed_add

    bs = cfg.batch_size

    def kd_step() -> bool:
        batch = synth.sample(bs)
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        distiller.step(ctx.to_device(x), y)
        return False

    return {
        "device": ctx.device,
        "synthesize": synth.synthesize,
        "kd_step": kd_step,
        "before_kd": lambda: None,
        "loader_len": lambda: None,
        "close": synth.close,
        "info": {
            "package": os.path.dirname(perf.__file__),
            "synth_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in synth.hparams().items()},
            "distiller": cfg.distiller,
            "distill_config": dict(cfg.distill),
            "kd_batch": bs,
            "amp": ctx.amp.mode,
            "channels_last": ctx.channels_last,
            "cpu_malloc": cfg.cpu_malloc,
            "cpu_malloc_tuned": runtime.tune_cpu_malloc("default"),
            "epoch_set": ctx.epoch,
            "teacher_params": _param_count(ctx.teacher),
            "student_params": _param_count(ctx.student),
            "pool_images_before_timing": len(pool),
            "adversarial_on": getattr(synth, "adversarial_on", None),
            "cmi_bank_row_dim": getattr(getattr(synth, "bank", None), "dim", None),
        },
    }


# --------------------------------------------------------------------------- theirs


def _import_shims() -> List[str]:
    applied = []
    try:
        import termcolor  # noqa: F401
    except ImportError:
        mod = types.ModuleType("termcolor")
        mod.colored = lambda text, *args, **kw: text
        sys.modules["termcolor"] = mod
        applied.append("termcolor stub")
    import torchvision.models

    try:
        import torchvision.models.utils  # noqa: F401
    except ImportError:
        import torch.hub

        mod = types.ModuleType("torchvision.models.utils")
        mod.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = mod
        torchvision.models.utils = mod
        applied.append("torchvision.models.utils -> torch.hub")
    return applied


class _NoFilesDataset:
    """Stands in for torchvision's CIFAR classes in their registry: keeps the transform, reads nothing."""

    def __init__(self, root=None, train=True, download=False, transform=None, target_transform=None, **kw):
        self.transform = transform


def build_theirs(a, clock: Clock) -> Dict[str, Any]:
    root = os.path.abspath(a.ref_root)
    if not os.path.isfile(os.path.join(root, "datafree_kd.py")):
        raise SystemExit(
            f"error: {root} is not a reference work tree (no datafree_kd.py); see benchmarks/perf/README.md"
        )
    if "datafree" in sys.modules:
        raise SystemExit("error: a datafree package is already imported; the theirs side needs its own process")
    sys.path.insert(0, root)
    patches = _import_shims()
    import datafree  # THEIR package
    import registry  # their registry.py

    if not os.path.abspath(datafree.__file__).startswith(root + os.sep):
        raise SystemExit(f"error: imported datafree from {datafree.__file__}, not from {root}")
    synthesis = datafree.synthesis
    is_fast_repo = hasattr(synthesis, "FastMetaSynthesizer")
    if a.method == "fast10" and not is_fast_repo:
        raise SystemExit("error: fast10 needs the Fast-Datafree work tree as --ref-root")
    if a.method in ("deepinv", "cmi") and is_fast_repo:
        raise SystemExit(f"error: {a.method} is timed from the CMI repository's code; pass its work tree as --ref-root")

    # patch 2: their training transform without dataset files
    ds = types.SimpleNamespace(
        **{k: getattr(registry.datasets, k) for k in dir(registry.datasets) if not k.startswith("_")}
    )
    ds.CIFAR10 = ds.CIFAR100 = _NoFilesDataset
    registry.datasets = ds
    patches.append("registry.datasets.CIFAR10/CIFAR100 -> no-file stub (transform only)")
    if a.dataset not in ("cifar10", "cifar100"):
        raise SystemExit(
            "error: the theirs side supports cifar10 and cifar100 (their registry needs the files otherwise)"
        )
    num_classes, ori_dataset, _ = registry.get_dataset(name=a.dataset, data_root="/nonexistent")
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT[a.dataset])

    # patch 3: device
    dev = torch.device(a.device)
    their_device = "cpu" if dev.type == "cpu" else (dev.index or 0)
    patches.append(f"synthesizer device={their_device!r} (their script: device=args.gpu); KD batches .to(device)")

    teacher = registry.get_model(a.teacher, num_classes=num_classes, pretrained=True).eval().to(dev)
    student = registry.get_model(a.student, num_classes=num_classes).to(dev)
    s = THEIR_SETTINGS[a.method]
    save_dir = tempfile.mkdtemp(prefix=f"refperf-{a.method}-", dir=a.tmp_dir)
    common = dict(
        synthesis_batch_size=a.synthesis_batch,
        sample_batch_size=a.kd_batch,
        save_dir=save_dir,
        transform=ori_dataset.transform,
        normalizer=normalizer,
        device=their_device,
    )

    if a.method == "deepinv":
        synth = synthesis.DeepInvSyntheiszer(
            teacher=teacher,
            student=student,
            num_classes=num_classes,
            img_size=(3, 32, 32),
            iterations=a.iterations,
            lr_g=s["lr_g"],
            adv=s["adv"],
            bn=s["bn"],
            oh=s["oh"],
            tv=s["tv"],
            l2=s["l2"],
            **common,
        )
    elif a.method == "cmi":
        generator = datafree.models.generator.Generator(nz=s["nz"], ngf=s["ngf"], img_size=32, nc=3).to(dev)
        feature_layers = None
        if a.teacher == "resnet34":
            feature_layers = [teacher.layer1, teacher.layer2, teacher.layer3, teacher.layer4]
        synth = synthesis.CMISynthesizer(
            teacher,
            student,
            generator,
            nz=s["nz"],
            num_classes=num_classes,
            img_size=(3, 32, 32),
            feature_layers=feature_layers,
            bank_size=s["bank_size"],
            n_neg=s["n_neg"],
            head_dim=s["head_dim"],
            init_dataset=None,
            iterations=a.iterations,
            lr_g=s["lr_g"],
            progressive_scale=False,
            adv=s["adv"],
            bn=s["bn"],
            oh=s["oh"],
            cr=s["cr"],
            cr_T=s["cr_T"],
            **common,
        )
    else:
        from datafree.models import generator as gen_mod
        from datafree.synthesis import fast_meta

        if dev.type != "cuda":  # patch 4: their CUDA-only calls, same operations on the generator's device
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity", "adapters"))
            from _common import fast_meta_on_cpu  # torch only: never this repository's datafree

            patches.append(fast_meta_on_cpu(gen_mod, fast_meta))
        generator = gen_mod.Generator(nz=s["nz"], ngf=s["ngf"], img_size=32, nc=3).to(dev)
        synth = synthesis.FastMetaSynthesizer(
            teacher,
            student,
            generator,
            nz=s["nz"],
            num_classes=num_classes,
            img_size=(3, 32, 32),
            init_dataset=None,
            iterations=a.iterations,
            warmup=s["warmup"],
            lr_g=s["lr_g"],
            lr_z=s["lr_z"],
            adv=s["adv"],
            bn=s["bn"],
            oh=s["oh"],
            reset_l0=s["reset_l0"],
            reset_bn=s["reset_bn"],
            bn_mmt=s["bn_mmt"],
            is_maml=s["is_maml"],
            **common,
        )
        synth.ep = synth.ep_start  # patch 5: past the warm-up, adversarial term on
        patches.append(f"synthesizer.ep = {synth.ep_start} (past the warm-up: adversarial term on)")

    # patch 6: observe-only timing wrappers
    pool_cls = type(synth.data_pool)
    orig_add = pool_cls.add
    iter_cls = datafree.utils.DataIter
    orig_iter_init = iter_cls.__init__

    def timed_add(self, *args, **kw):
        t0 = time.perf_counter()
        if clock.tail_start is None:
            clock.tail_start = t0
        out = orig_add(self, *args, **kw)
        clock.pool_add_ms += 1000 * (time.perf_counter() - t0)
        return out

    def timed_iter_init(self, *args, **kw):
        t0 = time.perf_counter()
        orig_iter_init(self, *args, **kw)
        clock.iter_build_ms += 1000 * (time.perf_counter() - t0)

    # pre-fill (untimed) with their own pool writer (and CMI's bank)
    g = torch.Generator().manual_seed(1)
    for _ in range(a.pool_rounds):
        orig_add(synth.data_pool, torch.rand(a.synthesis_batch, 3, 32, 32, generator=g))
        if a.method == "cmi":
            synth.mem_bank.add(torch.randn(a.synthesis_batch, synth.mem_bank.dim_feat, generator=g))
    pool_cls.add = timed_add
    iter_cls.__init__ = timed_iter_init
    patches.append("observe-only timers around ImagePool.add and DataIter.__init__")

    criterion = datafree.criterions.KLDiv(T=s["T"])
    optimizer = torch.optim.SGD(student.parameters(), s["lr"], weight_decay=1e-4, momentum=0.9)
    autocast = datafree.utils.dummy_ctx  # their scripts run without --fp16
    state: Dict[str, Any] = {}

    def before_kd():  # the start of their train()
        state["loss_metric"] = datafree.metrics.RunningLoss(datafree.criterions.KLDiv(reduction="sum"))
        state["acc_metric"] = datafree.metrics.TopkAccuracy(topk=(1, 5))
        student.train()
        teacher.eval()

    def kd_step() -> bool:  # one iteration of their train()
        it_before = synth.data_iter._iter
        images = synth.sample()
        restarted = synth.data_iter._iter is not it_before
        if dev.type == "cuda":
            images = images.cuda(dev.index or 0, non_blocking=True)
        with autocast():
            with torch.no_grad():
                t_out, t_feat = teacher(images, return_features=True)
            s_out = student(images.detach())
            loss_s = criterion(s_out, t_out.detach())
        optimizer.zero_grad()
        loss_s.backward()
        optimizer.step()
        state["acc_metric"].update(s_out, t_out.max(1)[1])
        state["loss_metric"].update(s_out, t_out)
        return restarted

    def loader_len():
        return len(synth.data_iter.dataloader)

    def close():
        for h in getattr(synth, "hooks", []) + getattr(synth, "cmi_hooks", []):
            h.remove()
        synth.data_iter = None
        if not a.keep:
            shutil.rmtree(save_dir, ignore_errors=True)

    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "device": dev,
        "synthesize": synth.synthesize,
        "kd_step": kd_step,
        "before_kd": before_kd,
        "loader_len": loader_len,
        "close": close,
        "info": {
            "package": os.path.dirname(datafree.__file__),
            "commit": commit,
            "class": type(synth).__name__,
            "settings": s,
            "kd_batch": a.kd_batch,
            "save_dir": save_dir,
            "transform": repr(ori_dataset.transform),
            "patches": patches,
            "dataloader_num_workers": 4,
            "multiprocessing_start_method": __import__("multiprocessing").get_start_method(),
            "teacher_params": _param_count(teacher),
            "student_params": _param_count(student),
            "pool_images_before_timing": a.pool_rounds * a.synthesis_batch,
            "cmi_bank_row_dim": getattr(getattr(synth, "mem_bank", None), "dim_feat", None),
        },
    }


# --------------------------------------------------------------------------- main


def compare(paths: List[str]) -> int:
    recs = [json.load(open(p)) for p in paths]
    by = {}
    for r in recs:
        by.setdefault(r["method"], {})[r["side"]] = r
    print(
        "| method | pair | ours s/epoch | theirs s/epoch | speed-up | synthesis s/round ours / theirs "
        "| KD s/epoch ours / theirs | ms/iteration ours / theirs | ms/KD step ours / theirs |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for m, sides in by.items():
        o, t = sides.get("ours"), sides.get("theirs")
        if not (o and t):
            print(f"| {m} | missing {'ours' if not o else 'theirs'} |||||||")
            continue
        po, pt = o["projected"], t["projected"]
        print(
            f"| {m} | {o['teacher']}->{o['student']} | {po['epoch_s']:.1f} | {pt['epoch_s']:.1f} | "
            f"{pt['epoch_s'] / po['epoch_s']:.2f}x | "
            f"{po['synthesis_round_ms'] / 1000:.1f} / {pt['synthesis_round_ms'] / 1000:.1f} | "
            f"{po['kd_phase_ms'] / 1000:.1f} / {pt['kd_phase_ms'] / 1000:.1f} | "
            f"{po['per_iteration_ms']:.1f} / {pt['per_iteration_ms']:.1f} | "
            f"{po['kd_steady_step_ms']:.1f} / {pt['kd_steady_step_ms']:.1f} |"
        )
        for k in (
            "teacher",
            "student",
            "dataset",
            "device",
            "synthesis_batch",
            "kd_batch",
            "iterations",
            "full_iterations",
            "full_kd_steps",
            "pool_rounds",
            "threads",
        ):
            if o.get(k) != t.get(k):
                print(f"  warning: {m}: {k} differs: ours {o.get(k)!r}, theirs {t.get(k)!r}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--compare", nargs="+", metavar="JSON", help="print the ratio table of earlier records and exit")
    p.add_argument("--side", choices=["ours", "theirs"])
    p.add_argument("--method", choices=sorted(METHODS))
    p.add_argument("--ref-root", help="the reference work tree (theirs side), e.g. /tmp/ref/CMI")
    p.add_argument("--teacher", default="wrn40_2")
    p.add_argument("--student", default="wrn16_1")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--synthesis-batch", type=int, help="default: the method's script (256)")
    p.add_argument("--kd-batch", type=int, help="default: the method's script (256; CMI 128)")
    p.add_argument("--iterations", type=int, help="timed inner iterations per round (default: 20, fast10: 10)")
    p.add_argument("--kd-steps", type=int, default=20, help="timed KD steps per round")
    p.add_argument("--full-iterations", type=int, help="a full round's inner iterations (2000 / 200 / 10)")
    p.add_argument("--full-kd-steps", type=int, default=400, help="KD steps per epoch (one round per epoch)")
    p.add_argument(
        "--pool-rounds",
        type=int,
        default=100,
        help="rounds of random images in the pool (and CMI's bank) before timing (default 100: mid-run)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed round + 2 KD steps cycles before timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", metavar="key=value", help="ours only: extra config overrides (e.g. amp=off)")
    p.add_argument("--tmp-dir", default=None, help="where their save_dir is made (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep their save_dir")
    p.add_argument("--json", help="write the record here")
    a = p.parse_args(argv)
    if a.compare:
        return compare(a.compare)
    if not a.side or not a.method:
        p.error("--side and --method are required (or --compare)")
    if a.side == "theirs" and not a.ref_root:
        p.error("--side theirs needs --ref-root")
    d = METHODS[a.method]
    a.synthesis_batch = a.synthesis_batch or d["synthesis_batch"]
    a.kd_batch = a.kd_batch or d["kd_batch"]
    a.full_iterations = a.full_iterations or d["full_iterations"]
    a.iterations = a.iterations or min(20, a.full_iterations)
    if a.iterations < 1 or a.kd_steps < 1 or a.repeats < 1:
        p.error("--iterations, --kd-steps and --repeats must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    random.seed(a.seed)
    torch.manual_seed(a.seed)

    clock = Clock()
    t_build = time.perf_counter()
    side = build_ours(a, clock) if a.side == "ours" else build_theirs(a, clock)
    build_s = time.perf_counter() - t_build
    try:
        m = run_cycles(side, a, clock)
        loader_len = side["loader_len"]()
    finally:
        side["close"]()
    rec = {
        "side": a.side,
        "method": a.method,
        "teacher": a.teacher,
        "student": a.student,
        "dataset": a.dataset,
        "device": str(side["device"]),
        "synthesis_batch": a.synthesis_batch,
        "kd_batch": a.kd_batch,
        "iterations": a.iterations,
        "kd_steps": a.kd_steps,
        "full_iterations": a.full_iterations,
        "full_kd_steps": a.full_kd_steps,
        "pool_rounds": a.pool_rounds,
        "repeats": a.repeats,
        "warmup": a.warmup,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "setup_s": build_s,
        "info": side["info"],
        "measured": m,
        "projected": project(m, a, loader_len),
    }
    text = json.dumps(rec, indent=1, default=str)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            f.write(text)
    pr = rec["projected"]
    print(
        f"{a.side} {a.method} {a.teacher}->{a.student}: {pr['per_iteration_ms']:.1f} ms/iteration, "
        f"tail {pr['round_tail_ms']:.1f} ms/round, KD {pr['kd_steady_step_ms']:.1f} ms/step "
        f"(first {pr['kd_first_step_ms']:.1f}, {pr['loader_restarts_per_epoch']} loader restarts/epoch) "
        f"-> {pr['epoch_s']:.1f} s/epoch projected" + (f" -> {a.json}" if a.json else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
