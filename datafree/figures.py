"""Figures of run records: accuracy per evaluation, and last accuracy against hours (PNG bytes)."""

from __future__ import annotations

import io
import math
import os
from typing import Dict, List, Optional, Tuple

from .results import METRICS, SUMMARY, RecordError, read_curve, read_summary
from .tasks import metric_of


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(
    runs, skipped: Optional[List[Dict[str, str]]] = None, base: Optional[str] = None
) -> List[Tuple[str, List[Tuple[float, Optional[float]]]]]:
    """(label, points) per run that has evaluations.

    ``runs``: a frame from load_runs (its ``curve`` column holds the points, read already; rows in run-directory
    order) or run directories, whose metrics.jsonl are read here; one that cannot be read is left out and
    noted in ``skipped`` (path relative to ``base`` when given).
    """
    if hasattr(runs, "columns"):
        frame = runs.sort_values("run_dir") if "run_dir" in runs else runs.iloc[:0]
        items = [(r["run_dir"], r.to_dict()) for _, r in frame.iterrows()]
    else:
        items = []
        for d in runs:
            try:
                items.append((d, read_summary(os.path.join(d, SUMMARY))))
            except (OSError, RecordError):  # the label falls back to the folder's name
                items.append((d, {}))
    out = []
    for d, s in items:
        if "curve" in s:
            points = s["curve"]
        else:
            path = os.path.join(d, METRICS)
            try:
                points = read_curve(path, metric_of(s.get("task")))
            except (OSError, RecordError) as e:
                if skipped is not None:
                    why = f"cannot be read: {e.strerror or e}" if isinstance(e, OSError) else str(e)
                    skipped.append(
                        {
                            "path": os.path.relpath(path, base) if base else path,
                            "reason": f"{why}; its curve is left out",
                        }
                    )
                continue
        if not isinstance(points, list) or not points:
            continue
        label = f"{s.get('method') or os.path.basename(d)} {s.get('pair') or ''}".strip()
        if s.get("seed"):
            label += f" s{s['seed']}"
        out.append((label, points))
    return out


def curves_png(curves, title: str = "", axis: str = "test accuracy (%)") -> bytes:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab20").colors
    styles, markers = ("-", "--", ":"), ("o", "s", "^")
    for i, (label, points) in enumerate(curves):
        # past 20 series a colour comes back with another line style and marker, so every series stays its own
        k = i // len(colours)
        # a null accuracy (the engine's record of a non-finite one) is a gap in the line
        ax.plot(
            [e for e, _ in points],
            [math.nan if a is None else a for _, a in points],
            color=colours[i % len(colours)],
            linestyle=styles[k % len(styles)],
            marker=markers[k % len(markers)],
            ms=2.5,
            lw=1.2,
            label=label,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel(axis)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    return _png(fig)


def acc_vs_hours_png(
    d, methods: List[str], col: str, score: str = "last_acc", label: str = "test accuracy (%)"
) -> bytes:
    """The last score (``score``, e.g. ``last_acc``; ``label`` on the axis) against ``col`` (``gpu_hours``, or
    ``total_hours`` on a CPU), one point per row of ``d``, one colour per method in ``methods``' order."""
    import pandas as pd

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in methods:
        g = d[d["method"] == m]
        hours = pd.to_numeric(g[col], errors="coerce") if col in g else pd.Series(math.nan, index=g.index)
        ax.scatter(hours, pd.to_numeric(g[score], errors="coerce") if score in g else hours * math.nan, label=m, s=22)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("GPU-hours" if col == "gpu_hours" else "wall hours (CPU)")
    ax.set_ylabel(f"last {label}")
    ax.grid(alpha=0.3)
    if methods:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
