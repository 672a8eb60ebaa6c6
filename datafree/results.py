"""Run records: atomic writers and loading many runs into a DataFrame.

A run directory holds ``config.yaml`` (resolved config), ``metrics.jsonl``
(one line per evaluation), ``summary.json`` (written when the run finishes),
``checkpoint.pt`` (for ``--resume``) and ``student.pt`` (a pool method's run
also ``pool.pt``, its synthetic pool, for ``datafree export``). Every file is
written to a temporary name in the same directory and renamed into place, so
a killed process leaves the previous complete version, never half a file.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: read once: os.umask can only be read by setting it, which is not safe while other threads create files
_UMASK = _current_umask()
TMP_SUFFIX = ".tmp"


def remove_stale_temporaries(directory: str) -> List[str]:
    """Delete the temporary files of interrupted atomic writes (``.<name>.<random>.tmp``) in ``directory``.

    Only call this while owning the directory (its lock held): a living writer's temporary looks the same.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), "." + "*" + TMP_SUFFIX)):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def empty_directory(directory: str, keep: Iterable[str] = ()) -> None:
    """Delete every entry of ``directory`` except the names in ``keep`` (a lock this process holds)."""
    import shutil

    for name in os.listdir(directory):
        if name in keep:
            continue
        p = os.path.join(directory, name)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; records are shared like any file the user writes
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (and 0-d tensor) replaced by None: records stay strict JSON."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(finite_json(obj), sort_keys=True, default=_json_default, allow_nan=False, **kw)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, _dumps(obj, indent=2) + "\n")


def report_json(obj: Any, path: str = "") -> None:
    """Print ``obj`` as indented JSON (a diagnosis script's figures) and, with ``path``, also write it there."""
    print(_dumps(obj, indent=1))
    if path:
        atomic_write_json(path, obj)


def atomic_write_yaml(path: str, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=None))


def atomic_write_jsonl(path: str, records: Iterable[Dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(_dumps(r) + "\n" for r in records))


def atomic_torch_save(obj: Any, path: str) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


class RecordError(ValueError):
    """A run record (summary.json, a metrics.jsonl line) that cannot be used; the message says why."""


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _finite_or_none(constant: str) -> None:
    # NaN and Infinity are not JSON; older engines wrote them where the engine now writes null
    return None


def _jsonl_lines(path: str):
    """(line number, record) of each non-blank line; :class:`RecordError` at the first that is not an object."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise RecordError(f"line {i} is not UTF-8 text") from None
            if not line:
                continue
            try:
                rec = json.loads(line, parse_constant=_finite_or_none)
            except json.JSONDecodeError as e:
                raise RecordError(f"line {i} is not valid JSON ({e.msg}): {_clip(line)!r}") from None
            if not isinstance(rec, dict):
                raise RecordError(f"line {i} is not a JSON object: {_clip(line)!r}")
            yield i, rec


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The records of a JSON-lines file, [] when there is none.

    Every non-blank line must be a JSON object, else :class:`RecordError` (a ``ValueError``) names the line.
    ``NaN`` / ``Infinity`` read as None, like the ``null`` the engine now writes for a non-finite value.
    """
    if not os.path.isfile(path):
        return []
    return [rec for _, rec in _jsonl_lines(path)]


def git_commit(cwd: Optional[str] = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd or os.path.dirname(__file__),
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or os.path.dirname(__file__),
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        return "unknown"


def versions() -> Dict[str, str]:
    import torch
    import torchvision

    from . import __version__

    return {
        "datafree": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "git": git_commit(),
    }


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cores = os.cpu_count()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU {cpu}, {cores} cores ({torch.get_num_threads()} torch threads)"


def find_summaries(root: str) -> List[str]:
    """Every summary.json under ``root``, sorted; records set aside as stale (``<run>.stale-<n>/``) are not read."""
    import re

    stale = re.compile(r"\.stale-\d+$")
    return sorted(
        p
        for p in glob.glob(os.path.join(root, "**", "summary.json"), recursive=True)
        if os.path.isfile(p) and not any(stale.search(part) for part in os.path.relpath(p, root).split(os.sep)[:-1])
    )


#: run statuses of summary.json; a record without one (older engines) finished
STATUSES = ("finished", "diverged", "collapsed")

#: the keys every table groups or sorts by: a summary without them cannot be placed, so it is skipped
REQUIRED_KEYS = ("method", "dataset", "pair", "seed")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_summary(path: str) -> Dict[str, Any]:
    """A run's summary.json, checked: a JSON object with :data:`REQUIRED_KEYS` and a known ``status``.

    ``status`` is filled in ("finished") where an older record has none. Raises :class:`RecordError` saying
    what is wrong, or ``OSError`` when the file cannot be read.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        s = json.loads(raw.decode("utf-8"), parse_constant=_finite_or_none)
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        what = "empty file" if not raw.strip() else f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
        raise RecordError(what) from None
    if not isinstance(s, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(s), "a number")
        raise RecordError(f"not a JSON object ({kind})")
    missing = [k for k in REQUIRED_KEYS if s.get(k) is None or s.get(k) == ""]
    if missing:
        raise RecordError("partial record: missing " + ", ".join(missing))
    for k in ("method", "dataset", "pair"):
        if not isinstance(s[k], str):
            raise RecordError(f"{k} is not a string: {_clip(json.dumps(s[k]))}")
    if not isinstance(s["seed"], int) or isinstance(s["seed"], bool):
        raise RecordError(f"seed is not an integer: {_clip(json.dumps(s['seed']))}")
    for k in ("last_acc", "best_acc", "mean_acc", "var_acc", "teacher_acc"):  # a cell no table could show
        if s.get(k) is not None and not _is_number(s[k]):
            raise RecordError(f"{k} is not a number or null: {_clip(json.dumps(s[k]))}")
    status = s.get("status")
    if status is None:
        status = "finished"
    if status not in STATUSES:
        raise RecordError(f"unknown status {_clip(json.dumps(status))} (known: {', '.join(STATUSES)})")
    return {**s, "status": status}


def read_curve(path: str) -> Optional[List[Tuple[float, Optional[float]]]]:
    """The ``(epoch, acc)`` points of a metrics.jsonl, acc None where it is null; None when there is no file.

    Raises :class:`RecordError` at the first line that is not an object with a numeric epoch and a numeric or
    null acc (``OSError`` when the file cannot be read).
    """
    if not os.path.isfile(path):
        return None
    points = []
    for i, rec in _jsonl_lines(path):
        if "epoch" not in rec or "acc" not in rec:
            raise RecordError(f"line {i} has no " + " and no ".join(k for k in ("epoch", "acc") if k not in rec))
        epoch, acc = rec["epoch"], rec["acc"]
        if not _is_number(epoch) or not math.isfinite(epoch):
            raise RecordError(f"line {i}: epoch is not a number: {_clip(json.dumps(epoch))}")
        if acc is not None and not _is_number(acc):
            raise RecordError(f"line {i}: acc is not a number or null: {_clip(json.dumps(acc))}")
        points.append((epoch, acc))
    return points


def _why(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"cannot be read: {e.strerror or e}"
    return str(e)


def load_runs(root: str):
    """All readable runs under ``root`` as a pandas DataFrame, one row per run.

    A row is the run's summary.json plus ``run_dir``, ``method_name`` (the method without its tag),
    ``status`` (finished, diverged or collapsed) and ``curve``, the run's evaluations from metrics.jsonl
    (see :func:`read_curve`; None without a usable file). Records that cannot be used are never dropped
    silently: ``df.attrs["skipped"]`` lists each as ``{"path": relative to root, "reason": ...}``. A bad
    summary.json leaves its run out; a bad metrics.jsonl only its curve. Every file is read here, before
    anything is written from the frame.
    """
    import pandas as pd

    rows, skipped = [], []
    for path in find_summaries(root):
        try:
            s = read_summary(path)
        except (OSError, RecordError) as e:
            skipped.append({"path": os.path.relpath(path, root), "reason": _why(e)})
            continue
        s["run_dir"] = os.path.dirname(path)
        s["method_name"] = s.get("method")
        if s.get("tag"):  # variants of a method (hidfd at two rho) get rows of their own
            s["method"] = f"{s['method']} ({s['tag']})"
        metrics = os.path.join(s["run_dir"], "metrics.jsonl")
        try:
            s["curve"] = read_curve(metrics)
        except (OSError, RecordError) as e:
            s["curve"] = None
            skipped.append(
                {
                    "path": os.path.relpath(metrics, root),
                    "reason": f"{_why(e)}; the run's table row comes from its summary.json, its curve is left out",
                }
            )
        rows.append(s)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    return df
