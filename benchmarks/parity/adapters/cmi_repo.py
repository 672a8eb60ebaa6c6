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
  loss terms from the frame of ``synthesize()`` (``.item()`` of the terms per generator step), a wrapper on
  their evaluator that records the accuracy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import types

METHODS = ("dafl", "zskt", "deepinv", "dfq", "cmi")
# their loss-term local names in synthesize() -> the names our synthesizers log (unweighted terms)
TERM_NAMES = {
    "dafl": {"loss_oh": "oh", "loss_act": "act", "loss_balance": "ie", "loss": "loss_g"},
    "zskt": {"loss_adv": "adv", "loss": "loss_g"},
    "dfq": {"loss_bn": "bn", "loss_oh": "oh", "loss_adv": "adv", "loss_balance": "balance", "loss": "loss_g"},
    "deepinv": {"loss_bn": "bn", "loss_oh": "oh", "loss_adv": "adv", "loss_tv": "tv", "loss_l2": "l2",
                "loss": "loss_g"},
    "cmi": {"loss_bn": "bn", "loss_oh": "oh", "loss_adv": "adv", "loss_cr": "cr", "loss": "loss_g"},
}
# shared budget key -> their datafree_kd.py flag
FLAGS = {"epochs": "--epochs", "ep_steps": "--ep_steps", "kd_steps": "--kd_steps", "g_steps": "--g_steps",
         "batch_size": "--batch_size", "synthesis_batch_size": "--synthesis_batch_size", "lr": "--lr",
         "lr_g": "--lr_g", "T": "--T", "adv": "--adv", "bn": "--bn", "oh": "--oh", "act": "--act",
         "balance": "--balance", "cr": "--cr", "cr_T": "--cr_T"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SHIMS: list = []


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cpu_count": os.cpu_count(), "node": platform.node(), "python": platform.python_version()}


def atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_budget(path: str, smoke: bool) -> dict:
    import yaml

    with open(path) as f:
        spec = yaml.safe_load(f)
    budget = dict(spec["budget"])
    if smoke:
        budget.update(spec.get("smoke") or {})
    return {"spec": spec, "budget": budget, "hard": dict(spec.get("theirs_hardcoded") or {})}


# --------------------------------------------------------------------------- our MNIST and LeNet, standalone


def read_idx(path: str):
    import gzip
    import struct

    import numpy as np

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    _, _, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx(root: str, name: str) -> str:
    for folder in ("MNIST/raw", "mnist", "MNIST", ""):
        for ext in ("", ".gz"):
            p = os.path.join(root, folder, name + ext)
            if os.path.isfile(p):
                return p
    raise SystemExit(f"error: {name} not found under {root} (mnist/, MNIST/raw/)")


def mnist_test(root: str):
    """Our MNIST test split: uint8 28x28 -> 32x32 (bilinear, antialias) -> float /255 -> normalised."""
    import torch
    from torchvision.transforms.functional import resize

    x = torch.from_numpy(read_idx(find_idx(root, "t10k-images-idx3-ubyte")).copy())[:, None]
    y = torch.from_numpy(read_idx(find_idx(root, "t10k-labels-idx1-ubyte")).astype("int64"))
    x = resize(x, [32, 32], antialias=True).float().div_(255)
    x = (x - MNIST_MEAN) / MNIST_STD
    return torch.utils.data.TensorDataset(x, y)


def lenet_classes():
    from torch import nn

    class LeNet5(nn.Module):
        """Same modules and parameter names as datafree/models/lenet.py at 32x32, 1 channel."""

        def __init__(self, num_classes=10, width=1.0, bn=False):
            super().__init__()
            c1, c2, c3, f1 = (int(round(c * width)) for c in (6, 16, 120, 84))

            def block(conv, pool):
                layers = [conv] + ([nn.BatchNorm2d(conv.out_channels)] if bn else []) + [nn.ReLU(inplace=True)]
                return layers + ([nn.MaxPool2d(2)] if pool else [])

            self.features = nn.Sequential(*block(nn.Conv2d(1, c1, 5), True), *block(nn.Conv2d(c1, c2, 5), True),
                                          *block(nn.Conv2d(c2, c3, 5), False))
            hidden = [nn.Linear(c3, f1)] + ([nn.BatchNorm1d(f1)] if bn else []) + [nn.ReLU(inplace=True)]
            self.head = nn.Sequential(*hidden, nn.Linear(f1, num_classes))

        def forward(self, x, return_features=False):
            f = self.features(x).flatten(1)  # 1x1 map: our pool() is the identity here
            out = self.head(f)
            return (out, f) if return_features else out

    return {"lenet5_bn": lambda num_classes=10, **kw: LeNet5(num_classes, 1.0, True),
            "lenet5_half": lambda num_classes=10, **kw: LeNet5(num_classes, 0.5, False)}


# --------------------------------------------------------------------------- their code, shimmed


def import_theirs(root: str):
    if "datafree" in sys.modules:
        raise SystemExit("error: a datafree package is already imported; the adapter needs its own process")
    sys.path.insert(0, root)
    try:
        import termcolor  # noqa: F401
    except ImportError:
        mod = types.ModuleType("termcolor")
        mod.colored = lambda text, *a, **k: text
        sys.modules["termcolor"] = mod
        SHIMS.append("termcolor: stub (colored returns the text)")
    import torch.hub
    import torchvision.models

    try:
        import torchvision.models.utils  # noqa: F401
    except ImportError:
        mod = types.ModuleType("torchvision.models.utils")
        mod.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = mod
        torchvision.models.utils = mod
        SHIMS.append("torchvision.models.utils -> torch.hub.load_state_dict_from_url")
    import datafree  # THEIR package

    if not os.path.abspath(datafree.__file__).startswith(os.path.abspath(root) + os.sep):
        raise SystemExit(f"error: imported datafree from {datafree.__file__}, not from {root}")
    if not hasattr(datafree, "synthesis") or not hasattr(datafree.synthesis, "CMISynthesizer"):
        raise SystemExit(f"error: {root} is not the zju-vipa/CMI work tree (no CMISynthesizer)")
    import datafree_kd  # their training script, as a module (its main() is not called)
    import registry

    return datafree, datafree_kd, registry


def apply_shims(datafree, datafree_kd, registry, a, hard: dict, teacher_path: str):
    import numpy as np
    import torch

    # MNIST: their transform, no files; our test split for evaluation
    class NoFilesMNIST:
        def __init__(self, root=None, train=True, download=False, transform=None, target_transform=None, **kw):
            self.transform = transform

    ds = types.SimpleNamespace(**{k: getattr(registry.datasets, k) for k in dir(registry.datasets) if not k.startswith("_")})
    ds.MNIST = NoFilesMNIST
    registry.datasets = ds
    orig_get_dataset = registry.get_dataset

    def get_dataset(name, data_root="data", **kw):
        num_classes, train_dst, _ = orig_get_dataset(name=name, data_root=data_root, **kw)
        return num_classes, train_dst, mnist_test(a.data_root)

    registry.get_dataset = get_dataset
    SHIMS.append("registry.datasets.MNIST -> no-file stub (their train transform kept); evaluation = our MNIST test split")

    registry.MODEL_DICT.update(lenet_classes())
    SHIMS.append("registry.MODEL_DICT += lenet5_bn, lenet5_half (our parameter names; teacher loaded strictly)")
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
    return np


class Observer:
    """Timers and loss-term capture (observe only)."""

    def __init__(self, method: str, datafree, datafree_kd):
        import torch

        self.method = method
        self.names = TERM_NAMES[method]
        self.epoch = 0
        self.t_epoch = 0.0
        self.epoch_seconds: list = []
        self.eval_acc: list = []
        self.steps: list = []  # per generator step
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
                try:
                    return _orig(s, *args, **kw)
                finally:
                    self.t_epoch += time.perf_counter() - t0

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
            self._cur.append(rec)

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
                print(f"[theirs {self.method}] epoch {self.epoch}: acc {acc:.2f}  {self.t_epoch:.1f} s  {terms}",
                      file=sys.stderr, flush=True)
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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--budget", required=True)
    p.add_argument("--teacher", required=True, help="our checkpoint file (dict with state_dict)")
    p.add_argument("--teacher-arch", default="lenet5_bn")
    p.add_argument("--student", default="lenet5_half")
    p.add_argument("--data-root", required=True, help="folder holding mnist/ IDX files (DATAFREE_DATA)")
    p.add_argument("--worktree", required=True, help="the zju-vipa/CMI work tree, e.g. /tmp/ref/CMI")
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (their PNG pool, logs)")
    a = p.parse_args(argv)

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
        import numpy as np
        import torch

        datafree, datafree_kd, registry = import_theirs(root)
        apply_shims(datafree, datafree_kd, registry, a, hard, teacher)
        obs = Observer(a.method, datafree, datafree_kd)

        argv_theirs = ["--method", a.method, "--dataset", "mnist", "--teacher", a.teacher_arch,
                       "--student", a.student, "--data_root", a.data_root, "--save_dir", os.path.join(scratch, "synthesis"),
                       "--seed", str(a.seed), "--workers", "0", "--log_tag", f"s{a.seed}"]
        for k, flag in FLAGS.items():
            if k in budget:
                argv_theirs += [flag, str(budget[k])]
        args = datafree_kd.parser.parse_args(argv_theirs)
        # main(): seeding and the non-distributed path, then main_worker on the CPU (gpu=None)
        random.seed(a.seed)
        np.random.seed(a.seed)
        torch.manual_seed(a.seed)
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

    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    import torch

    by_epoch: dict = {}
    for r in obs.steps:
        by_epoch.setdefault(r["epoch"], []).append(r)
    curves = [obs.epoch_means(by_epoch[e]) for e in sorted(by_epoch)]
    rec = {
        "method": a.method, "side": "theirs", "seed": a.seed,
        "acc_last": obs.eval_acc[-1] if obs.eval_acc else None,
        "acc_best": max(obs.eval_acc) if obs.eval_acc else None,
        "epochs": len(obs.eval_acc), "epoch_seconds": [round(x, 4) for x in obs.epoch_seconds],
        "eval_acc": obs.eval_acc, "budget": budget, "smoke": a.smoke,
        "teacher": teacher, "teacher_sha256": sha256(teacher),
        "reference_repo": "zju-vipa/CMI", "reference_commit": commit,
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": machine(), "torch": torch.__version__, "wall_seconds": round(wall, 2),
        "curves_granularity": "epoch means of their per-generator-step terms (curves_steps.jsonl has the steps)",
        "shims": SHIMS, "theirs_hardcoded": hard, "package": os.path.dirname(os.path.abspath(sys.modules["datafree"].__file__)),
    }
    atomic_write(os.path.join(out, "curves.jsonl"), "".join(json.dumps(c) + "\n" for c in curves))
    atomic_write(os.path.join(out, "curves_steps.jsonl"), "".join(json.dumps(c) + "\n" for c in obs.steps))
    atomic_write(os.path.join(out, "record.json"), json.dumps(rec, indent=1))
    print(f"theirs {a.method} s{a.seed}: acc {rec['acc_last']} (best {rec['acc_best']}), "
          f"{sum(obs.epoch_seconds) / max(1, len(obs.epoch_seconds)):.2f} s/epoch -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
