"""Run records: atomic writers and loading many runs into a DataFrame.

A run directory holds ``config.yaml`` (resolved config), ``metrics.jsonl``
(one line per evaluation), ``summary.json`` (written when the run finishes),
``checkpoint.pt`` (for ``--resume``) and ``student.pt``. Every file is
written to a temporary name in the same directory and renamed into place, so
a killed process leaves the previous complete version, never half a file.
"""
from __future__ import annotations

import glob
import io
import json
import os
import platform
import subprocess
import tempfile
from typing import Any, Dict, Iterable, List, Optional

import yaml


def _atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
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


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_yaml(path: str, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=None))


def atomic_write_jsonl(path: str, records: Iterable[Dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records))


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


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def git_commit(cwd: Optional[str] = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd or os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd or os.path.dirname(__file__), capture_output=True, text=True, timeout=5)
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
    return sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True))


def load_runs(root: str):
    """All finished runs under ``root`` as a pandas DataFrame, one row per run."""
    import pandas as pd

    rows = []
    for path in find_summaries(root):
        try:
            s = read_json(path)
        except (OSError, json.JSONDecodeError):
            continue
        s = dict(s)
        s["run_dir"] = os.path.dirname(path)
        s["method_name"] = s.get("method")
        if s.get("tag"):  # variants of a method (hidfd at two rho) get rows of their own
            s["method"] = f"{s['method']} ({s['tag']})"
        rows.append(s)
    return pd.DataFrame(rows)
