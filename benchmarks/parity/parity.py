#!/usr/bin/env python
"""Parity with the reference code: each method run by ours and by its reference implementation, same budget.

    parity.py run --method M --side ours|theirs --seed S [--out results/parity] [--worktree DIR] [--smoke]
    parity.py all --jobs 2 [--methods dafl,zskt] [--seeds 0,1,2] [--smoke]
    parity.py table [--out results/parity] [--smoke]

A cell is one (method, side, seed): ``<out>/<method>/<side>-s<seed>/`` holding ``record.json`` and
``curves.jsonl`` (schema in benchmarks/parity/README.md). ``--smoke`` shrinks the budget (the budget file's
``smoke`` section) and writes under ``<out>/_smoke/``. A cell whose record.json matches the budget and the
teacher's sha256 is skipped when, theirs: the reference work tree's HEAD is the recorded one; ours: the run's
identity (run/fingerprint.json, datafree/identity.py) is the one the current overrides resolve to.

The theirs side runs ``adapters/<budget adapter>.py`` as a subprocess (never importing our package, since the
reference package is also called ``datafree``); the ours side runs ``python -m datafree.cli distill`` with the
method's config plus the budget's ``ours`` overrides, then converts the run's metrics.jsonl. This script
imports nothing from our package either (it only runs it; adapters/_common.py is the harness's own), so both
sides start from a clean interpreter.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUDGETS = os.path.join(HERE, "budgets")
ADAPTERS = os.path.join(HERE, "adapters")
sys.path.insert(0, ADAPTERS)
import _common as C  # noqa: E402  (the adapters' stdlib helpers and budget layouts; not our package)

DEFAULT_TEACHER = os.path.join(REPO, "model_zoo", "mnist_lenet5_bn.pt")
DEFAULT_WORKTREES = {
    "cmi_repo": "/tmp/ref/CMI",
    "fast_datafree": "/tmp/ref/Fast-Datafree",
    "ljrprocc": "/tmp/ref/DataFree",
}
#: the adapter of a budget file that names none (the ``shared`` layout)
ADAPTER_OF = {"fast10": "fast_datafree", "cudfkd": "ljrprocc"}
SIDES = ("ours", "theirs")
TARGET_SPEEDUP = 2.0


# --------------------------------------------------------------------------- small helpers


sha256, atomic_write, git_head, machine = C.sha256, C.atomic_write, C.git_commit, C.machine


def methods_available() -> List[str]:
    return sorted(f[:-5] for f in os.listdir(BUDGETS) if f.endswith(".yaml"))


def load_budget(method: str, smoke: bool = False, budgets_dir: str = BUDGETS) -> Dict[str, Any]:
    """The budget file, with ``budget`` = the shared budget (smoke-shrunk when asked) and ``adapter`` set.

    Two layouts exist: ``budget`` + ``ours: {from_budget, fixed}`` (the zju-vipa/CMI methods) and ``shared`` +
    ``ours: {key: value}`` (fast10, cudfkd; ``smoke`` also replaces the same keys in ``ours``, with or without
    their ``synth.`` / ``distill.`` / ``optim.`` prefix). Both adapters record the same ``budget`` dict.
    """
    import yaml

    path = os.path.join(budgets_dir, f"{method}.yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no budget file {path} (methods: {', '.join(methods_available())})")
    with open(path) as f:
        spec = yaml.safe_load(f)
    spec.setdefault("adapter", ADAPTER_OF.get(method))
    spec["budget"] = C.effective_budget(spec, smoke)
    spec["smoke_applied"] = smoke
    spec["path"] = path
    return spec


def our_overrides(spec: Dict[str, Any]) -> List[str]:
    """``key=value`` overrides for ``datafree distill`` that realise the shared budget on our side."""
    ours = spec.get("ours") or {}
    budget = spec["budget"]
    out = []
    if "from_budget" in ours or "fixed" in ours:
        for key, src in (ours.get("from_budget") or {}).items():
            if src not in budget:
                raise SystemExit(f"error: {spec['path']}: ours.from_budget.{key} names {src!r}, not in budget")
            out.append(f"{key}={_yaml_value(budget[src])}")
        for key, val in (ours.get("fixed") or {}).items():
            out.append(f"{key}={_yaml_value(val)}")
        return out
    values = dict(ours)
    if spec.get("smoke_applied"):
        for key, val in (spec.get("smoke") or {}).items():
            for k in [key] + [f"{g}.{key}" for g in ("synth", "distill", "optim")]:
                if k in values:
                    values[k] = val
    return [f"{key}={_yaml_value(val)}" for key, val in values.items()]


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"  # str(None) would be the string 'None'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return str(v)


def cell_dir(out: str, method: str, side: str, seed: int, smoke: bool) -> str:
    return (
        os.path.join(out, "_smoke", method, f"{side}-s{seed}")
        if smoke
        else os.path.join(out, method, f"{side}-s{seed}")
    )


def cell_done(
    d: str, budget: Dict[str, Any], teacher_sha: str, commit: Optional[str] = None, fingerprint: Any = None
) -> bool:
    """A finished cell: record.json with the same budget and teacher, and

    * theirs: the same reference work-tree ``commit``;
    * ours: the run the current overrides resolve to (datafree/identity.py: resolved config + teacher sha256 +
      dataset + CPU threads), as the cell's ``run/fingerprint.json`` holds it (and the record's copy, where it has
      one). ``fingerprint`` is :func:`our_identity`'s answer (the engine's own judgement of the run dir, which
      also recognises a record made before the thread count entered the identity) or a bare fingerprint,
      compared as it is. Our git HEAD (``commit`` in our records) is information only: a commit that does not
      change what the run computes keeps it.
    """
    p = os.path.join(d, "record.json")
    if not os.path.isfile(p):
        return False
    try:
        with open(p) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return False
    if rec.get("budget") != budget or rec.get("teacher_sha256") != teacher_sha:
        return False
    if rec.get("side") == "theirs":
        return commit is not None and rec.get("reference_commit") == commit
    stored = run_fingerprint(os.path.join(d, "run"))
    if fingerprint is None or stored is None or rec.get("fingerprint", stored) != stored:  # records made before
        return False  # the field (keyed on our HEAD) have none: their run dir's fingerprint.json decides
    if isinstance(fingerprint, dict):
        return bool(fingerprint.get("matches"))
    return stored == fingerprint


def run_fingerprint(run_dir: str) -> Optional[str]:
    """The fingerprint ``datafree distill`` wrote into ``run_dir/fingerprint.json`` (None: none there)."""
    try:
        with open(os.path.join(run_dir, "fingerprint.json")) as f:
            return str(json.load(f)["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# what `datafree distill` computes before it runs (datafree/cli.py cmd_distill, datafree/engine.py): the resolved
# config of the same argv and its identity, with the teacher file the engine would use; nothing is written
_FINGERPRINT_CODE = """
import json, sys
from datafree import identity
from datafree.cli import _user_config, build_parser
from datafree.engine import check_run
from datafree.methods import resolve
from datafree.registry import load_plugins
from datafree.rundir import RunFolder
args = build_parser().parse_args(sys.argv[1:])
user = _user_config(args)
load_plugins(user.get("plugins", []))
cfg = check_run(resolve(user))
ident = identity.run_identity(cfg, identity.teacher_path(cfg))
print(json.dumps({"fingerprint": ident.fingerprint, "matches": RunFolder(cfg.out).matches(ident)}))
"""


def ours_env() -> Dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )


def ours_argv(method: str, seed: int, spec: Dict[str, Any], teacher: str, run_dir: str) -> List[str]:
    """``datafree distill`` arguments of our side of a cell."""
    return [
        "distill",
        "--method",
        method,
        "--dataset",
        "mnist",
        "--teacher",
        teacher,
        "--student",
        spec["budget"].get("student", spec.get("student", "lenet5_half")),
        "--seed",
        str(seed),
        "--device",
        "cpu",
        "--out",
        run_dir,
        "--overwrite",
        "threads=1",
        "progress=false",
        "samples=0",
        *our_overrides(spec),
    ]


def our_identity(method: str, seed: int, spec: Dict[str, Any], teacher: str, d: str) -> Dict[str, Any]:
    """``{"fingerprint", "matches"}``: the fingerprint our run of this cell will have, and whether the cell's run
    dir holds that run (datafree.rundir.RunFolder.matches), computed without running it (a short subprocess)."""
    argv = ours_argv(method, seed, spec, teacher, os.path.join(d, "run"))
    res = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT_CODE, *argv], cwd=REPO, env=ours_env(), capture_output=True, text=True
    )
    if res.returncode != 0:
        raise SystemExit(f"error: resolving our config for {method} s{seed} failed:\n{res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def our_fingerprint(method: str, seed: int, spec: Dict[str, Any], teacher: str, d: str) -> str:
    """The fingerprint our run of this cell will have (:func:`our_identity`)."""
    return our_identity(method, seed, spec, teacher, d)["fingerprint"]


# --------------------------------------------------------------------------- ours: metrics.jsonl -> record


def convert_ours(metrics: List[Dict[str, Any]], method: str, seed: int, budget: Dict[str, Any]) -> Dict[str, Any]:
    """record.json fields and curves from our run's metrics.jsonl lines (one per evaluated epoch).

    epoch_seconds: synthesis + distill phase seconds per epoch, from the cumulative ``phase_seconds``: no
    evaluation and no checkpoint write (the ``other`` phase), as the reference side times only its
    ``synthesize()`` and ``train()``; older runs without it fall back on differences of ``seconds`` (with both).
    """
    epoch_seconds, prev, prev_total, curves = [], None, 0.0, []
    for m in metrics:
        ph = m.get("phase_seconds")
        if ph is not None:
            work = sum(v for k, v in ph.items() if k not in ("eval", "other"))
            epoch_seconds.append(work - (prev if prev is not None else 0.0))
            prev = work
        else:
            epoch_seconds.append(m["seconds"] - prev_total)
        prev_total = m.get("seconds", prev_total)
        c = {"epoch": m["epoch"], "step": m.get("step")}
        c.update({k: v for k, v in (m.get("synth") or {}).items()})
        curves.append(c)
    accs = [m["acc"] for m in metrics]
    return {
        "method": method,
        "side": "ours",
        "seed": seed,
        "acc_last": accs[-1] if accs else None,
        "acc_best": max(accs) if accs else None,
        "epochs": metrics[-1]["epoch"] if metrics else 0,
        "epoch_seconds": [round(x, 4) for x in epoch_seconds],
        "eval_acc": accs,
        "budget": budget,
        "epoch_seconds_source": "phase_seconds (synthesis + distill)"
        if metrics and "phase_seconds" in metrics[0]
        else "seconds (with eval)",
        "curves": curves,
    }


def run_ours(method: str, seed: int, spec: Dict[str, Any], teacher: str, d: str, smoke: bool) -> int:
    run_dir = os.path.join(d, "run")
    env = ours_env()
    cmd = [sys.executable, "-m", "datafree.cli", *ours_argv(method, seed, spec, teacher, run_dir)]
    os.makedirs(d, exist_ok=True)
    if os.path.isfile(os.path.join(d, "record.json")):  # the record of another run: not this one's if it fails
        os.remove(os.path.join(d, "record.json"))
    t0 = time.perf_counter()
    with open(os.path.join(d, "ours.log"), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"ours {method} s{seed}: exit {rc}, see {os.path.join(d, 'ours.log')}", file=sys.stderr)
        return rc
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(l) for l in f if l.strip()]
    rec = convert_ours(metrics, method, seed, spec["budget"])
    curves = rec.pop("curves")
    import torch  # only for the thread count the run used (1)

    rec.update(
        {
            "smoke": smoke,
            "teacher": teacher,
            "teacher_sha256": sha256(teacher),
            "fingerprint": run_fingerprint(run_dir),
            "commit": git_head(REPO),
            "repo": "datafree (this repository)",
            "threads": 1,
            "omp_num_threads": env["OMP_NUM_THREADS"],
            "machine": machine(),
            "torch": torch.__version__,
            "wall_seconds": round(wall, 2),
            "overrides": our_overrides(spec),
            "curves_granularity": "epoch means (metrics.jsonl 'synth')",
        }
    )
    atomic_write(os.path.join(d, "curves.jsonl"), "".join(json.dumps(c) + "\n" for c in curves))
    atomic_write(os.path.join(d, "record.json"), json.dumps(rec, indent=1))
    es = rec["epoch_seconds"]
    print(
        f"ours {method} s{seed}: acc {rec['acc_last']} (best {rec['acc_best']}), "
        f"{statistics.mean(es) if es else float('nan'):.2f} s/epoch -> {d}",
        file=sys.stderr,
    )
    return 0


def run_theirs(method: str, seed: int, spec: Dict[str, Any], teacher: str, d: str, worktree: str, smoke: bool) -> int:
    adapter = os.path.join(ADAPTERS, spec["adapter"] + ".py")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONPATH", None)  # the adapter must not see our package first
    data_root = os.environ.get("DATAFREE_DATA", os.path.join(REPO, "data"))
    cmd = [
        sys.executable,
        adapter,
        "--method",
        method,
        "--seed",
        str(seed),
        "--budget",
        spec["path"],
        "--teacher",
        teacher,
        "--data-root",
        data_root,
        "--worktree",
        worktree,
        "--out",
        d,
    ]
    if smoke:
        cmd.append("--smoke")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "theirs.log"), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"theirs {method} s{seed}: exit {rc}, see {os.path.join(d, 'theirs.log')}", file=sys.stderr)
    else:
        with open(os.path.join(d, "record.json")) as f:
            rec = json.load(f)
        es = rec["epoch_seconds"]
        print(
            f"theirs {method} s{seed}: acc {rec['acc_last']} (best {rec['acc_best']}), "
            f"{statistics.mean(es) if es else float('nan'):.2f} s/epoch -> {d}",
            file=sys.stderr,
        )
    return rc


def worktree_for(spec: Dict[str, Any], given: Optional[str]) -> str:
    return os.path.abspath(given or DEFAULT_WORKTREES.get(spec["adapter"], ""))


def cmd_run(a) -> int:
    spec = load_budget(a.method, a.smoke)
    teacher = os.path.abspath(a.teacher)
    tsha = sha256(teacher)
    d = cell_dir(a.out, a.method, a.side, a.seed, a.smoke)
    commit = fingerprint = None
    if a.side == "ours":
        if not a.force:
            fingerprint = our_identity(a.method, a.seed, spec, teacher, d)
    else:
        wt = worktree_for(spec, a.worktree)
        if not os.path.isdir(wt):
            raise SystemExit(f"error: no reference work tree at {wt}; see benchmarks/parity/README.md")
        commit = git_head(wt)
    if not a.force and cell_done(d, spec["budget"], tsha, commit=commit, fingerprint=fingerprint):
        print(f"skip {a.method} {a.side} s{a.seed}: {d}/record.json is up to date", file=sys.stderr)
        return 0
    started = utc_now()
    if a.side == "ours":
        rc = run_ours(a.method, a.seed, spec, teacher, d, a.smoke)
    else:
        rc = run_theirs(a.method, a.seed, spec, teacher, d, worktree_for(spec, a.worktree), a.smoke)
    if rc == 0:  # when it ran, so the table can tell which cells ran side by side (under one load)
        path = os.path.join(d, "record.json")
        with open(path) as f:
            rec = json.load(f)
        rec.update({"started_at": started, "finished_at": utc_now()})
        atomic_write(path, json.dumps(rec, indent=1))
    return rc


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def ran_together(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> Optional[bool]:
    """Whether two records' runs overlapped in time (None: a record without its times, older than them)."""
    if not a or not b or not all(r.get("started_at") and r.get("finished_at") for r in (a, b)):
        return None
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def cmd_all(a) -> int:
    methods = a.methods.split(",") if a.methods else methods_available()
    seeds = [int(s) for s in a.seeds.split(",")]
    sides = a.sides.split(",")
    cells = [(m, side, s) for m in methods for s in seeds for side in sides]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running: List[subprocess.Popen] = []
    failed = 0
    for m, side, s in cells:
        while len(running) >= a.jobs:
            for p in list(running):
                if p.poll() is not None:
                    failed += p.returncode != 0
                    running.remove(p)
            time.sleep(1)
        cmd = (
            [
                sys.executable,
                os.path.abspath(__file__),
                "run",
                "--method",
                m,
                "--side",
                side,
                "--seed",
                str(s),
                "--out",
                a.out,
                "--teacher",
                a.teacher,
            ]
            + (["--smoke"] if a.smoke else [])
            + (["--worktree", a.worktree] if a.worktree else [])
        )
        running.append(subprocess.Popen(cmd, env=env))
    for p in running:
        failed += p.wait() != 0
    print(f"{len(cells)} cells, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- table


def _mean_std(xs: List[float]):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None, 0
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def collect(root: str) -> Dict[str, Dict[str, List[Dict[str, Any]]]]:
    """{method: {side: [record, ...]}} from <root>/<method>/<side>-s<seed>/record.json."""
    out: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    if not os.path.isdir(root):
        return out
    for m in sorted(os.listdir(root)):
        md = os.path.join(root, m)
        if m.startswith("_") or not os.path.isdir(md):
            continue
        for cell in sorted(os.listdir(md)):
            p = os.path.join(md, cell, "record.json")
            if os.path.isfile(p):
                with open(p) as f:
                    rec = json.load(f)
                rec["_dir"] = os.path.join(md, cell)
                out.setdefault(rec["method"], {}).setdefault(rec["side"], []).append(rec)
    return out


#: the seeds each side needs before a row is PASS or FAIL (the issue's 3)
SEEDS_FOR_VERDICT = 3


def verdict(o_acc, o_n, t_acc, t_std, t_n, speedup) -> str:
    if not o_n or not t_n:
        return "incomplete"
    acc_ok = o_acc >= t_acc - t_std
    speed_ok = speedup is not None and speedup >= TARGET_SPEEDUP
    parts = [
        "acc ok" if acc_ok else "acc BELOW theirs - 1 std",
        "speed ok" if speed_ok else f"speed-up < {TARGET_SPEEDUP:g}x",
    ]
    if min(o_n, t_n) < SEEDS_FOR_VERDICT:  # one seed has no std: the accuracy target cannot be judged yet
        return f"provisional ({min(o_n, t_n)} of {SEEDS_FOR_VERDICT} seeds): " + ", ".join(parts)
    return ("PASS: " if acc_ok and speed_ok else "FAIL: ") + ", ".join(parts)


def seconds_per_epoch(rec: Dict[str, Any]) -> Optional[float]:
    """A record's synthesis + KD seconds over its epochs: the total over the epochs run, since ours logs no line
    for Fast's warm-up epoch and its first entry then holds two."""
    if not rec.get("epoch_seconds"):
        return None
    return sum(rec["epoch_seconds"]) / max(1, rec.get("epochs") or len(rec["epoch_seconds"]))


def paired_speedups(by_seed: Dict[str, Dict[int, Dict[str, Any]]]) -> Dict[int, float]:
    """{seed: theirs / ours s/epoch} over the seeds both sides ran ({side: {seed: record}}). A seed's two cells
    ran side by side under one load, so their ratio is steadier than the ratio of means when the load differs
    between sessions."""
    secs = {side: {seed: seconds_per_epoch(r) for seed, r in by_seed[side].items()} for side in SIDES}
    return {
        s: secs["theirs"][s] / secs["ours"][s]
        for s in sorted(set(secs["ours"]) & set(secs["theirs"]))
        if secs["ours"][s] and secs["theirs"][s]
    }


def read_curves(d: str) -> List[Dict[str, Any]]:
    p = os.path.join(d, "curves.jsonl")
    if not os.path.isfile(p):
        return []
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def plot_curves(method: str, sides: Dict[str, List[Dict[str, Any]]], path: str) -> Optional[str]:
    """Seed 0's synthesis loss terms, ours vs theirs, one panel per term (epoch means)."""
    recs = {side: next((r for r in rs if r["seed"] == 0), None) for side, rs in sides.items()}
    curves = {side: read_curves(r["_dir"]) for side, r in recs.items() if r}
    if not curves:
        return None
    terms = sorted({k for cs in curves.values() for c in cs for k in c if k not in ("epoch", "step")})
    if not terms:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(terms)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for i, t in enumerate(terms):
        ax = axes[i // cols][i % cols]
        for side, style in (("ours", "-"), ("theirs", "--")):
            pts = [(c["epoch"], c[t]) for c in curves.get(side, []) if t in c and c[t] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=side)
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{method}: synthesis loss terms, seed 0 (epoch means, unweighted)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def render_table(root: str, plots: bool = True) -> str:
    data = collect(root)
    lines = [
        "# Parity with the reference code",
        "",
        "Generated by `benchmarks/parity/parity.py table`; see benchmarks/parity/README.md for what runs.",
        "Accuracy: last-epoch top-1 on the MNIST test split, mean ± std over seeds (n). "
        "s/epoch: a run's synthesis + KD seconds over its epochs (evaluation and checkpoint writes excluded), "
        "mean ± std over seeds; one torch thread a cell, the other core running another cell. "
        "Speed-up: theirs / ours s/epoch of the same seed, mean over the seeds both sides ran [min-max] "
        "(`parity.py all` runs a seed's two cells side by side, under one load; the load moved from session to "
        "session; 'ran' in the per-seed table: side by side, apart, or ? for records older than their start and "
        "end times). "
        f"Targets: ours >= theirs - 1 std, speed-up >= {TARGET_SPEEDUP:g}x.",
        "",
        "| method | ours acc mean±std (n) | theirs acc mean±std (n) | ours s/epoch | theirs s/epoch | speed-up "
        "| verdict |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    per_seed = [
        "",
        "## Per seed",
        "",
        "| method | seed | ours acc | theirs acc | ours s/epoch | theirs s/epoch | speed-up | ran |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    commits, machines, pngs = {}, {}, []
    for m, sides in sorted(data.items()):
        row = [m]
        stats = {}
        for side in SIDES:
            rs = sides.get(side, [])
            acc, std, n = _mean_std([r.get("acc_last") for r in rs])
            secs, sec_std, _ = _mean_std([seconds_per_epoch(r) for r in rs])
            stats[side] = (acc, std, n, secs, sec_std)
            for r in rs:
                key = r.get("reference_repo", "ours") if side == "theirs" else "ours (this repository)"
                commits.setdefault(key, set()).add(r.get("reference_commit") or r.get("commit") or "?")
                mc = r.get("machine") or {}
                machines.setdefault(json.dumps(mc, sort_keys=True), mc)
        for side in SIDES:
            acc, std, n = stats[side][:3]
            row.append(f"{acc:.2f} ± {std:.2f} ({n})" if n else "–")
        for side in SIDES:
            sec, sec_std = stats[side][3:]
            row.append(f"{sec:.2f} ± {sec_std:.2f}" if sec is not None else "–")
        by_seed = {side: {r["seed"]: r for r in sides.get(side, [])} for side in SIDES}
        ratios = paired_speedups(by_seed)
        speed = statistics.mean(ratios.values()) if ratios else None
        row.append(
            f"{speed:.2f}x [{min(ratios.values()):.2f}-{max(ratios.values()):.2f}]"
            if len(ratios) > 1
            else f"{speed:.2f}x"
            if speed
            else "–"
        )
        for seed in sorted(set(by_seed["ours"]) | set(by_seed["theirs"])):
            cells = [by_seed[side].get(seed) for side in SIDES]
            accs = [f"{c['acc_last']:.2f}" if c and c.get("acc_last") is not None else "–" for c in cells]
            secs = [seconds_per_epoch(c) if c else None for c in cells]
            secs = [f"{x:.2f}" if x is not None else "–" for x in secs]
            ratio = f"{ratios[seed]:.2f}x" if seed in ratios else "–"
            together = ran_together(*cells)
            ran = "side by side" if together else "apart" if together is False else "?"
            per_seed.append(f"| {m} | {seed} | " + " | ".join(accs + secs + [ratio, ran]) + " |")
        row.append(
            verdict(
                stats["ours"][0], stats["ours"][2], stats["theirs"][0], stats["theirs"][1], stats["theirs"][2], speed
            )
        )
        lines.append("| " + " | ".join(row) + " |")
        if plots:
            png = plot_curves(m, sides, os.path.join(root, f"{m}_curves.png"))
            if png:
                pngs.append((m, os.path.basename(png)))
    if len(per_seed) > 5:
        lines += per_seed
    if pngs:
        lines += ["", "## Synthesis loss terms, seed 0", ""] + [f"![{m}]({png})" for m, png in pngs]
    lines += ["", "## Commits", ""] + [f"- {k}: {', '.join(sorted(v))}" for k, v in sorted(commits.items())]
    me = machine()
    lines += [
        "",
        "## Machine",
        "",
        f"- this table rendered on: {me['cpu']}, {me['cores']} cores, {me['threads']} threads",
    ]
    for line in dict.fromkeys(
        f"- records from: {mc.get('cpu', '?')}, cpu_count {mc.get('threads', mc.get('cpu_count'))}"
        for mc in machines.values()
    ):
        lines.append(line)
    return "\n".join(lines) + "\n"


def cmd_table(a) -> int:
    root = os.path.join(a.out, "_smoke") if a.smoke else a.out
    text = render_table(root, plots=not a.no_plots)
    atomic_write(os.path.join(root, "README.md"), text)
    print(text)
    return 0


def cmd_refresh(a) -> int:
    """Recompute the derived fields (epoch_seconds, accuracies, curves) of finished ours records from their
    run's metrics.jsonl, after a change of how they are derived; the runs themselves are not touched."""
    root = os.path.join(a.out, "_smoke") if a.smoke else a.out
    for rec_path in sorted(glob.glob(os.path.join(root, "*", "ours-s*", "record.json"))):
        d = os.path.dirname(rec_path)
        metrics_path = os.path.join(d, "run", "metrics.jsonl")
        if not os.path.isfile(metrics_path):
            continue
        with open(rec_path) as f:
            rec = json.load(f)
        with open(metrics_path) as f:
            metrics = [json.loads(l) for l in f if l.strip()]
        fresh = convert_ours(metrics, rec["method"], rec["seed"], rec["budget"])
        curves = fresh.pop("curves")
        rec.update(fresh)
        atomic_write(os.path.join(d, "curves.jsonl"), "".join(json.dumps(c) + "\n" for c in curves))
        atomic_write(rec_path, json.dumps(rec, indent=1))
        print(f"refreshed {os.path.relpath(rec_path)}", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    default_out = os.path.join(REPO, "results", "parity")

    r = sub.add_parser("run", help="one cell")
    r.add_argument("--method", required=True)
    r.add_argument("--side", required=True, choices=SIDES)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--out", default=default_out)
    r.add_argument("--worktree", help="the reference work tree (default: /tmp/ref/<repo>)")
    r.add_argument("--teacher", default=DEFAULT_TEACHER)
    r.add_argument("--smoke", action="store_true")
    r.add_argument("--force", action="store_true", help="rerun even when record.json is up to date")

    al = sub.add_parser("all", help="every method x side x seed, --jobs at a time")
    al.add_argument("--jobs", type=int, default=2)
    al.add_argument("--methods", help="comma-separated (default: every budgets/*.yaml)")
    al.add_argument("--seeds", default="0,1,2")
    al.add_argument("--sides", default="ours,theirs")
    al.add_argument("--out", default=default_out)
    al.add_argument("--worktree")
    al.add_argument("--teacher", default=DEFAULT_TEACHER)
    al.add_argument("--smoke", action="store_true")

    t = sub.add_parser("table", help="results/parity/README.md and the curve plots")
    t.add_argument("--out", default=default_out)
    t.add_argument("--smoke", action="store_true", help="the _smoke records")
    t.add_argument("--no-plots", action="store_true")
    f = sub.add_parser("refresh", help="recompute ours records' derived fields from their runs' metrics.jsonl")
    f.add_argument("--out", default=default_out)
    f.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    a.out = os.path.abspath(a.out)
    return {"run": cmd_run, "all": cmd_all, "table": cmd_table, "refresh": cmd_refresh}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
