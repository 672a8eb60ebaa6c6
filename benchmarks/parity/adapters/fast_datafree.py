#!/usr/bin/env python
"""THEIRS side of the fast10 parity cell: zju-vipa/Fast-Datafree's FastMetaSynthesizer and train().

Run as a subprocess by parity.py (see benchmarks/parity/README.md):

    python benchmarks/parity/adapters/fast_datafree.py --method fast10 --seed 0 \
        --budget benchmarks/parity/budgets/fast10.yaml --teacher model_zoo/mnist_lenet5_bn.pt \
        --data-root /work/shared/data --worktree /tmp/ref/Fast-Datafree --out OUT [--smoke]

Their ``datafree_kd.py`` main_worker() is rebuilt here for MNIST (its model, generator and image sizes are
hard-coded for 3-channel 32x32 CIFAR), with the budget's values in place of the script's flags; the
synthesis round is their ``FastMetaSynthesizer.synthesize()`` and the KD phase is their
``datafree_kd.train()`` (their KLDiv at T, SGD). Run-time shims only; their files are never edited.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import torch  # noqa: E402


def main(argv=None) -> int:
    a, budget, b = C.start(argv, "fast10")
    datafree, registry, ref_main, shims = C.import_reference(a.worktree)
    from datafree.models import generator as gen_mod
    from datafree.synthesis import fast_meta
    from datafree.utils import _utils as ref_utils
    from PIL import Image

    if not hasattr(datafree.synthesis, "FastMetaSynthesizer"):
        raise SystemExit("error: --worktree is not Fast-Datafree (no FastMetaSynthesizer)")
    shims += C.register_models(registry)

    # their registry builds MNIST with download=True under data_root/torchdata: keep only the transform
    shims.append(C.no_file_mnist(registry))

    # CPU: their Generator.clone() and fomaml/reptile gradients call .cuda(); same operations on the CPU
    shims.append(C.fast_meta_on_cpu(gen_mod, fast_meta))

    # 1-channel pool: their save_image_batch(pack=False) calls Image.fromarray on HxWx1, which PIL refuses
    orig_save = ref_utils.save_image_batch

    def save_image_batch(imgs, output, col=None, size=None, pack=True):
        if not pack and isinstance(imgs, torch.Tensor) and imgs.shape[1] == 1:
            arr = (imgs.detach().clamp(0, 1).cpu().numpy() * 255).astype("uint8")  # their quantisation
            stem = output.strip(".png")  # their file naming
            for idx, img in enumerate(arr):
                Image.fromarray(img[0]).save(stem + "-%d.png" % idx)  # mode L
            return
        return orig_save(imgs, output, col=col, size=size, pack=pack)

    ref_utils.save_image_batch = save_image_batch
    shims.append("utils.save_image_batch(pack=False): 1-channel images saved as mode-L PNG (same uint8 values)")

    # one CPU thread: their pool loader's 4 worker processes -> loading in the main process (same batches)
    orig_loader = torch.utils.data.DataLoader

    class Loader(orig_loader):
        def __init__(self, *args, **kw):
            kw["num_workers"] = 0
            kw["pin_memory"] = False
            super().__init__(*args, **kw)

    torch.utils.data.DataLoader = Loader
    shims.append("DataLoader(num_workers=4, pin_memory=True) -> num_workers=0 (one thread; same data)")

    # observe-only recorders of the synthesis terms (their formulas, recomputed on the values they pass), per
    # inner step (curves_steps.jsonl); curves.jsonl gets, as ours logs them (datafree/synthesis/fast.py returns the
    # last inner step's terms of a round, the engine averages the epoch's rounds), the epoch mean over rounds of
    # each round's LAST inner step. (The mean over all inner steps is higher: the first steps of a round start
    # from the meta-generator, e.g. bn 11.3 -> 4.2 over the 10 steps of round 1.)
    terms = C.TermLog()
    hooks_ref = []
    steps = []  # every inner step: {"epoch", "round", "it", "oh", "bn", "adv"}

    def cross_entropy(out, input, target):  # once per inner step (fast_meta.py:143), after the teacher's forward
        step = {"oh": float(out.detach()), "adv": 0.0}  # their loss_adv is zero when off (fast_meta.py:149)
        if hooks_ref:
            step["bn"] = float(sum(h.r_feature for h in hooks_ref).detach())
        steps.append(step)

    C.observe_losses(fast_meta, cross_entropy, lambda v: steps[-1].__setitem__("adv", float(v)))
    shims.append("observe-only: fast_meta.F.cross_entropy / kldiv wrapped to log oh, bn, adv per inner step")

    # ------------------------------------------------------------------ main_worker, for MNIST
    num_classes, ori_dataset, normalizer, student, teacher = C.build_models(datafree, registry, a, b)
    criterion = datafree.criterions.KLDiv(T=b["T"])
    generator = gen_mod.Generator(nz=b["nz"], ngf=b["ngf"], img_size=32, nc=1)
    save_dir = os.path.join(os.path.abspath(a.out), "pool")
    synthesizer = datafree.synthesis.FastMetaSynthesizer(
        teacher,
        student,
        generator,
        nz=b["nz"],
        num_classes=num_classes,
        img_size=(1, 32, 32),
        init_dataset=None,
        save_dir=save_dir,
        device="cpu",
        transform=ori_dataset.transform,
        normalizer=normalizer,
        synthesis_batch_size=b["synthesis_batch_size"],
        sample_batch_size=b["batch_size"],
        iterations=b["g_steps"],
        warmup=b["warmup"],
        lr_g=b["lr_g"],
        lr_z=b["lr_z"],
        adv=b["adv"],
        bn=b["bn"],
        oh=b["oh"],
        reset_l0=1,
        reset_bn=0,
        bn_mmt=b["bn_mmt"],
        is_maml=b["is_maml"],
    )
    hooks_ref.extend(synthesizer.hooks)
    # their reset is hard-coded at round 120 + warm-up (of 200 + 20); the budget's reset_after replaces 120
    synthesizer.reset_l0 = 0
    optimizer = torch.optim.SGD(student.parameters(), b["lr"], weight_decay=b["weight_decay"], momentum=b["momentum"])
    # their CosineAnnealingLR(T_max=200, eta_min=2e-4) is hard-coded for 220 epochs - 20 warm-up
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, b["epochs"] - b["warmup"], eta_min=b["lr_min"])
    shims.append(
        "reset_l0 at round reset_after + warmup (their 120 + warmup); cosine T_max = epochs - warmup "
        "(their 200 = 220 - 20), eta_min = budget lr_min"
    )
    args = types.SimpleNamespace(
        method="fast_meta",
        kd_steps=b["kd_steps"],
        gpu=None,
        autocast=datafree.utils.dummy_ctx,
        fp16=False,
        print_freq=0,
        current_epoch=0,
        logger=None,
    )

    x_test, y_test = C.test_split(registry, a.data_root)
    teacher_acc = C.evaluate(teacher, x_test, y_test)
    accs, secs, curves = [], [], []
    for epoch in range(b["epochs"]):
        args.current_epoch = epoch
        t0 = time.perf_counter()
        for _ in range(b["ep_steps"] // b["kd_steps"]):
            if synthesizer.ep + 1 == b["reset_after"] + b["warmup"]:
                fast_meta.reset_l0(synthesizer.generator)
            first = len(steps)
            synthesizer.synthesize()
            for it, st in enumerate(steps[first:]):
                st.update(epoch=epoch, round=synthesizer.ep, it=it)
            for k in ("oh", "bn", "adv"):
                if k in steps[-1]:
                    terms.add(k, steps[-1][k])  # the round's last inner step, as ours logs it
            if epoch >= b["warmup"]:
                ref_main.train(synthesizer, [student, teacher], criterion, optimizer, args)
        secs.append(time.perf_counter() - t0)
        acc = C.evaluate(student, x_test, y_test)
        accs.append(acc)
        curves.append(C.epoch_row("fast10", epoch, terms, acc, optimizer.param_groups[0]["lr"], secs[-1]))
        if epoch >= b["warmup"]:
            scheduler.step()
    for h in synthesizer.hooks:
        h.remove()
    import shutil

    shutil.rmtree(save_dir, ignore_errors=True)
    record = C.theirs_record(a, budget, b, datafree, accs, secs, shims, teacher_acc=teacher_acc)
    record["curves_granularity"] = (
        "epoch means over rounds of each round's last inner step (as ours); curves_steps.jsonl has every inner step"
    )
    C.atomic_write(os.path.join(a.out, "curves_steps.jsonl"), "".join(json.dumps(st) + "\n" for st in steps))
    C.write_outputs(a.out, record, curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
