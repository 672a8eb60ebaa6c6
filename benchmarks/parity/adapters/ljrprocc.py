#!/usr/bin/env python
"""THEIRS side of the cudfkd parity cell: ljrprocc/DataFree's ProbSynthesizer and train() (CuDFKD).

    python benchmarks/parity/adapters/ljrprocc.py --method cudfkd --seed 0 \
        --budget benchmarks/parity/budgets/cudfkd.yaml --teacher model_zoo/mnist_lenet5_bn.pt \
        --data-root /work/shared/data --worktree /tmp/ref/DataFree --out OUT [--smoke]

Their ``datafree_kd.py`` main_worker() (cudfkd branch) is rebuilt for MNIST: its generator is hard-coded for
3 channels and, off CIFAR, 64x64 with nz 1024; the budget's values stand in for the script's flags. Each round
is their ``ProbSynthesizer.synthesize()`` followed by their ``datafree_kd.train()`` (the self-paced loop:
``lambda_scheduler`` and ``curr_v`` with --curr_option curr_log), and the adversarial ramp is their epoch-end
rule. Run-time shims only; their files are never edited.
"""

from __future__ import annotations

import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import torch  # noqa: E402


def main(argv=None) -> int:
    a, budget, b = C.start(argv, "cudfkd")
    # attr: imported by their softtarget.py (`from attr import has`), which CuDFKD never uses
    datafree, registry, ref_main, shims = C.import_reference(a.worktree, stub_modules=("attr",))
    from datafree.synthesis import cudfkd as ref_cudfkd
    import torch.nn.functional as F

    if not hasattr(datafree.synthesis, "ProbSynthesizer"):
        raise SystemExit("error: --worktree is not ljrprocc/DataFree (no ProbSynthesizer)")
    shims += C.register_models(registry)

    # their registry builds MNIST with download=True under data_root/torchdata: keep only the transform
    shims.append(C.no_file_mnist(registry))

    # observe-only recorders (their formulas, recomputed from the values they pass)
    terms = C.TermLog()
    synth_ref = []

    def cross_entropy(out, input, target):
        with torch.no_grad():
            s = synth_ref[0]
            p = F.softmax(input / s.T, dim=1).mean(0)
            terms.add("ent", -(p * p.log()).sum())
            terms.add("oh", out)
            if s.bn > 0:
                terms.add("bn", sum(h.r_feature for h in s.hooks))
            terms.add("adv_w", s.adv)
            if not s.adv > 0:
                terms.add("adv", 0.0)

    C.observe_losses(ref_cudfkd, cross_entropy, lambda v: terms.add("adv", v))
    orig_curr_v = datafree.datasets.utils.curr_v

    def curr_v(l, lamda, spl_type="hard"):
        g, v = orig_curr_v(l, lamda, spl_type)
        terms.add("kd", l)
        terms.add("v", v)
        terms.add("lambda", lamda)
        return g, v

    datafree.datasets.utils.curr_v = curr_v
    shims.append(
        "observe-only: cudfkd.F.cross_entropy / kldiv and datasets.utils.curr_v wrapped to log "
        "ent, oh, bn, adv, adv_w, kd, v, lambda"
    )

    # ------------------------------------------------------------------ main_worker (cudfkd), for MNIST
    num_classes, ori_dataset, normalizer, student, teacher = C.build_models(datafree, registry, a, b)
    if b["loss"] != "kl":
        raise SystemExit("error: the budget's loss must be kl (their l1 branch is not the paper's loss)")
    criterion = datafree.criterions.KLDiv(T=b["T"])  # datafree_kd.py:413 (--loss kl)
    gen = datafree.models.generator.DCGAN_Generator_CIFAR10(
        nz=b["nz"], ngf=b["ngf"], nc=1, img_size=32, d=b["depth"], cond=False, type="normal"
    )
    synthesizer = datafree.synthesis.ProbSynthesizer(
        teacher=teacher,
        student=student,
        G_list=[gen],
        nz=b["nz"],
        num_classes=num_classes,
        img_size=32,
        iterations=[b["g_steps"]],
        lr_g=b["lr_g"],
        synthesis_batch_size=b["synthesis_batch_size"],
        sample_batch_size=b["batch_size"],
        save_dir=os.path.join(os.path.abspath(a.out), "pool"),
        transform=ori_dataset.transform,
        normalizer=normalizer,
        device="cpu",
        lmda_ent=b["lmda_ent"],
        adv=b["adv"],
        oh=b["oh"],
        act=0.0,
        adv_type="kl",
        bn=b["bn"],
        T=b["T"],
        memory=False,
    )
    synth_ref.append(synthesizer)
    optimizer = torch.optim.SGD(student.parameters(), b["lr"], weight_decay=b["weight_decay"], momentum=b["momentum"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=b["epochs"])
    args = types.SimpleNamespace(
        method="cudfkd",
        dataset="mnist",
        lambda_0=b["lambda_0"],
        curr_option="curr_log",
        gpu=None,
        autocast=datafree.utils.dummy_ctx,
        fp16=False,
        print_freq=0,
        distributed=False,
        logger=None,
        log_fidelity=False,
        current_epoch=0,
        pretrained_mode="gan",
    )

    x_test, y_test = C.test_split(registry, a.data_root)
    teacher_acc = C.evaluate(teacher, x_test, y_test)
    accs, secs, curves = [], [], []
    global_iter = 0
    for epoch in range(b["epochs"]):
        args.current_epoch = epoch
        t0 = time.perf_counter()
        for k in range(b["ep_steps"] // b["kd_steps"]):
            synthesizer.synthesize()
            global_iter = ref_main.train(
                synthesizer,
                [student, teacher],
                criterion,
                optimizer,
                args,
                b["kd_steps"],
                l=0,
                global_iter=global_iter,
                save=(k == 0),
            )
        if int(b["epochs"] * b["begin_fraction"]) < epoch < int(b["epochs"] * b["end_fraction"]):
            synthesizer.adv += b["grad_adv"]  # datafree_kd.py:698-700
        secs.append(time.perf_counter() - t0)
        acc = C.evaluate(student, x_test, y_test)
        accs.append(acc)
        curves.append(
            C.epoch_row(
                "cudfkd",
                epoch,
                terms,
                acc,
                optimizer.param_groups[0]["lr"],
                secs[-1],
                shown=("ent", "oh", "bn", "adv", "adv_w", "kd"),
            )
        )
        scheduler.step()
    for h in synthesizer.hooks:
        h.remove()
    record = C.theirs_record(
        a, budget, b, datafree, accs, secs, shims, teacher_acc=teacher_acc, student_steps=global_iter
    )
    C.write_outputs(a.out, record, curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
