#!/usr/bin/env python
"""Run one parity cell on the zju-vipa/CMI reference code (methods dafl, zskt, deepinv, dfq, cmi).

    python adapters/cmi_repo.py --method M --seed S --budget budgets/M.yaml --teacher PATH \
        --data-root DIR --worktree /tmp/ref/CMI --out DIR

Their ``datafree_kd.py`` is imported from the reference work tree (made OUTSIDE this repository, see
benchmarks/parity/README.md) and its own ``main_worker`` runs: their synthesizer classes, their ``train()``
KD loop, their criterion (replaced by ``KLDiv()`` at T = 1 for dafl/zskt/dfq, as their script does), their
SGD + cosine schedule, their evaluator. Their package is also called ``datafree``: this script puts the work
tree first on ``sys.path``, never imports this repository's package, and checks which one it imported.

Run-time shims (their files are never edited; see SHIMS below, written into record.json):

* imports missing in newer libraries: ``termcolor`` (a stub when absent), ``torchvision.models.utils``;
* MNIST: ``registry.datasets.MNIST`` is a stub that keeps the transform it is given (their training
  transform, applied to their PNG pool) and reads no files; the evaluation set is OUR MNIST test split
  (IDX files, 28 -> 32 bilinear resize with antialias on uint8 tensors, mean 0.1307 / std 0.3081), so
  both sides evaluate on the same tensors;
* models: ``lenet5_bn`` / ``lenet5_half`` registered in their ``registry.MODEL_DICT``, with parameter names
  identical to ours (datafree/models/lenet.py), so our teacher's ``state_dict`` loads strictly; the teacher
  file is linked where their script loads it (checkpoints/pretrained/mnist_lenet5_bn.pth, cwd = a scratch dir);
* 1-channel images: ``datafree_kd.py`` fixes ``img_size=(3, 32, 32)`` and ``nc=3``, so the synthesizer and
  generator constructors get (1, 32, 32) / nc=1; ``clip_images`` loops over 3 channels, replaced by the same
  clamp over the normaliser's channels; PIL cannot write (H, W, 1) arrays, so their PNG writer's
  ``Image.fromarray`` gets the channel squeezed (same pixels, 'L' PNGs);
* values their datafree_kd.py hard-codes (generator ngf 64; CMI bank 40960, negatives 4096) are replaced by
  the budget's ``theirs_hardcoded`` values, so that both sides run the same budget;
* device: ``main_worker(gpu=None)`` (their CPU path: no .cuda(), synthesizers on the default device);
  ``--workers 0`` for their evaluation loader only (not timed); their synthesis DataLoader keeps num_workers=4;
* observers only: timers around ``synthesize()`` and ``train()``, a global optimiser step hook that reads the
  loss terms from the frame of ``synthesize()`` (``.item()`` of the terms per generator step; curves.jsonl keeps
  each round's last step, as ours logs it), a wrapper on their evaluator that records the accuracy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (ours: LeNet shims, MNIST test split, seeding, writers; no datafree import)

METHODS = ("dafl", "zskt", "deepinv", "dfq", "cmi")
# their loss-term local names in synthesize() -> the names our synthesizers log (unweighted terms)
TERM_NAMES = {
    "dafl": {"loss_oh": "oh", "loss_act": "act", "loss_balance": "ie", "loss": "loss_g"},
    "zskt": {"loss_adv": "adv", "loss": "loss_g"},
    "dfq": {"loss_bn": "bn", "loss_oh": "oh", "loss_adv": "adv", "loss_balance": "balance", "loss": "loss_g"},
    "deepinv": {
        "loss_bn": "bn",
        "loss_oh": "oh",
        "loss_adv": "adv",
        "loss_tv": "tv",
        "loss_l2": "l2",
        "loss": "loss_g",
    },
    "cmi": {"loss_bn": "bn", "loss_oh": "oh", "loss_adv": "adv", "loss_cr": "cr", "loss": "loss_g"},
}
# shared budget key -> their datafree_kd.py flag
FLAGS = {
    "epochs": "--epochs",
    "ep_steps": "--ep_steps",
    "kd_steps": "--kd_steps",
    "g_steps": "--g_steps",
    "batch_size": "--batch_size",
    "synthesis_batch_size": "--synthesis_batch_size",
    "lr": "--lr",
    "lr_g": "--lr_g",
    "T": "--T",
    "adv": "--adv",
    "bn": "--bn",
    "oh": "--oh",
    "act": "--act",
    "balance": "--balance",
    "cr": "--cr",
    "cr_T": "--cr_T",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SHIMS: list = []


def load_budget(path: str, smoke: bool) -> dict:
    import yaml

    with open(path) as f:
        spec = yaml.safe_load(f)
    return {"spec": spec, "budget": C.effective_budget(spec, smoke), "hard": dict(spec.get("theirs_hardcoded") or {})}


def mnist_test(root: str):
    """Our MNIST test split (C.mnist_test: 28 -> 32 antialiased resize on uint8, /255, normalised) as a dataset."""
    import torch

    return torch.utils.data.TensorDataset(*C.mnist_test(root, (MNIST_MEAN,), (MNIST_STD,)))


# --------------------------------------------------------------------------- their code, shimmed


def import_theirs(root: str):
    """Their datafree, datafree_kd (the training script as a module; its main() is not called) and registry, from
    the work tree first on sys.path (C.import_reference checks where each came from)."""
    datafree, registry, datafree_kd, shims = C.import_reference(root)
    SHIMS.extend(shims)
    if not hasattr(datafree, "synthesis") or not hasattr(datafree.synthesis, "CMISynthesizer"):
        raise SystemExit(f"error: {root} is not the zju-vipa/CMI work tree (no CMISynthesizer)")
    return datafree, datafree_kd, registry


def apply_shims(datafree, datafree_kd, registry, a, hard: dict, teacher_path: str):
    import torch

    # MNIST: their transform, no files; our test split for evaluation
    SHIMS.append(C.no_file_mnist(registry))
    orig_get_dataset = registry.get_dataset

    def get_dataset(name, data_root="data", **kw):
        num_classes, train_dst, _ = orig_get_dataset(name=name, data_root=data_root, **kw)
        return num_classes, train_dst, mnist_test(a.data_root)

    registry.get_dataset = get_dataset
    SHIMS.append("registry.get_dataset: their train set (transform only), our MNIST test split for evaluation")

    SHIMS.extend(C.register_models(registry))  # their script loads the teacher with strict load_state_dict
    os.makedirs("checkpoints/pretrained", exist_ok=True)
    link = "checkpoints/pretrained/mnist_%s.pth" % a.teacher_arch
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.abspath(teacher_path), link)

    # 1-channel images
    img_size = (1, 32, 32)
    syn = datafree.synthesis

    def forcing(cls, **fixed):
        class Shimmed(cls):
            def __init__(self, *args, **kw):
                kw.update(fixed)
                super().__init__(*args, **kw)

        Shimmed.__name__ = cls.__name__
        return Shimmed

    cmi_fixed = {k: hard[k] for k in ("bank_size", "n_neg", "head_dim") if k in hard}
    syn.DeepInvSyntheiszer = forcing(syn.DeepInvSyntheiszer, img_size=img_size)
    syn.GenerativeSynthesizer = forcing(syn.GenerativeSynthesizer, img_size=img_size)
    syn.CMISynthesizer = forcing(syn.CMISynthesizer, img_size=img_size, **cmi_fixed)
    gen_fixed = {"nc": 1, **({"ngf": hard["ngf"]} if "ngf" in hard else {})}
    gm = datafree.models.generator
    # their __init__ calls super(LargeGenerator, self) through the module global: wrap __init__ in place
    for cls in (gm.Generator, gm.LargeGenerator):

        def init(self, *args, _orig=cls.__init__, **kw):
            kw.update(gen_fixed)
            _orig(self, *args, **kw)

        cls.__init__ = init
    SHIMS.append(f"synthesizers img_size=(1, 32, 32); generators {gen_fixed}; CMISynthesizer {cmi_fixed}")

    def clip_images(image_tensor, mean, std):
        for c in range(len(mean)):
            m, s = float(mean[c]), float(std[c])
            image_tensor[:, c] = torch.clamp(image_tensor[:, c], -m / s, (1 - m) / s)
        return image_tensor

    import datafree.synthesis.deepinversion as di_mod

    di_mod.clip_images = clip_images
    SHIMS.append("deepinversion.clip_images: the same clamp over the normaliser's channels (theirs loops over 3)")

    from datafree.utils import _utils

    pil_image = _utils.Image

    class ImageProxy:
        def __getattr__(self, k):
            return getattr(pil_image, k)

        @staticmethod
        def fromarray(arr, *args, **kw):
            if getattr(arr, "ndim", 0) == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            return pil_image.fromarray(arr, *args, **kw)

    _utils.Image = ImageProxy()
    SHIMS.append("utils._utils Image.fromarray: (H, W, 1) -> (H, W) ('L' PNGs, same pixels)")


class Observer:
    """Timers and loss-term capture (observe only)."""

    def __init__(self, method: str, datafree, datafree_kd):

        self.method = method
        self.names = TERM_NAMES[method]
        self.epoch = 0
        self.t_epoch = 0.0
        self.epoch_seconds: list = []
        self.eval_acc: list = []
        self.steps: list = []  # per generator step (curves_steps.jsonl)
        # the last generator step of each synthesize() round: what ours logs per round (our synthesizers return the
        # last inner iteration's terms, the engine averages the epoch's rounds); curves.jsonl = their epoch means
        self.rounds: list = []
        self.step = 0
        self._cur: list = []
        root = os.path.dirname(os.path.abspath(datafree.__file__))

        orig_train = datafree_kd.train

        def train(*args, **kw):
            t0 = time.perf_counter()
            try:
                return orig_train(*args, **kw)
            finally:
                self.t_epoch += time.perf_counter() - t0

        datafree_kd.train = train

        syn = datafree.synthesis
        for cls in {syn.DeepInvSyntheiszer, syn.GenerativeSynthesizer, syn.CMISynthesizer}:
            orig = cls.synthesize

            def synthesize(s, *args, _orig=orig, **kw):
                t0 = time.perf_counter()
                n0 = len(self.steps)
                try:
                    return _orig(s, *args, **kw)
                finally:
                    self.t_epoch += time.perf_counter() - t0
                    if len(self.steps) > n0:
                        self.rounds.append(self.steps[-1])
                        self._cur.append(self.steps[-1])

            cls.synthesize = synthesize

        names = self.names

        def post_step(opt, args, kwargs):
            f = sys._getframe(1)
            while f is not None and not (f.f_code.co_name == "synthesize" and f.f_code.co_filename.startswith(root)):
                f = f.f_back
            if f is None:
                return
            loc = f.f_locals
            head = getattr(loc.get("self"), "optimizer_head", None)
            if head is not None and opt is head:
                return  # CMI: the head's step follows the generator's, same terms
            rec = {}
            for src, dst in names.items():
                v = loc.get(src)
                if v is not None:
                    v = float(v.detach().float().sum()) if hasattr(v, "detach") else float(v)
                    rec[dst] = v
            self.step += 1
            rec = {"epoch": self.epoch + 1, "step": self.step, **rec}
            self.steps.append(rec)

        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(post_step)

        orig_eval = datafree.evaluators.classification_evaluator

        def classification_evaluator(loader):
            ev = orig_eval(loader)
            inner = ev.eval

            def eval_(model, *args, **kw):
                self.epoch_seconds.append(self.t_epoch)
                res = inner(model, *args, **kw)
                acc = float(res["Acc"][0])
                self.eval_acc.append(acc)
                self.epoch += 1
                means = self.epoch_means(self._cur)
                terms = " ".join(f"{k} {v:.4g}" for k, v in means.items() if k not in ("epoch", "step"))
                print(
                    f"[theirs {self.method}] epoch {self.epoch}: acc {acc:.2f}  {self.t_epoch:.1f} s  {terms}",
                    file=sys.stderr,
                    flush=True,
                )
                self.t_epoch = 0.0
                self._cur = []
                return res

            ev.eval = eval_
            return ev

        datafree.evaluators.classification_evaluator = classification_evaluator

    def epoch_means(self, recs):
        if not recs:
            return {}
        keys = [k for k in recs[0] if k not in ("epoch", "step")]
        out = {"epoch": recs[0]["epoch"], "step": recs[-1]["step"]}
        for k in keys:
            vals = [r[k] for r in recs if k in r and math.isfinite(r[k])]
            out[k] = sum(vals) / len(vals) if vals else float("nan")
        return out


def main(argv=None) -> int:
    p = C.arg_parser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher-arch", default="lenet5_bn")
    p.add_argument("--student", default="lenet5_half")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (their PNG pool, logs)")
    a = p.parse_args(argv)
    if a.method not in METHODS:
        p.error(f"--method must be one of {', '.join(METHODS)}")

    root = os.path.abspath(a.worktree)
    if not os.path.isfile(os.path.join(root, "datafree_kd.py")):
        raise SystemExit(f"error: {root} has no datafree_kd.py; make the work tree as benchmarks/parity/README.md says")
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    teacher = os.path.abspath(a.teacher)
    a.data_root = os.path.abspath(a.data_root)
    b = load_budget(a.budget, a.smoke)
    budget, hard = b["budget"], b["hard"]

    scratch = tempfile.mkdtemp(prefix=f"parity-cmi-{a.method}-s{a.seed}-")
    cwd = os.getcwd()
    os.chdir(scratch)
    try:
        datafree, datafree_kd, registry = import_theirs(root)
        apply_shims(datafree, datafree_kd, registry, a, hard, teacher)
        obs = Observer(a.method, datafree, datafree_kd)

        argv_theirs = [
            "--method",
            a.method,
            "--dataset",
            "mnist",
            "--teacher",
            a.teacher_arch,
            "--student",
            a.student,
            "--data_root",
            a.data_root,
            "--save_dir",
            os.path.join(scratch, "synthesis"),
            "--seed",
            str(a.seed),
            "--workers",
            "0",
            "--log_tag",
            f"s{a.seed}",
        ]
        for k, flag in FLAGS.items():
            if k in budget:
                argv_theirs += [flag, str(budget[k])]
        args = datafree_kd.parser.parse_args(argv_theirs)
        # main(): seeding and the non-distributed path, then main_worker on the CPU (gpu=None)
        C.seed_all(a.seed)
        args.distributed = False
        args.multiprocessing_distributed = False
        SHIMS.append("main_worker(gpu=None): their CPU path; numpy seeded too; --workers 0 (evaluation loader only)")
        t0 = time.perf_counter()
        datafree_kd.main_worker(None, 0, args)
        wall = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    commit = C.git_commit(root)
    import torch

    by_epoch: dict = {}
    for r in obs.rounds:
        by_epoch.setdefault(r["epoch"], []).append(r)
    curves = [obs.epoch_means(by_epoch[e]) for e in sorted(by_epoch)]
    rec = {
        "method": a.method,
        "side": "theirs",
        "seed": a.seed,
        "acc_last": obs.eval_acc[-1] if obs.eval_acc else None,
        "acc_best": max(obs.eval_acc) if obs.eval_acc else None,
        "epochs": len(obs.eval_acc),
        "epoch_seconds": [round(x, 4) for x in obs.epoch_seconds],
        "eval_acc": obs.eval_acc,
        "budget": budget,
        "smoke": a.smoke,
        "teacher": teacher,
        "teacher_sha256": C.sha256(teacher),
        "reference_repo": "zju-vipa/CMI",
        "reference_commit": commit,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": C.machine(),
        "torch": torch.__version__,
        "wall_seconds": round(wall, 2),
        "curves_granularity": "epoch means over rounds of each round's last generator step (as ours); "
        "curves_steps.jsonl has every step",
        "shims": SHIMS,
        "theirs_hardcoded": hard,
        "package": os.path.dirname(os.path.abspath(sys.modules["datafree"].__file__)),
    }
    C.atomic_write(os.path.join(out, "curves_steps.jsonl"), "".join(json.dumps(c) + "\n" for c in obs.steps))
    C.write_outputs(out, rec, curves)
    print(
        f"theirs {a.method} s{a.seed}: acc {rec['acc_last']} (best {rec['acc_best']}), "
        f"{sum(obs.epoch_seconds) / max(1, len(obs.epoch_seconds)):.2f} s/epoch -> {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
