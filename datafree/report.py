"""Tables and figures built only from run records (summary.json, metrics.jsonl).

* :func:`accuracy_table`: the papers' layout, methods as rows and
  teacher->student pairs as columns, mean +- std over seeds, with the published
  value and our difference beside it when a reference file gives one;
* :func:`stability_table`: per method and pair, the mean and variance of
  accuracy over the evaluations, best and last accuracy, peak memory, hours;
* :func:`runs_table`: one row per run;
* :func:`write_tables`: all of them as markdown (README.md) and CSV, plus the figures;
* :func:`plot_curves`, :func:`plot_acc_vs_hours` (drawn by :mod:`datafree.figures`).

The columns of the stability and per-run tables are the run record's fields that declare one
(:func:`datafree.results.table_columns`), and the methods' row order is their entries' ``order``. Seeds are
averaged only within one configuration and teacher (a record's ``config_id``): runs of the same method and pair
with another config or teacher are rows of their own, labelled with what differs (:func:`separate_configs`).

A run's ``status`` (summary.json) is finished, diverged or collapsed. A diverged run has no accuracy: its
cells read ``diverged`` and it is left out of the mean of the other seeds, which then say how many diverged,
e.g. ``97.50 ± 0.71 (1/3 diverged)``. A collapsed run's accuracy is real (near chance) and is shown as
``10.09 (collapsed)``. Records :func:`~datafree.runs.load_runs` could not use (``df.attrs["skipped"]``: unreadable,
or contradicting their own files) are listed in the README's "Skipped records" section, and run folders without
a result (``df.attrs["unfinished"]``: failed, stopped, running, set aside) under "Runs without a result".

Each accuracy table says which teacher produced its cells (:func:`teacher_rows`, the "Teachers" list under
it: file, sha256 prefix, published or trained here with which recipe, measured accuracy), from the record's
``teacher_source`` (older records: ``teacher`` / ``teacher_path`` and ``teacher_sha256``, origin unknown). A
cell whose measured teacher accuracy is more than :data:`TEACHER_TOLERANCE` points from the published
teacher's (the reference's ``teacher`` row) carries :data:`TEACHER_MARK` and a footnote.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from .errors import ConfigError
from .figures import acc_vs_hours_png, curves, curves_png
from .methods import table_order
from .tasks import score_field, task_of_metric
from .names import origin as teacher_origin
from .results import Column, atomic_write_bytes, atomic_write_text, mean_fields, table_columns
from .runs import load_runs


def _base_name(n: str) -> str:
    """A row's method: ``hidfd`` for ``hidfd (rho0.1)`` (a variant) or ``dafl [optim.lr=0.05]`` (one of several
    configurations)."""
    return re.split(r" \(| \[", str(n), maxsplit=1)[0]


def order_methods(names: Iterable[str]) -> List[str]:
    """The papers' order (each method entry's ``order``, :func:`datafree.methods.table_order`); the teacher's
    row first, a variant ``name (tag)`` and a preset ``name:preset`` after their method."""
    names = list(dict.fromkeys(names))

    def key(n: str):
        base = _base_name(n)
        return (base != "teacher", table_order(base), n)

    return sorted(names, key=key)


def _md_cell(c: object) -> str:
    # a reason or a bad line quoted from a record may hold a pipe or a newline, which would break the table
    return "" if c is None else str(c).replace("|", "\\|").replace("\n", " ")


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]], align: Optional[str] = None) -> str:
    """A GitHub markdown table. ``align``: one char per column, l or r."""
    align = align or "l" + "r" * (len(header) - 1)
    cells = [[_md_cell(c) for c in header]] + [[_md_cell(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _clean(values: Iterable[Any]) -> List[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(f):
            out.append(f)
    return out


def fmt_mean_std(values: Sequence[float], digits: int = 2) -> str:
    vals = _clean(values)
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _num(v, digits=2, scale=1.0):
    vals = _clean([v])
    return f"{vals[0] * scale:.{digits}f}" if vals else "-"


#: a collected real set (HiDFD, collected_kd) says in its real-data note whether it is the teacher's own dataset
#: (:meth:`datafree.data.collected.Collected.describe`); its rows read ``hidfd † ID`` or ``hidfd † OOD``
COLLECTED_MARKS = (("; in-distribution", "ID"), ("; out-of-distribution", "OOD"))


def method_label(method: str, real: str) -> str:
    """``method``, ``method †`` for a method that uses real data, ``method † ID`` / ``method † OOD`` when that real
    data is a collected set from the teacher's own dataset (in-distribution) or from another source."""
    if not (isinstance(real, str) and real):
        return method
    mark = next((m for phrase, m in COLLECTED_MARKS if phrase in real), "")
    return f"{method} † {mark}" if mark else f"{method} †"


def _real_data(dm) -> str:
    if "uses_real_data" not in dm:
        return ""
    return next((r for r in dm["uses_real_data"] if isinstance(r, str) and r), "")


# --------------------------------------------------------------------------- run status

#: the columns the tables read; a frame built by hand, or from older records, may lack some
_COLUMNS = ("dataset", "method", "pair", "seed", "last_acc", "best_acc", "mean_acc", "var_acc")


def _frame(df):
    """``df`` with every column the tables read, a ``status`` in each row (finished where it has none), and runs
    of one method and pair under other configs or teachers relabelled apart (:func:`separate_configs`)."""
    missing = [c for c in _COLUMNS if c not in df]
    if missing or "status" not in df or df["status"].isna().any():
        d = df.copy()
        for c in missing:
            d[c] = None
        d["status"] = d["status"].fillna("finished") if "status" in d else "finished"
        df = d
    return separate_configs(df)


def metric_of_rows(d) -> str:
    """The score's key of a frame's rows (their ``metric``, from load_runs; ``acc`` for a frame built by hand)."""
    if "metric" in d:
        known = [m for m in d["metric"] if isinstance(m, str) and m]
        if known:
            return known[0]
    return "acc"


def metrics_by_dataset(df) -> Dict[str, str]:
    """The score's key of each dataset's rows (:func:`metric_of_rows`)."""
    return {d: metric_of_rows(df[df["dataset"] == d]) for d in df["dataset"].unique()}


def score_key(metric: str, which: str) -> str:
    """``last_acc`` -> ``last_miou`` for a frame scored by mIoU: the column of a statistic in the rows' metric."""
    return score_field(which.split("_")[0], metric)


#: how many differing keys a configuration's label names before it shortens to the rest's count
LABEL_KEYS = 2


def _config_label(fields: Optional[Dict[str, Any]], keys: List[str], cid: Optional[str]) -> str:
    if not fields or not keys:
        return f"config {str(cid)[:8]}" if cid else "config unknown"
    shown = [f"{k}={_label_value(fields.get(k))}" for k in keys[:LABEL_KEYS]]
    more = f", +{len(keys) - LABEL_KEYS} more" if len(keys) > LABEL_KEYS else ""
    return ", ".join(shown) + more


def _label_value(v: Any) -> str:
    if v is None:
        return "unset"
    text = str(v)
    return text[:8] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text  # a sha256


def separate_configs(df):
    """Within each (dataset, method, pair), runs of more than one configuration or teacher (``config_id``: the
    fingerprint without the seed) become rows of their own: ``dafl [optim.lr=0.002]`` and
    ``dafl [optim.lr=0.05]``, named by the keys whose values differ. Seeds are averaged only within one; a
    frame without ``config_id`` (built by hand) is returned as it is."""
    if "config_id" not in df or len(df) == 0:
        return df
    ids = df["config_id"].where(df["config_id"].notna(), None)
    relabel: Dict[Any, str] = {}
    for (_dataset, method, _pair), g in df.groupby(["dataset", "method", "pair"], dropna=False):
        configs = list(dict.fromkeys(ids[g.index]))
        if len(configs) < 2:
            continue
        fields = {c: next((f for f, i in zip(g["config_fields"], ids[g.index]) if i == c), None) for c in configs}
        keys = sorted({k for c in configs for k in (fields[c] or {})})
        differ = [k for k in keys if len({json_key(fields[c], k) for c in configs}) > 1 and k != "seed"]
        for idx, cid in zip(g.index, ids[g.index]):
            relabel[idx] = f"{method} [{_config_label(fields[cid], differ, cid)}]"
    if not relabel:
        return df
    d = df.copy()
    for idx, name in relabel.items():
        d.at[idx, "method"] = name
    d.attrs = dict(df.attrs)
    d.attrs["separated"] = sorted(set(relabel.values()))
    return d


def json_key(fields: Optional[Dict[str, Any]], key: str) -> str:
    return repr((fields or {}).get(key, "<unset>"))


def _counts(g) -> Dict[str, int]:
    status = list(g["status"])
    return {"runs": len(status), "diverged": status.count("diverged"), "collapsed": status.count("collapsed")}


def group_status(runs: int, diverged: int, collapsed: int) -> Optional[str]:
    """One word for the runs of a cell: finished, diverged, collapsed (all of them), or mixed; None for none."""
    if not runs:
        return None
    if diverged == runs:
        return "diverged"
    if collapsed == runs:
        return "collapsed"
    return "finished" if not diverged and not collapsed else "mixed"


def status_note(runs: int, diverged: int, collapsed: int) -> str:
    """What follows a cell's number: "" when every run finished, else e.g. " (collapsed)", " (1/3 diverged)"."""
    if not runs or (not diverged and not collapsed):
        return ""
    if collapsed == runs:
        return " (collapsed)"
    return " (" + ", ".join(f"{k}/{runs} {w}" for k, w in ((diverged, "diverged"), (collapsed, "collapsed")) if k) + ")"


def _acc_cell(text: str, runs: int, diverged: int, collapsed: int) -> str:
    # a diverged run's accuracy is never shown as a number: the word stands in the cell instead
    if runs and diverged == runs:
        return "diverged"
    return text + status_note(runs, diverged, collapsed)


def run_status_text(r) -> str:
    """A run's status for the per-run table, with where and why it diverged when the record says."""
    status = r.get("status") or "finished"
    info = r.get("diverged")
    if status != "diverged" or not isinstance(info, dict):
        return str(status)
    where = ", ".join(f"{k} {info[k]}" for k in ("epoch", "step") if info.get(k) is not None)
    return "diverged" + (f" at {where}" if where else "") + (f": {info['reason']}" if info.get("reason") else "")


# --------------------------------------------------------------------------- skipped records


def skipped_section(skipped: Sequence[Dict[str, str]]) -> str:
    """The README's "Skipped records" section ("" when there are none)."""
    if not skipped:
        return ""
    rows = [[f"`{s.get('path', '?')}`", s.get("reason", "")] for s in skipped]
    return "\n".join(
        [
            "## Skipped records",
            "",
            "These records could not be read or are incomplete, so the tables above leave them out (a run "
            "whose metrics.jsonl is bad keeps its row, from summary.json, but has no curve). Repair or "
            "delete them and run `datafree table` again.",
            "",
            markdown(["path", "reason"], rows, "ll"),
            "",
        ]
    )


def unfinished_section(unfinished: Sequence[Dict[str, str]]) -> str:
    """The README's "Runs without a result" section: failed cells, stopped or running runs, set-aside records."""
    rows = [[f"`{u.get('path', '?')}`", u.get("state", ""), u.get("detail", "")] for u in unfinished]
    return "\n".join(
        [
            "## Runs without a result",
            "",
            "These run folders hold no result the tables could use: a cell that failed, a run stopped before its end "
            "(killed, or still running), or a record set aside. None of them is in the tables above.",
            "",
            markdown(["path", "state", "detail"], rows, "lll"),
            "",
        ]
    )


def describe_skipped(skipped: Sequence[Dict[str, str]], limit: int = 3) -> str:
    """One line naming the skipped records, the first ``limit`` of them with why ("" when there are none)."""
    if not skipped:
        return ""
    shown = "; ".join(f"{s.get('path', '?')} ({s.get('reason', '')})" for s in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} record{'s' if len(skipped) != 1 else ''} skipped: {shown}{more}"


# --------------------------------------------------------------------------- references


def load_reference(path: Optional[str]) -> Dict[str, Any]:
    """Published numbers of a table (``benchmarks/reference/*.yaml``).

    Returns ``{"tables": {dataset: {kind: {method: {pair: value}}}}, "sources": {dataset: {kind: {method: text}}},
    "pairs": [...]}`` where kind is ``accuracy``, ``synthesis_hours`` or ``stability`` (whose values are dicts
    of mean_acc, var_acc, best_acc, peak_memory_gb, hours).
    """
    if not path:
        return {}
    if not os.path.isfile(path):
        raise ConfigError(f"reference file {path} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    names = raw.get("sources", {}) or {}
    tables: Dict[str, Any] = {}
    sources: Dict[str, Any] = {}
    for dataset, kinds in (raw.get("tables") or {}).items():
        for kind, rows in (kinds or {}).items():
            for method, row in (rows or {}).items():
                tables.setdefault(dataset, {}).setdefault(kind, {})[method] = dict(row.get("values", {}))
                src = row.get("source", "")
                sources.setdefault(dataset, {}).setdefault(kind, {})[method] = names.get(src, src)
    return {"tables": tables, "sources": sources, "pairs": raw.get("pairs", []) or []}


def _ref(reference: Optional[Dict[str, Any]], dataset: str, kind: str) -> Dict[str, Dict[str, Any]]:
    return ((reference or {}).get("tables", {}).get(dataset, {}) or {}).get(kind, {}) or {}


def _ref_sources(reference: Optional[Dict[str, Any]], dataset: str, kind: str) -> Dict[str, str]:
    return ((reference or {}).get("sources", {}).get(dataset, {}) or {}).get(kind, {}) or {}


# --------------------------------------------------------------------------- teachers

#: a cell is flagged when its measured teacher accuracy is more than this many points from the published teacher's
TEACHER_TOLERANCE = 0.5
#: the flag's marker (``†`` marks methods that use real data)
TEACHER_MARK = "‡"


def _text(v: Any) -> Optional[str]:
    return v if isinstance(v, str) and v else None


def teacher_source(r: Any) -> Optional[Dict[str, Any]]:
    """Which teacher a run record used: ``{kind, file, sha256, layout, recipe}``, or None for a run without one.

    From the record's ``teacher_source`` (kind ``published``: a reference repository's file, by its layout;
    ``trained``: a datafree checkpoint, with its recipe; ``pretrained``; ``unknown``). A record from before that
    field is ``unknown``, its file and sha256 taken from ``teacher_path`` (or ``teacher``) and ``teacher_sha256``.
    """
    get = r.get if hasattr(r, "get") else (lambda k, d=None: d)
    src = get("teacher_source")
    if isinstance(src, dict):
        recipe = src.get("recipe")
        if isinstance(recipe, dict):  # a checkpoint's recipe values, not only the name
            recipe = recipe.get("name") or "datafree"
        kind = _text(src.get("kind")) or "unknown"
        return {
            "kind": kind,
            "file": _text(src.get("file")) or _text(get("teacher")),
            "sha256": _text(src.get("sha256")) or _text(get("teacher_sha256")),
            "layout": _text(src.get("layout")),
            "recipe": _text(recipe) or ("datafree" if kind == "trained" else None),
        }
    sha = _text(get("teacher_sha256"))
    path = _text(get("teacher_path"))
    if not sha and not path and not _clean([get("teacher_acc")]):
        return None  # a method without a teacher (scratch), or a record that cannot say
    return {
        "kind": "unknown",
        "file": os.path.basename(path) if path else _text(get("teacher")),
        "sha256": sha,
        "layout": None,
        "recipe": None,
    }


def _rows_of(g) -> List[Dict[str, Any]]:
    return [r.to_dict() for _, r in g.iterrows()]


def teacher_off(measured: Optional[float], published: Optional[float]) -> bool:
    """True when a measured teacher accuracy is more than :data:`TEACHER_TOLERANCE` points from the published one."""
    if measured is None or published is None:
        return False
    return round(abs(float(measured) - float(published)), 6) > TEACHER_TOLERANCE  # 95.7 - 95.2 is 0.50000000000001


def _teacher_check(g, published: Optional[float]) -> Dict[str, Any]:
    """The teacher accuracies measured by the runs of one cell, and whether any is off the published one."""
    accs = sorted(set(round(a, 2) for a in _clean(g["teacher_acc"]))) if "teacher_acc" in g else []
    off = [a for a in accs if teacher_off(a, published)]
    return {
        "teacher_acc": float(np.mean(accs)) if accs else None,
        "teacher_published": published,
        "teacher_flag": bool(off),
        "teacher_off": off,
    }


def _score_words(df, dataset: Optional[str] = None) -> str:
    """The score of a frame's rows (of one dataset) in words: ``test accuracy``, ``test mIoU``."""
    d = _frame(df)
    if dataset is not None and "dataset" in d:
        d = d[d["dataset"] == dataset]
    return task_of_metric(metric_of_rows(d)).score_words


def teacher_rows(df, dataset: str, reference: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Per pair of ``dataset``, one record per teacher its runs used: file, sha256, kind, layout, recipe, the
    measured accuracy (the runs' ``teacher_acc``), the published teacher's, the flag, and which methods and how
    many runs it served."""
    df = _frame(df)
    d = df[df["dataset"] == dataset]
    published = _ref(reference, dataset, "accuracy").get("teacher", {})
    out = []
    for p in pair_order(df, dataset, reference):
        groups: Dict[Tuple, Dict[str, Any]] = {}
        for r in _rows_of(d[d["pair"] == p]):
            src = teacher_source(r)
            if src is None:
                continue
            key = (src.get("sha256") or src.get("file"), src.get("kind"), src.get("recipe"), src.get("layout"))
            e = groups.setdefault(key, {"source": src, "accs": [], "methods": [], "runs": 0})
            e["accs"] += _clean([r.get("teacher_acc")])
            e["methods"].append(str(r.get("method")))
            e["runs"] += 1
        for e in groups.values():
            accs = sorted(set(round(a, 2) for a in e["accs"]))
            pub = published.get(p)
            out.append(
                {
                    "dataset": dataset,
                    "pair": p,
                    **e["source"],
                    "measured": accs,
                    "published": pub,
                    "flag": any(teacher_off(a, pub) for a in accs),
                    "methods": order_methods(e["methods"]),
                    "runs": e["runs"],
                }
            )
    return out


def teachers_section(df, dataset: str, reference: Optional[Dict[str, Any]] = None) -> List[str]:
    """The "Teachers" list under a dataset's accuracy table (no lines when no run used a teacher)."""
    recs = teacher_rows(df, dataset, reference)
    if not recs:
        return []
    rows = []
    for t in recs:
        measured = ", ".join(f"{a:.2f}" for a in t["measured"]) or "-"
        rows.append(
            [
                t["pair"],
                f"`{t['file']}`" if t.get("file") else "?",
                f"`{t['sha256'][:12]}`" if t.get("sha256") else "-",
                teacher_origin(t),
                measured + (f" {TEACHER_MARK}" if t["flag"] else ""),
                "-" if t["published"] is None else f"{t['published']:.2f}",
                t["runs"],
            ]
        )
    return [
        "",
        f"Teachers of the {dataset} cells "
        f"(measured: the teacher's {_score_words(df, dataset)} as the runs measured it):",
        "",
        markdown(["pair", "teacher file", "sha256", "origin", "measured", "published", "runs"], rows, "lllllrr"),
    ]


# --------------------------------------------------------------------------- tables


def _pairs(d) -> List[str]:
    return sorted(d["pair"].unique(), key=lambda p: (("->" not in p), p))


def pair_order(df, dataset: str, reference: Optional[Dict[str, Any]] = None) -> List[str]:
    """The table's columns: the reference's pairs in its order, then any other pair we ran."""
    d = df[df["dataset"] == dataset]
    use_ref = _ref(reference, dataset, "accuracy")
    ref_pairs = {p for row in use_ref.values() for p in row}
    ordered = [p for p in (reference or {}).get("pairs", []) if p in ref_pairs or p in set(d["pair"])]
    return list(dict.fromkeys(ordered + _pairs(d)))


def accuracy_rows(df, metric: str = "last_acc", reference: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Long-format records: one per (dataset, method, pair) with ours and the published value.

    ``seeds`` counts the values in the mean (diverged runs are left out), ``runs`` all the runs, with
    ``status`` (see :func:`group_status`) and how many ``diverged`` and ``collapsed``.
    """
    df = _frame(df)
    out = []
    for dataset in sorted(df["dataset"].unique()):
        d = df[df["dataset"] == dataset]
        key = score_key(metric_of_rows(d), metric)  # last_acc, or last_miou for a segmentation dataset
        use_ref = _ref(reference, dataset, "accuracy")
        pairs = pair_order(df, dataset, reference)
        methods = order_methods(list(d["method"]) + list(use_ref))
        teacher_pub = use_ref.get("teacher", {})
        for m in methods:
            dm = d[d["method"] == m]
            if m == "teacher":  # its row comes from the run records, below
                continue
            for p in pairs:
                g = dm[dm["pair"] == p]
                c = _counts(g)
                vals = _clean(g[g["status"] != "diverged"][key]) if key in g else []
                pub = use_ref.get(m, {}).get(p)
                if not vals and not c["diverged"] and pub is None:
                    continue
                mean = float(np.mean(vals)) if vals else None
                out.append(
                    {
                        "dataset": dataset,
                        "method": m,
                        "pair": p,
                        "status": group_status(**c),
                        "seeds": len(vals),
                        **c,
                        "mean": mean,
                        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                        "published": pub,
                        "delta": (mean - pub) if (mean is not None and pub is not None) else None,
                        "real_data": _real_data(dm),
                        **_teacher_check(g, teacher_pub.get(p)),
                    }
                )
        # the teacher row comes from the run records
        for p in pairs:
            t = _clean(d[d["pair"] == p]["teacher_acc"]) if "teacher_acc" in d else []
            pub = use_ref.get("teacher", {}).get(p)
            if t or pub is not None:
                out.append(
                    {
                        "dataset": dataset,
                        "method": "teacher",
                        "pair": p,
                        "status": "finished" if t else None,
                        "seeds": 1 if t else 0,
                        "runs": 1 if t else 0,
                        "diverged": 0,
                        "collapsed": 0,
                        "mean": t[0] if t else None,
                        "std": None,
                        "published": pub,
                        "delta": (t[0] - pub) if (t and pub is not None) else None,
                        "real_data": "",
                        **_teacher_check(d[d["pair"] == p], pub),
                    }
                )
    return out


def accuracy_table(df, metric: str = "last_acc", reference: Optional[Dict[str, Any]] = None) -> str:
    """Markdown accuracy tables, one per dataset, in the papers' layout."""
    if df is None or len(df) == 0:
        return "_no finished runs_"
    df = _frame(df)
    recs = accuracy_rows(df, metric, reference)
    blocks = []
    for dataset in sorted({r["dataset"] for r in recs}):
        rs = [r for r in recs if r["dataset"] == dataset]
        pairs = [p for p in pair_order(df, dataset, reference) if any(r["pair"] == p for r in rs)]
        rows, notes = [], {}
        for m in order_methods(r["method"] for r in rs):
            real = next((r["real_data"] for r in rs if r["method"] == m and r["real_data"]), "")
            if real:
                notes[m] = real
            row = [method_label(m, real)]
            for p in pairs:
                r = next((r for r in rs if r["method"] == m and r["pair"] == p), None)
                row.append(_cell(r))
            rows.append(row)
        what = "last evaluation" if metric.startswith("last") else "best evaluation"
        label = task_of_metric(metric_of_rows(df[df["dataset"] == dataset])).label
        lines = [f"**{dataset}**: {label} at the {what}; mean ± std over seeds where there are several."]
        if any(r["published"] is not None for r in rs):
            lines[0] += " Cells read `ours · published (ours − published)`; `-` where we have no run."
        if any(r["diverged"] for r in rs):
            lines[0] += (
                " `diverged`: the run's loss became non-finite, so it has no accuracy; a diverged seed is left"
                " out of the mean of the others."
            )
        if any(r["collapsed"] for r in rs):
            lines[0] += " `(collapsed)`: the student ended near chance accuracy."
        lines += ["", markdown(["method"] + pairs, rows)]
        if notes:
            lines += [""] + [f"† {m}: uses real data: {t}" for m, t in notes.items()]
        off = {}
        for r in rs:
            if r.get("teacher_flag"):
                off.setdefault(r["pair"], (set(), r["teacher_published"]))[0].update(r["teacher_off"])
        if off:
            lines += [""] + [
                f"{TEACHER_MARK} {p}: teacher {', '.join(f'{a:.2f}%' for a in sorted(accs))} vs published {pub:.2f}%: "
                f"the teacher behind these cells measures more than {TEACHER_TOLERANCE:g} points from the published "
                "teacher's accuracy, so they are not comparable with the published cells as they stand"
                for p, (accs, pub) in off.items()
            ]
        used = sorted({r["method"] for r in rs if r["published"] is not None})
        sources = _ref_sources(reference, dataset, "accuracy")
        if used and sources:
            by_source: Dict[str, List[str]] = {}
            for m in used:
                if sources.get(m):
                    by_source.setdefault(sources[m], []).append(m)
            lines += [
                "",
                "Published numbers: " + "; ".join(f"{src} ({', '.join(ms)})" for src, ms in by_source.items()) + ".",
            ]
        lines += teachers_section(df, dataset, reference)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(r: Optional[Dict[str, Any]]) -> str:
    if r is None:
        return ""
    ours = "-" if r["mean"] is None else (f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else ""))
    ours = _acc_cell(ours, r.get("runs", 0), r.get("diverged", 0), r.get("collapsed", 0))
    if r.get("teacher_flag"):
        ours += f" {TEACHER_MARK}"
    if r["published"] is None:
        return ours
    delta = "" if r["delta"] is None else f" ({r['delta']:+.2f})"
    return f"{ours} · {r['published']:.2f}{delta}"


def _hours_column(d) -> str:
    return (
        "gpu_hours"
        if "gpu_hours" in d and _clean(d["gpu_hours"]) and sum(_clean(d["gpu_hours"])) > 0
        else "total_hours"
    )


def _column(col: Column, key: str, gpu: bool) -> Tuple[str, str]:
    """``(record field, header)`` a column shows: an ``hours`` column shows wall hours when no run used a GPU."""
    if col.kind == "hours" and not gpu:
        return col.cpu_key or key, col.cpu_header or col.header
    return key, col.header


def _value(col: Column, v: Any, status: Tuple[int, int, int]) -> str:
    """A cell of a record column: an accuracy carries its runs' status note (or reads ``diverged``), a count its
    thousands separators."""
    if col.kind == "accuracy":
        return _acc_cell(_num(v, col.digits), *status)
    if col.kind == "count":
        vals = _clean([v])
        return f"{int(vals[0]) if vals else 0:,}"
    return _num(v, col.digits)


def stability_rows(df) -> List[Dict[str, Any]]:
    """Per (dataset, pair, method): the means over the seeds that did not diverge of every record field averaged
    into the tables (:func:`datafree.results.mean_fields`), ``seeds`` counting all of them."""
    df = _frame(df)
    out = []
    for (dataset, pair, method), g in df.groupby(["dataset", "pair", "method"]):
        c = _counts(g)
        # a diverged run stopped where it broke: its accuracy, memory and time are not comparable with the others
        ok = g[g["status"] != "diverged"]

        def mean(col, ok=ok):
            v = _clean(ok[col]) if col in ok else []
            return float(np.mean(v)) if v else None

        row = {
            "dataset": dataset,
            "pair": pair,
            "method": method,
            "status": group_status(**c),
            "seeds": len(g),
            "diverged": c["diverged"],
            "collapsed": c["collapsed"],
        }
        row.update({k: mean(k) for k in mean_fields()})
        m = metric_of_rows(g)
        if m != "acc":  # a segmenter's score: mean_miou, ... beside the classifier fields
            row.update({score_key(m, s): mean(score_key(m, s)) for s in ("mean", "var", "best", "last")})
        row["real_data"] = _real_data(g)
        out.append(row)
    order = {m: i for i, m in enumerate(order_methods(df["method"]))}
    return sorted(out, key=lambda r: (r["dataset"], r["pair"], order[r["method"]]))


def stability_table(df, reference: Optional[Dict[str, Any]] = None) -> str:
    """Mean and variance of accuracy over the evaluations, best, last, memory and time, per method and pair: the
    record fields that declare a ``stability`` column.

    With a reference that has a ``stability`` table (CuDFKD's), the published mean / var / best / memory /
    hours follow ours in the same row.
    """
    if df is None or len(df) == 0:
        return "_no finished runs_"
    df = _frame(df)
    gpu = _hours_column(df) == "gpu_hours"
    columns = [(col, *_column(col, key, gpu)) for key, col in table_columns("stability")]
    metrics = metrics_by_dataset(df)
    has_pub = any(_ref(reference, d, "stability") for d in df["dataset"].unique())
    rows = []
    for r in stability_rows(df):
        c = (r["seeds"], r["diverged"], r["collapsed"])
        row = [r["dataset"], r["pair"], method_label(r["method"], r["real_data"]), r["seeds"]]
        row += [_value(col, r.get(col.key(key, metrics[r["dataset"]])), c) for col, key, _ in columns]
        if has_pub:
            pub = _ref(reference, r["dataset"], "stability").get(r["method"], {}).get(r["pair"], {})
            row += [
                _num(pub.get("mean_acc"), 1),
                _num(pub.get("var_acc")),
                _num(pub.get("best_acc"), 1),
                _num(pub.get("peak_memory_gb"), 2),
                _num(pub.get("hours"), 2),
            ]
        rows.append(row)
    header = ["dataset", "pair", "method", "seeds"] + [h for _, _, h in columns]
    if has_pub:
        header += ["pub. mean", "pub. var", "pub. best", "pub. mem (GB)", "pub. hours"]
    return markdown(header, rows, "lllr" + "r" * (len(header) - 4))


def speed_table(df, reference: Optional[Dict[str, Any]] = None) -> str:
    """Synthesis hours (GPU-hours on GPU) per method and pair beside the published ones (Fast-DFKD's table)."""
    rows = []
    metrics = metrics_by_dataset(df)
    for r in stability_rows(df):
        pub = _ref(reference, r["dataset"], "synthesis_hours").get(r["method"], {}).get(r["pair"])
        rows.append(
            [
                r["dataset"],
                r["pair"],
                r["method"],
                _acc_cell(
                    _num(r.get(score_key(metrics[r["dataset"]], "last"))), r["seeds"], r["diverged"], r["collapsed"]
                ),
                _num(r["synthesis_hours"], 3),
                _num(pub, 2),
            ]
        )
    return markdown(
        ["dataset", "pair", "method", "last acc", "synthesis h (ours)", "synthesis h (published)"], rows, "lllrrr"
    )


def runs_table(df) -> str:
    """One row per run: status, then the record fields that declare a ``runs`` column."""
    if df is None or len(df) == 0:
        return "_no finished runs_"
    d = _frame(df).copy()
    d["_order"] = d["method"].map({m: i for i, m in enumerate(order_methods(d["method"]))})
    d = d.sort_values(["dataset", "pair", "_order", "seed"])
    columns = [(col, key) for key, col in table_columns("runs")]
    rows = []
    for _, r in d.iterrows():
        c = (1, int(r["status"] == "diverged"), int(r["status"] == "collapsed"))
        row = [
            r["dataset"],
            method_label(r["method"], r.get("uses_real_data") or ""),
            r["pair"],
            int(r["seed"]),
            run_status_text(r),
        ]
        metric = r.get("metric") if isinstance(r.get("metric"), str) else "acc"
        rows.append(row + [_value(col, r.get(col.key(key, metric)), c) for col, key in columns])
    header = ["dataset", "method", "pair", "seed", "status"] + [col.header for col, _ in columns]
    return markdown(header, rows, "lllrl" + "r" * len(columns))


def tables_markdown(
    df,
    title: str = "Results",
    note: str = "",
    reference: Optional[Dict[str, Any]] = None,
    metric: str = "last_acc",
    skipped: Optional[Sequence[Dict[str, str]]] = None,
    figures: Sequence[str] = (),
) -> str:
    """The README: accuracy, stability (and synthesis time) and per-run tables, then ``figures`` (markdown
    lines) and the "Skipped records" section. ``skipped`` defaults to ``df.attrs["skipped"]`` (from load_runs)."""
    df = _frame(df)
    skipped = list(df.attrs.get("skipped", []) if skipped is None else skipped)
    machines = sorted({m for m in df["machine"] if isinstance(m, str)}) if len(df) and "machine" in df else []
    lines = [
        f"# {title}",
        "",
        f"Generated by `datafree table` on {datetime.date.today().isoformat()} from {len(df)} run records.",
    ]
    if skipped:
        lines[-1] += (
            f" {len(skipped)} record{'s' if len(skipped) != 1 else ''} could not be used: see "
            "[Skipped records](#skipped-records)."
        )
    unfinished = list(df.attrs.get("unfinished", []))
    if unfinished:
        lines[-1] += (
            f" {len(unfinished)} run folder{'s' if len(unfinished) != 1 else ''} hold no result: see "
            "[Runs without a result](#runs-without-a-result)."
        )
    if machines:
        lines.append("Measured on: " + "; ".join(machines) + ".")
    separated = df.attrs.get("separated", [])
    if separated:
        lines.append(
            "Runs of one method and pair under different configs or teachers are rows of their own, named by "
            "what differs (seeds are averaged within one config only): " + ", ".join(f"`{m}`" for m in separated) + "."
        )
    if note:
        lines += ["", note.strip()]
    lines += [
        "",
        "## Accuracy" if _score_words(df) == "test accuracy" else "## Scores",
        "",
        accuracy_table(df, metric, reference),
        "",
        "## Stability and resources",
        "",
        f"mean/var: mean and variance of {_score_words(df)} over all evaluations of a run (averaged over seeds); "
        "best/last: at the best and the last evaluation. Peak memory is CUDA max-allocated on GPU and the "
        "process's peak RSS on CPU. GPU-hours are wall hours x GPUs (CPU runs show wall hours instead).",
        "",
        stability_table(df, reference),
        "",
    ]
    if any(_ref(reference, d, "synthesis_hours") for d in df["dataset"].unique()):
        lines += [
            "## Synthesis time",
            "",
            "Synthesis hours are wall hours of the synthesis phase (GPU-synchronised on GPU); the published "
            "ones were measured on the authors' GPUs, ours on the machine named above.",
            "",
            speed_table(df, reference),
            "",
        ]
    lines += ["## Per run", "", runs_table(df), ""]
    text = "\n".join(lines)
    if figures:
        text += "".join(f"\n{f}\n" for f in figures)
    unfinished = list(df.attrs.get("unfinished", []))
    if unfinished:
        text += "\n" + unfinished_section(unfinished)
    if skipped:
        text += "\n" + skipped_section(skipped)
    return text


def write_tables(
    df,
    out_dir: str,
    title: str = "Results",
    reference: Optional[str] = None,
    note: str = "",
    metric: str = "last_acc",
    readme: Optional[str] = None,
) -> str:
    """README.md (markdown tables), accuracy.csv, stability.csv, curves.png and acc_vs_hours.png in ``out_dir``.

    The README lists the records that could not be used: ``df.attrs["skipped"]`` (as load_runs leaves it) and,
    for a frame without a ``curve`` column, any metrics.jsonl that cannot be read here. Every output is built
    in memory first and the files are written last, so a failure leaves the previous ones as they were.
    """
    import pandas as pd

    ref = load_reference(reference) if isinstance(reference, str) else (reference or {})
    df = _frame(df)
    skipped = list(df.attrs.get("skipped", []))
    acc_rows = [{k: v for k, v in r.items() if k != "teacher_off"} for r in accuracy_rows(df, metric, ref)]
    files = {
        os.path.join(out_dir, "accuracy.csv"): pd.DataFrame(acc_rows).to_csv(index=False),
        os.path.join(out_dir, "stability.csv"): pd.DataFrame(stability_rows(df)).to_csv(index=False),
    }
    figures: List[str] = []
    if "run_dir" in df and len(df):
        axis = task_of_metric(metric_of_rows(df)).axis
        files[os.path.join(out_dir, "curves.png")] = curves_png(curves(df, skipped, base=out_dir), title, axis)
        files[os.path.join(out_dir, "acc_vs_hours.png")] = _acc_vs_hours(df)
        figures = ["![accuracy per evaluation](curves.png)", "![accuracy against hours](acc_vs_hours.png)"]
    text = tables_markdown(df, title=title, note=note, reference=ref, metric=metric, skipped=skipped, figures=figures)
    files[readme or os.path.join(out_dir, "README.md")] = text
    os.makedirs(out_dir, exist_ok=True)
    for path, data in files.items():
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return text


# --------------------------------------------------------------------------- figures


def plot_curves(runs, path: str, title: str = "", skipped: Optional[List[Dict[str, str]]] = None) -> str:
    """Accuracy per evaluation, one line per run (labelled method pair seed): see :func:`datafree.figures.curves`."""
    atomic_write_bytes(path, curves_png(curves(runs, skipped), title))  # a classifier's axis: test accuracy
    return path


def _acc_vs_hours(df) -> bytes:
    d = _frame(df)
    d = d[d["status"] != "diverged"]  # a diverged run has no last score to place
    metric = metric_of_rows(d)
    methods = order_methods(m for m in d["method"] if isinstance(m, str))
    return acc_vs_hours_png(d, methods, _hours_column(d), score_key(metric, "last"), task_of_metric(metric).axis)


def plot_acc_vs_hours(df, path: str) -> str:
    """Last accuracy against GPU-hours (wall hours on CPU), one point per run that did not diverge."""
    atomic_write_bytes(path, _acc_vs_hours(df))
    return path


#: results folders with tables of their own making, linked from the index rather than tabulated from their runs
#: (results/parity: benchmarks/parity/parity.py's table of ours against the reference code)
LINKED_FOLDERS = {
    "parity": (
        "Parity with the reference code",
        "Each method run by our code and by its authors' code on MNIST lenet5_bn -> lenet5_half, same teacher "
        "file and budget: accuracy and seconds per epoch, side by side",
    ),
}


def write_index(root: str = "results", title: str = "Results measured by this project") -> str:
    """``results/README.md``: the accuracy tables of every folder under ``root`` that has run records.

    Each section names the machine(s) its runs were measured on and links the folder's full tables.
    """
    lines = [
        f"# {title}",
        "",
        "Every number here comes from a run record (summary.json) under this folder, made by this project; "
        f"regenerate with `datafree table {root} --index`. Each section links its folder's full tables "
        "(stability, resources, per-run rows, curves).",
        "",
    ]
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d) or name in ("runs", "teachers") or name in LINKED_FOLDERS:
            continue
        df = load_runs(d)
        skipped = df.attrs.get("skipped", [])
        if len(df) == 0:
            if skipped:  # a folder of unreadable records is named, not left out unseen
                lines += [f"## {name}", "", f"No readable runs: {describe_skipped(skipped)}.", ""]
            continue
        machines = "; ".join(sorted({m for m in df["machine"] if isinstance(m, str)})) if "machine" in df else "unknown"
        dates = sorted(str(f)[:10] for f in df.get("finished", []) if isinstance(f, str) and f)
        reference = None
        suite = os.path.join("benchmarks", "suites", f"{name}.yaml")
        if os.path.isfile(suite):
            with open(suite) as f:
                reference = (yaml.safe_load(f) or {}).get("reference")
        ref = load_reference(reference) if reference and os.path.isfile(reference) else None
        lines += [
            f"## {name}",
            "",
            f"{len(df)} runs, {dates[0]} to {dates[-1]}, on {machines}. "
            f"Full tables: [{name}/README.md]({name}/README.md)."
            if dates
            else f"{len(df)} runs on {machines}.",
        ]
        if skipped:
            lines[-1] += f" {describe_skipped(skipped)}."
        lines += ["", accuracy_table(df, reference=ref), ""]
    for name, (heading, text) in LINKED_FOLDERS.items():
        if os.path.isfile(os.path.join(root, name, "README.md")):
            lines += [f"## {heading}", "", f"{text}: [{name}/README.md]({name}/README.md).", ""]
    if os.path.isfile(os.path.join(root, "perf.md")):
        lines += [
            "## Speed and memory",
            "",
            "Each method's synthesis round and student step against its compute floor, and our DeepInversion, "
            "CMI and Fast-10 against the reference code: [perf.md](perf.md).",
            "",
        ]
    text = "\n".join(lines)
    atomic_write_text(os.path.join(root, "README.md"), text)
    return text
