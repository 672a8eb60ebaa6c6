"""Run records: the files of a run folder, the typed run record, its identity, atomic writers and readers.

Every file name of a run folder is defined here, once (:data:`CONFIG`, :data:`METRICS`, ...). A run folder
(:class:`datafree.rundir.RunFolder` owns it) holds

* ``config.yaml``: the resolved config (every default included), rewritten at every start;
* ``fingerprint.json``: the run's identity (:class:`Identity`), what makes a record the one asked for;
* ``metrics.jsonl``: one line per evaluation;
* ``checkpoint.pt``: the state ``--resume`` continues from (``checkpoint.rank<r>.pt`` per extra rank);
* ``attempts.json``: the wall time of every process that worked on the run;
* ``summary.json``: the :class:`RunRecord`, written when the run ends;
* ``student.pt`` (``student_best.pt`` with ``keep=best``) and a pool method's ``pool.pt``;
* from the benchmark runner: ``cell.yaml``, ``log.txt`` and, for a cell that failed, ``error.json``.

Every file is written to a temporary name in the same directory and renamed into place, so a killed
process leaves the previous complete version, never half a file.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from . import __version__
from .tasks import metric_of, score_field

# --------------------------------------------------------------------------- file names (the only place)

CONFIG = "config.yaml"
FINGERPRINT = "fingerprint.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
ATTEMPTS = "attempts.json"
STUDENT = "student.pt"
BEST_STUDENT = "student_best.pt"  # keep=best: the student of the best evaluation
POOL = "pool.pt"  # a pool method's synthetic set, kept when the run ends (datafree export reads it)
CELL = "cell.yaml"  # the benchmark runner's request for a cell
LOG = "log.txt"  # a cell's output
ERROR = "error.json"  # why a cell failed
BACKUP = ".overwritten"  # what --overwrite moved aside until the new run is set up
TMP_SUFFIX = ".tmp"


def rank_checkpoint(rank: int) -> str:
    """The checkpoint of rank ``rank`` > 0 (its own synthesizer and random state)."""
    return f"checkpoint.rank{rank}.pt"


def samples_png(epoch: int) -> str:
    """The sample grid of an epoch (0-based)."""
    return f"samples_{epoch:04d}.png"


#: files whose presence means a folder holds (some of) a run
RECORD_FILES = (SUMMARY, METRICS, CHECKPOINT, FINGERPRINT)
#: a set-aside record: ``<run>.stale-<n>`` (another config or teacher)
STALE_SUFFIX = re.compile(r"\.stale-\d+$")


# --------------------------------------------------------------------------- atomic writers


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: read once: os.umask can only be read by setting it, which is not safe while other threads create files
UMASK = _current_umask()


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
    for name in os.listdir(directory):
        if name in keep:
            continue
        p = os.path.join(directory, name)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)


def atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=d)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; records are shared like any file the user writes
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
    atomic_write_bytes(path, text.encode("utf-8"))


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


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


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


def jsonl_text(records: Iterable[Dict[str, Any]]) -> str:
    """The text of a JSON-lines file of ``records`` (what :func:`atomic_write_jsonl` writes)."""
    return "".join(_dumps(r) + "\n" for r in records)


def atomic_write_jsonl(path: str, records: Iterable[Dict[str, Any]]) -> None:
    atomic_write_text(path, jsonl_text(records))


def atomic_torch_save(obj: Any, path: str) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- readers


class RecordError(ValueError):
    """A run record (summary.json, a metrics.jsonl line, fingerprint.json) that cannot be used; the message
    says why."""


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_curve(path: str, metric: str = "acc") -> Optional[List[Tuple[float, Optional[float]]]]:
    """The ``(epoch, score)`` points of a metrics.jsonl (the task's score, ``metric``: ``acc``, ``miou``), the
    score None where it is null; None when there is no file.

    Raises :class:`RecordError` at the first line that is not an object with a numeric epoch and a numeric or
    null score (``OSError`` when the file cannot be read).
    """
    if not os.path.isfile(path):
        return None
    points = []
    for i, rec in _jsonl_lines(path):
        if "epoch" not in rec or metric not in rec:
            raise RecordError(f"line {i} has no " + " and no ".join(k for k in ("epoch", metric) if k not in rec))
        epoch, score = rec["epoch"], rec[metric]
        if not _is_number(epoch) or not math.isfinite(epoch):
            raise RecordError(f"line {i}: epoch is not a number: {_clip(json.dumps(epoch))}")
        if score is not None and not _is_number(score):
            raise RecordError(f"line {i}: {metric} is not a number or null: {_clip(json.dumps(score))}")
        points.append((epoch, score))
    return points


_SHA_CACHE: Dict[tuple, str] = {}


def same_evaluations(a: List[Dict[str, Any]], b: List[Dict[str, Any]], metric: str = "acc") -> bool:
    """Whether two lists of metrics lines hold the same evaluations (epoch and the task's score, ``metric``; a
    non-finite score, which the records write as null, equals any other)."""

    def key(m: Dict[str, Any]) -> Tuple[Any, Any]:
        acc = m.get(metric)
        return m.get("epoch"), (acc if _is_number(acc) and math.isfinite(acc) else None)

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


# --------------------------------------------------------------------------- where a record was made


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


_THREADS = re.compile(r"\((\d+) torch threads?\)")


def threads_of_machine(text: Any) -> Optional[int]:
    """The torch thread count a record's ``machine`` line names (``... (1 torch threads)``), or None."""
    m = _THREADS.search(text) if isinstance(text, str) else None
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- identity (fingerprint.json)


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"synth": {"lr_g": 1e-3}}`` -> ``{"synth.lr_g": 1e-3}`` (lists stay values)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def fingerprint_of(fields: Dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


#: identity fields that are not the run's configuration but its place in a series (tables group seeds)
SERIES_KEYS = ("seed",)
#: the identity field of the CPU thread count (datafree.identity adds it for CPU runs)
THREADS_FIELD = "threads"


@dataclass
class Identity:
    """A run's fingerprint and the flat key/value fields it is the sha256 of (``fingerprint.json``)."""

    fingerprint: str
    fields: Dict[str, Any]

    def as_dict(self) -> Dict[str, Any]:
        return {"fingerprint": self.fingerprint, "fields": self.fields}

    def current_fields(self, recorded_threads: Optional[int] = None) -> Dict[str, Any]:
        """The fields read under today's rules, as :func:`same_run` recognises a record made under an older one:
        unset (None) keys left out, and a CPU record from before the thread count was part of the identity given
        the count its summary names (``recorded_threads``)."""
        fields = {k: v for k, v in self.fields.items() if v is not None}
        if THREADS_FIELD not in fields and fields.get("device") == "cpu" and recorded_threads is not None:
            fields[THREADS_FIELD] = recorded_threads
        return fields

    def config_id(self, recorded_threads: Optional[int] = None) -> str:
        """The fingerprint without the seed: runs that share it are seeds of one configuration and teacher
        (the fields as :meth:`current_fields` reads them)."""
        fields = self.current_fields(recorded_threads)
        return fingerprint_of({k: v for k, v in fields.items() if k not in SERIES_KEYS})


def parse_identity(text: str, where: str = FINGERPRINT) -> Identity:
    """An :class:`Identity` from the text of a fingerprint.json; :class:`RecordError` saying what is wrong."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(d, dict) or not isinstance(d.get("fingerprint"), str) or not isinstance(d.get("fields"), dict):
        raise RecordError(f"{where} is not a fingerprint record (a fingerprint string and a fields mapping)")
    return Identity(d["fingerprint"], dict(d["fields"]))


def same_run(old: Optional[Identity], new: Identity, recorded_threads: Optional[int] = None) -> bool:
    """Whether a recorded identity is the one asked for: the same fingerprint; or a record made before a rule
    of identity changed, whose fields under the old rule give the same run:

    * before unset (None) keys were left out: its fields without them give the new fingerprint;
    * before the CPU thread count entered the identity: its fields are the new ones without ``threads``, and
      the thread count its summary names (``recorded_threads``, from ``machine``) is the new one, or it has no
      summary to say (a partial run of that time resumes).
    """
    if old is None:
        return False
    if old.fingerprint == new.fingerprint:
        return True
    legacy = {k: v for k, v in old.fields.items() if v is not None}
    if len(legacy) < len(old.fields) and fingerprint_of(legacy) == new.fingerprint:
        return True
    if THREADS_FIELD in new.fields and THREADS_FIELD not in old.fields:
        rest = {k: v for k, v in new.fields.items() if k != THREADS_FIELD}
        if fingerprint_of(legacy) == fingerprint_of(rest) or old.fingerprint == fingerprint_of(rest):
            return recorded_threads is None or recorded_threads == new.fields[THREADS_FIELD]
    return False


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:12] + "..."


def field_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """``["synth.lr_g 0.001 -> 0.002", ...]``: the keys whose values differ between two sets of fields."""
    missing = object()
    diffs: List[str] = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, missing), new.get(k, missing)
        if a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            diffs.append(
                f"{k} {'(unset)' if a is missing else _short(a)} -> {'(unset)' if b is missing else _short(b)}"
            )
    return diffs


def differences(old: Optional[Identity], new: Identity, limit: int = 6, problem: str = "") -> str:
    """``"synth.lr_g 0.001 -> 0.002, teacher.sha256 27cf5cd0... -> 9a1b..."`` (or why there is nothing to
    compare: ``problem`` says why the recorded identity could not be read)."""
    if old is None:
        if problem:
            return f"its {FINGERPRINT} cannot be read ({problem})"
        return f"it has no {FINGERPRINT} (recorded before run fingerprints, or not by datafree)"
    diffs = field_differences(old.fields, new.fields)
    if not diffs:
        return "the fingerprints differ"
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


# --------------------------------------------------------------------------- the run record (summary.json)

#: run statuses of summary.json; a record without one (older engines) finished
STATUSES = ("finished", "diverged", "collapsed")
#: the keys every table groups or sorts by: a summary without them cannot be placed, so it is skipped
REQUIRED_KEYS = ("method", "dataset", "pair", "seed")
#: fields summary.json holds only when they are set (every other field is written, null or not)
WHEN_SET = (
    "diverged",
    "collapsed",
    "collapse",
    "ranks_in_sync",
    "metrics_sha256",
    "task",
    "last_miou",
    "best_miou",
    "mean_miou",
    "var_miou",
)
#: the record's schema version: 1 had no ``record_version`` field, 2 adds it and ``metrics_sha256``
RECORD_VERSION = 2


@dataclass(frozen=True)
class Column:
    """A record field as a column of one table: its position, header and format.

    ``kind``: ``number``; ``accuracy`` (the word ``diverged`` stands in for a diverged run's value, and a
    status note follows); ``count`` (an integer with thousands separators); ``hours`` (GPU-hours where any run
    used a GPU, else the wall hours of ``cpu_key`` under ``cpu_header``).
    """

    position: int
    header: str
    digits: int = 2
    kind: str = "number"
    cpu_key: Optional[str] = None
    cpu_header: Optional[str] = None
    #: a column of the task's score: ``last``, ``best``, ``mean`` or ``var``, read as ``<stat>_<metric>`` of each
    #: row's task (``last_acc`` for a classifier, ``last_miou`` for a segmenter)
    stat: Optional[str] = None

    def key(self, name: str, metric: str = "acc") -> str:
        """The record field this column shows for a row of a task scored by ``metric``."""
        return score_field(self.stat, metric) if self.stat else name


def _col(stability: Optional[Column] = None, runs: Optional[Column] = None, mean: bool = False) -> Dict[str, Any]:
    """A field's table metadata: its column in the stability table (mean over seeds) and in the per-run table;
    ``mean``: averaged over seeds into stability.csv."""
    return {"stability": stability, "runs": runs, "mean": mean or stability is not None}


@dataclass
class RunRecord:
    """What a run's ``summary.json`` holds: a run's result, where and how it was made.

    The fields are the schema; a field's metadata places it in the tables (:func:`table_columns`), so a new
    column is one field here. What a method adds (``Synthesizer.summary_extra``: a pool's size, HiDFD's
    collected set) and keys of newer records are kept in ``extra`` and written beside the fields.
    """

    run_id: str
    method: str
    dataset: str
    pair: str
    seed: int
    status: str = "finished"
    fingerprint: Optional[str] = None
    synthesizer: Optional[str] = None
    distiller: Optional[str] = None
    teacher: Optional[str] = None
    teacher_path: Optional[str] = None
    teacher_sha256: Optional[str] = None
    student: Optional[str] = None
    suite: Optional[str] = None
    tag: Optional[str] = None
    uses_real_data: Any = ""
    epochs: Optional[int] = None
    evaluations: Optional[int] = None
    mean_acc: Optional[float] = field(
        default=None,
        metadata=_col(Column(1, "mean", kind="accuracy", stat="mean"), Column(3, "mean", kind="accuracy", stat="mean")),
    )
    var_acc: Optional[float] = field(
        default=None,
        metadata=_col(Column(2, "var", kind="accuracy", stat="var"), Column(4, "var", kind="accuracy", stat="var")),
    )
    best_acc: Optional[float] = field(
        default=None,
        metadata=_col(Column(3, "best", kind="accuracy", stat="best"), Column(1, "best", kind="accuracy", stat="best")),
    )
    last_acc: Optional[float] = field(
        default=None,
        metadata=_col(Column(4, "last", kind="accuracy", stat="last"), Column(2, "last", kind="accuracy", stat="last")),
    )
    #: the task (datafree/tasks.py): None for classification, as every record from before tasks
    task: Optional[str] = None
    #: a segmenter's score over its evaluations (mIoU, %); a classifier's is the *_acc fields
    last_miou: Optional[float] = None
    best_miou: Optional[float] = None
    mean_miou: Optional[float] = None
    var_miou: Optional[float] = None
    #: the teacher's score on the test split in its task's metric (accuracy, or mIoU), as the run measured it
    teacher_acc: Optional[float] = None
    teacher_acc_stored: Optional[float] = None
    teacher_source: Optional[Dict[str, Any]] = None
    device: Optional[str] = None
    precision: Optional[Dict[str, str]] = None
    machine: Optional[str] = None
    finished: Optional[str] = None
    versions: Optional[Dict[str, str]] = None
    diverged: Optional[Dict[str, Any]] = None
    collapsed: Optional[bool] = None
    collapse: Optional[Dict[str, Any]] = None
    # resources (datafree.engine.meter), in the order of the stability CSV's columns
    peak_memory_mb: Optional[float] = field(
        default=None, metadata=_col(Column(5, "peak mem (MB)", 0), Column(5, "peak mem (MB)", 0))
    )
    total_hours: Optional[float] = field(default=None, metadata=_col(mean=True))
    gpu_hours: Optional[float] = field(
        default=None,
        metadata=_col(
            Column(6, "GPU-hours", 3, kind="hours", cpu_key="total_hours", cpu_header="hours (CPU)"),
            Column(8, "GPU-h", 3),
        ),
    )
    synthesis_hours: Optional[float] = field(default=None, metadata=_col(Column(7, "synthesis h", 3)))
    images_synthesized: Optional[int] = field(
        default=None, metadata=_col(runs=Column(9, "images synthesized", kind="count"), mean=True)
    )
    distill_hours: Optional[float] = None
    eval_hours: Optional[float] = None
    synthesis_gpu_hours: Optional[float] = None
    distill_gpu_hours: Optional[float] = None
    synthesis_seconds: Optional[float] = field(default=None, metadata=_col(runs=Column(7, "synthesis (s)", 0)))
    distill_seconds: Optional[float] = None
    total_seconds: Optional[float] = field(default=None, metadata=_col(runs=Column(6, "wall (s)", 0)))
    memory_kind: Optional[str] = None
    images_seen: Optional[int] = None
    checkpointed_seconds: Optional[float] = None
    attempts: Optional[int] = None
    wall_seconds: Optional[float] = None
    world_size: Optional[int] = None
    ranks_in_sync: Optional[bool] = None
    #: sha256 of metrics.jsonl as the run left it (tables check the record against its curve)
    metrics_sha256: Optional[str] = None
    record_version: int = 1
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The key of the run's score: ``acc`` (classification), ``miou`` (segmentation)."""
        return metric_of(self.task)

    def score(self, stat: str) -> Optional[float]:
        """The run's ``last``, ``best``, ``mean`` or ``var`` score in its task's metric."""
        return getattr(self, score_field(stat, self.metric), None)

    @property
    def score_prefix(self) -> str:
        """What names the score in a result line: nothing for an accuracy, ``"miou "`` for a segmenter's."""
        return "" if self.metric == "acc" else f"{self.metric} "

    # -- mapping access: a record reads like the summary.json it is
    def as_dict(self) -> Dict[str, Any]:
        """The flat mapping summary.json holds: the fields (unset optional ones left out) and ``extra``."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra" or (v is None and f.name in WHEN_SET):
                continue
            out[f.name] = v
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        d = self.as_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunRecord":
        """The record a summary.json mapping holds, checked (:class:`RecordError` says what is wrong)."""
        if not isinstance(d, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(d), "a number")
            raise RecordError(f"not a JSON object ({kind})")
        missing = [k for k in REQUIRED_KEYS if d.get(k) is None or d.get(k) == ""]
        if missing:
            raise RecordError("partial record: missing " + ", ".join(missing))
        names = {f.name: f for f in fields(cls) if f.name != "extra"}
        hints = typing.get_type_hints(cls)
        known = {k: v for k, v in d.items() if k in names}
        for k, v in known.items():
            _check_type(k, v, hints[k])
        status = known.get("status") or "finished"
        if status not in STATUSES:
            raise RecordError(f"unknown status {_clip(json.dumps(status))} (known: {', '.join(STATUSES)})")
        known["status"] = status
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def read(cls, path: str) -> "RunRecord":
        """The record in ``path``; :class:`RecordError` (a bad record) or ``OSError`` (an unreadable file)."""
        with open(path, "rb") as f:
            raw = f.read()
        try:
            d = json.loads(raw.decode("utf-8"), parse_constant=_finite_or_none)
        except UnicodeDecodeError:
            raise RecordError("not UTF-8 text") from None
        except json.JSONDecodeError as e:
            what = "empty file" if not raw.strip() else f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
            raise RecordError(what) from None
        return cls.from_dict(d)

    def write(self, path: str) -> None:
        atomic_write_json(path, self.as_dict())


def _check_type(key: str, value: Any, tp: Any) -> None:
    """A summary value of the type its field declares (None where the field is optional)."""
    if value is None:
        if key in REQUIRED_KEYS:
            raise RecordError(f"partial record: missing {key}")
        return
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if origin is typing.Union and len(args) == 1 else tp
    base = typing.get_origin(base) or base
    ok = True
    if base is float:
        ok = _is_number(value)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is str:
        ok = isinstance(value, str)
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is dict:
        ok = isinstance(value, dict)
    if not ok:
        want = {float: "a number", int: "an integer", str: "a string", bool: "a boolean", dict: "a mapping"}[base]
        raise RecordError(
            f"{key} is not {want}{' or null' if key not in REQUIRED_KEYS else ''}: "
            f"{_clip(json.dumps(value, default=str))}"
        )


def read_summary(path: str) -> Dict[str, Any]:
    """A run's summary.json as a mapping, checked (:meth:`RunRecord.read`); ``status`` filled in where an
    older record has none."""
    return RunRecord.read(path).as_dict()


def table_columns(table: str) -> List[Tuple[str, Column]]:
    """``[(field name, Column)]`` of a table (``stability`` or ``runs``), in their order."""
    cols = [(f.name, f.metadata.get(table)) for f in fields(RunRecord) if f.metadata.get(table) is not None]
    return sorted(cols, key=lambda nc: nc[1].position)


def mean_fields() -> List[str]:
    """The record fields averaged over seeds into the stability rows (and stability.csv)."""
    return [f.name for f in fields(RunRecord) if f.metadata.get("mean")]


def record_field_names() -> List[str]:
    return [f.name for f in fields(RunRecord) if f.name != "extra"]


def replace_record(record: RunRecord, **changes: Any) -> RunRecord:
    return dataclasses.replace(record, **changes)
