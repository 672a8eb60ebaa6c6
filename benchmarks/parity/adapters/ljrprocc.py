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
    a = C.parse_args(argv)
    budget = C.load_budget(a.budget)
    if a.method != budget["method"] or a.method != "cudfkd":
        raise SystemExit(f"error: this adapter runs cudfkd (budget says {budget['method']!r}, --method {a.method!r})")
    b = C.effective_budget(budget, a.smoke)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
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
    F_proxy = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})

    def cross_entropy(input, target, *args, **kw):
        out = F.cross_entropy(input, target, *args, **kw)
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
        return out

    F_proxy.cross_entropy = cross_entropy
    ref_cudfkd.F = F_proxy
    orig_kldiv = ref_cudfkd.kldiv

    def kldiv(logits, targets, T=1.0, reduction="batchmean"):
        out = orig_kldiv(logits, targets, T=T, reduction=reduction)
        with torch.no_grad():
            mask = (logits.max(1)[1] == targets.max(1)[1]).float()
            terms.add("adv", -(out.sum(1) * mask).mean())
        return out

    ref_cudfkd.kldiv = kldiv
    orig_curr_v = datafree.datasets.utils.curr_v

    def curr_v(l, lamda, spl_type="hard"):
        g, v = orig_curr_v(l, lamda, spl_type)
        terms.add("kd", l)
        terms.add("v", v)
        terms.add("lambda", lamda)
        return g, v

    datafree.datasets.utils.curr_v = curr_v
    shims.append("observe-only: cudfkd.F.cross_entropy / kldiv and datasets.utils.curr_v wrapped to log "
                 "ent, oh, bn, adv, adv_w, kd, v, lambda")

    # ------------------------------------------------------------------ main_worker (cudfkd), for MNIST
    C.seed_all(a.seed)
    num_classes, ori_dataset, _ = registry.get_dataset(name="mnist", data_root="/nonexistent")
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["mnist"])
    student = registry.get_model(b["student"], num_classes=num_classes)
    teacher, ck = C.load_teacher(registry, a.teacher)
    if list(ck["spec"]["mean"]) != list(registry.NORMALIZE_DICT["mnist"]["mean"]) or \
            list(ck["spec"]["std"]) != list(registry.NORMALIZE_DICT["mnist"]["std"]):
        raise SystemExit(f"error: teacher normalisation {ck['spec']} != their NORMALIZE_DICT['mnist']")
    if b["loss"] != "kl":
        raise SystemExit("error: the budget's loss must be kl (their l1 branch is not the paper's loss)")
    criterion = datafree.criterions.KLDiv(T=b["T"])  # datafree_kd.py:413 (--loss kl)
    gen = datafree.models.generator.DCGAN_Generator_CIFAR10(nz=b["nz"], ngf=b["ngf"], nc=1, img_size=32,
                                                           d=b["depth"], cond=False, type="normal")
    synthesizer = datafree.synthesis.ProbSynthesizer(
        teacher=teacher, student=student, G_list=[gen], nz=b["nz"], num_classes=num_classes, img_size=32,
        iterations=[b["g_steps"]], lr_g=b["lr_g"], synthesis_batch_size=b["synthesis_batch_size"],
        sample_batch_size=b["batch_size"], save_dir=os.path.join(os.path.abspath(a.out), "pool"),
        transform=ori_dataset.transform, normalizer=normalizer, device="cpu", lmda_ent=b["lmda_ent"],
        adv=b["adv"], oh=b["oh"], act=0.0, adv_type="kl", bn=b["bn"], T=b["T"], memory=False)
    synth_ref.append(synthesizer)
    optimizer = torch.optim.SGD(student.parameters(), b["lr"], weight_decay=b["weight_decay"], momentum=b["momentum"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=b["epochs"])
    args = types.SimpleNamespace(
        method="cudfkd", dataset="mnist", lambda_0=b["lambda_0"], curr_option="curr_log", gpu=None,
        autocast=datafree.utils.dummy_ctx, fp16=False, print_freq=0, distributed=False, logger=None,
        log_fidelity=False, current_epoch=0, pretrained_mode="gan")

    x_test, y_test = C.mnist_test(a.data_root, registry.NORMALIZE_DICT["mnist"]["mean"],
                                  registry.NORMALIZE_DICT["mnist"]["std"])
    teacher_acc = C.evaluate(teacher, x_test, y_test)
    accs, secs, curves = [], [], []
    global_iter = 0
    for epoch in range(b["epochs"]):
        args.current_epoch = epoch
        t0 = time.perf_counter()
        for k in range(b["ep_steps"] // b["kd_steps"]):
            synthesizer.synthesize()
            global_iter = ref_main.train(synthesizer, [student, teacher], criterion, optimizer, args, b["kd_steps"],
                                         l=0, global_iter=global_iter, save=(k == 0))
        if int(b["epochs"] * b["begin_fraction"]) < epoch < int(b["epochs"] * b["end_fraction"]):
            synthesizer.adv += b["grad_adv"]  # datafree_kd.py:698-700
        secs.append(time.perf_counter() - t0)
        acc = C.evaluate(student, x_test, y_test)
        accs.append(acc)
        row = {"epoch": epoch, **terms.pop(), "acc": acc, "lr": optimizer.param_groups[0]["lr"], "seconds": secs[-1]}
        curves.append(row)
        print(f"[theirs cudfkd] epoch {epoch} acc {acc:.2f} {secs[-1]:.1f}s " +
              " ".join(f"{k}={v:.4g}" for k, v in row.items() if k in ("ent", "oh", "bn", "adv", "adv_w", "kd")),
              flush=True)
        scheduler.step()
    for h in synthesizer.hooks:
        h.remove()
    record = {
        "method": a.method, "side": "theirs", "seed": a.seed, "acc_last": accs[-1], "acc_best": max(accs),
        "epochs": b["epochs"], "epoch_seconds": secs, "eval_acc": accs, "budget": b, "smoke": a.smoke,
        "teacher_sha256": C.sha256(a.teacher), "teacher_acc": teacher_acc, "student_steps": global_iter,
        "reference_repo": budget["reference"]["repo"], "reference_commit": C.git_commit(a.worktree),
        "reference_origin": C.git_origin(a.worktree), "threads": torch.get_num_threads(), "machine": C.machine(),
        "shims": shims, "their_package": os.path.dirname(datafree.__file__),
    }
    C.write_outputs(a.out, record, curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
