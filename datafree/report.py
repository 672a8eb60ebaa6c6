"""Tables and figures built only from run records (summary.json, metrics.jsonl).

* :func:`accuracy_table`: methods as rows, teacher->student pairs as columns,
  mean +- std over seeds of the last (or best) accuracy;
* :func:`runs_table`: one row per run with best, last, mean and variance of
  accuracy over the evaluations, peak memory, hours and GPU-hours;
* :func:`plot_curves`: accuracy per evaluation for each method;
* :func:`save_sample_grid`: the synthetic images of an evaluation, labelled.
"""
from __future__ import annotations

import datetime
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

#: the papers' row order; methods not listed follow alphabetically
METHOD_ORDER = [
    "teacher", "scratch", "kd_real", "collected_kd", "dafl", "zskt", "dfad", "deepinv", "dfq", "cmi", "mbdfkd",
    "predfkd", "cudfkd", "fast1", "fast2", "fast5", "fast10", "fast", "hidfd",
]


def order_methods(names: Iterable[str]) -> List[str]:
    names = list(dict.fromkeys(names))
    known = [m for m in METHOD_ORDER if m in names]
    return known + sorted(n for n in names if n not in METHOD_ORDER)


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]], align: Optional[str] = None) -> str:
    """A GitHub markdown table. ``align``: one char per column, l or r."""
    align = align or "l" + "r" * (len(header) - 1)
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def fmt_mean_std(values: Sequence[float], digits: int = 2) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _num(v, digits=2, scale=1.0):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * scale:.{digits}f}"


def method_label(method: str, real: str) -> str:
    return f"{method} †" if real else method


def accuracy_table(df, metric: str = "last_acc") -> str:
    """Markdown accuracy tables, one per dataset: methods as rows, pairs as columns."""
    if df is None or len(df) == 0:
        return "_no finished runs_"
    out = []
    for dataset in sorted(df["dataset"].unique()):
        d = df[df["dataset"] == dataset]
        pairs = sorted(d["pair"].unique(), key=lambda p: (("->" not in p), p))
        methods = order_methods(d["method"])
        rows = []
        teacher_row = ["teacher"]
        for p in pairs:
            t = d[(d["pair"] == p)]["teacher_acc"].dropna()
            teacher_row.append(_num(float(t.iloc[0])) if len(t) else "-")
        if any(c != "-" for c in teacher_row[1:]):
            rows.append(teacher_row)
        footnotes = {}
        for m in methods:
            dm = d[d["method"] == m]
            real = next((r for r in dm.get("uses_real_data", []) if isinstance(r, str) and r), "")
            if real:
                footnotes[m] = real
            row = [method_label(m, real)]
            for p in pairs:
                row.append(fmt_mean_std(list(dm[dm["pair"] == p][metric].astype(float))))
            rows.append(row)
        title = f"**{dataset}**: top-1 accuracy (%), {'last epoch' if metric == 'last_acc' else 'best epoch'}" \
                ", mean ± std over seeds where there are several"
        block = [title, "", markdown(["method"] + list(pairs), rows)]
        if footnotes:
            block += [""] + [f"† {m} uses real data: {r}" for m, r in footnotes.items()]
        out.append("\n".join(block))
    return "\n\n".join(out)


def runs_table(df) -> str:
    """One row per run: accuracy statistics and resources."""
    if df is None or len(df) == 0:
        return "_no finished runs_"
    d = df.copy()
    d["_order"] = d["method"].map({m: i for i, m in enumerate(order_methods(d["method"]))})
    d = d.sort_values(["dataset", "pair", "_order", "seed"])
    rows = []
    for _, r in d.iterrows():
        rows.append([
            r["dataset"], method_label(r["method"], r.get("uses_real_data") or ""), r["pair"], int(r["seed"]),
            _num(r["best_acc"]), _num(r["last_acc"]), _num(r["mean_acc"]), _num(r["var_acc"]),
            _num(r.get("peak_memory_mb"), 0), _num(r.get("total_seconds"), 0),
            _num(r.get("synthesis_seconds"), 0), _num(r.get("gpu_hours"), 3),
            f"{int(r.get('images_synthesized') or 0):,}",
        ])
    header = ["dataset", "method", "pair", "seed", "best", "last", "mean", "var", "peak mem (MB)", "wall (s)",
              "synthesis (s)", "GPU-h", "images synthesized"]
    return markdown(header, rows, "lllr" + "r" * 9)


def tables_markdown(df, title: str = "Results", note: str = "") -> str:
    machines = sorted(set(df["machine"])) if len(df) and "machine" in df else []
    lines = [f"# {title}", "",
             f"Generated by `datafree table` on {datetime.date.today().isoformat()} from {len(df)} run records."]
    if machines:
        lines.append("Measured on: " + "; ".join(machines) + ".")
    if note:
        lines += ["", note]
    lines += ["", "## Accuracy", "", accuracy_table(df), "",
              "## Per run", "",
              "best/last: accuracy at the best and the last evaluation; mean/var: over all evaluations of the run. "
              "Peak memory is CUDA max-allocated on GPU and the process's peak RSS on CPU; GPU-h is zero on CPU.",
              "", runs_table(df), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def plot_curves(run_dirs: Sequence[str], path: str, title: str = "") -> str:
    """Accuracy per evaluation, one line per run (labelled method pair seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import read_json, read_jsonl

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for d in run_dirs:
        m = read_jsonl(os.path.join(d, "metrics.jsonl"))
        if not m:
            continue
        s = read_json(os.path.join(d, "summary.json")) if os.path.isfile(os.path.join(d, "summary.json")) else {}
        label = f"{s.get('method', os.path.basename(d))} {s.get('pair', '')}".strip()
        ax.plot([r["epoch"] for r in m], [r["acc"] for r in m], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    from .results import _atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    _atomic_write_bytes(path, buf.getvalue())
    return path


def save_sample_grid(images, labels, path: str, ncol: int = 8, cell: int = 40) -> str:
    """A PNG grid of [0, 1] images, each captioned with its (teacher's) class."""
    import io

    import torch
    from PIL import Image, ImageDraw

    from .results import _atomic_write_bytes

    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    scale = max(1, cell // max(h, w))
    h2, w2 = h * scale, w * scale
    cap = 12
    nrow = int(math.ceil(n / ncol))
    canvas = Image.new("RGB", (ncol * (w2 + 2), nrow * (h2 + cap + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    up = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
    arr = (up.mul(255).round().byte())
    for i in range(n):
        r, q = divmod(i, ncol)
        a = arr[i]
        a = a.expand(3, -1, -1) if c == 1 else a[:3]
        tile = Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB")
        x0, y0 = q * (w2 + 2) + 1, r * (h2 + cap + 2) + 1
        canvas.paste(tile, (x0, y0))
        if labels is not None:
            draw.text((x0 + 1, y0 + h2), str(int(labels[i])), fill=(200, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    _atomic_write_bytes(path, buf.getvalue())
    return path
