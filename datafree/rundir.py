"""A run folder: one object owns a run's directory and every file in it.

:class:`RunFolder` is the only code that reads or writes the files of a run (their names are defined in
:mod:`datafree.results`): the lock that gives the folder one owner at a time, the backup an ``--overwrite``
keeps until the new run is set up, the identity (fingerprint.json), config.yaml, metrics.jsonl, the
checkpoints, attempts.json, the run record (summary.json), a cell's request and error, and setting a
stale record aside. The engine, the benchmark runner, the demo, ``export``, ``train-teacher`` and the tables
all go through it.

:func:`run_path` is where a run lives: ``<root>/<dataset>/<method>/<teacher>-<student>-s<seed>[-<tag>]``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

from .errors import CheckpointError, first_line
from .lock import LOCK_NAME, DirLock
from .results import (
    ATTEMPTS,
    BACKUP,
    CELL,
    CHECKPOINT,
    CONFIG,
    ERROR,
    FINGERPRINT,
    METRICS,
    RECORD_FILES,
    SUMMARY,
    TMP_SUFFIX,
    Identity,
    RecordError,
    RunRecord,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    empty_directory,
    parse_identity,
    rank_checkpoint,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    same_run,
    threads_of_machine,
)


def folder_name(name: str) -> str:
    """A name as one path component: ``hidfd@released`` for the preset ``hidfd:released`` (a ``:`` is not a
    path character on every system a results folder is cloned to), ``timm-resnet18`` for ``timm/resnet18``."""
    return str(name).replace(":", "@").replace("/", "-").replace(os.sep, "-")


def run_path(
    root: str, dataset: str, method: str, teacher: Optional[str], student: str, seed: int, tag: Optional[str] = None
) -> str:
    """Where a run lives under ``root``. ``teacher`` is the teacher's label (:func:`datafree.teacher.label`: its
    name, or a file's stem and sha256), never a raw path; None for a method without one."""
    name = f"{folder_name(teacher or 'none')}-{folder_name(student)}-s{seed}" + (f"-{tag}" if tag else "")
    return os.path.join(root, dataset.replace(":", "_").replace("/", "_"), folder_name(method), name)


#: attempts.json is rewritten at most this often between checkpoints (a SIGKILL loses at most this much time)
ATTEMPT_SAVE_SECONDS = 10.0


class RunFolder:
    """The directory of one run and every file in it (see the module docstring)."""

    def __init__(self, path: str, what: str = "run directory"):
        self.path = os.path.abspath(path)
        self.what = what
        self.lock: Optional[DirLock] = None
        self.backup: Optional[str] = None  # where --overwrite moved the old records (until the new run is set up)
        self.created = False  # this process made the directory (a failed setup removes it again)
        self.attempts: List[Dict[str, Any]] = []
        self._attempt_t0 = time.time()
        self._attempt_saved = 0.0
        self._attempts_closed = False

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    # -- ownership ---------------------------------------------------------------------------------
    def acquire(self) -> "RunFolder":
        """Take the folder's lock (creating the folder): a second process fails at once with who holds it."""
        self.created = not os.path.isdir(self.path)
        self.lock = DirLock(self.path, self.what).acquire()
        return self

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def in_use(self) -> bool:
        """True while another living process holds the folder's lock (a probe that writes nothing)."""
        import fcntl

        try:
            fd = os.open(self.file(LOCK_NAME), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops a lock this probe took
        return False

    # -- what the folder holds ----------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def has(self, name: str) -> bool:
        return os.path.isfile(self.file(name))

    def has_records(self) -> bool:
        """True when the folder holds (some of) a run: a summary, metrics, a checkpoint or an identity."""
        return any(os.path.exists(self.file(f)) for f in RECORD_FILES)

    def is_finished(self) -> bool:
        """The folder has a run record (of whatever run: :meth:`matches` says whether it is the one asked for)."""
        return self.has(SUMMARY)

    def remove_temporaries(self) -> None:
        """The temporaries of interrupted writes (only while owning the folder: a living writer's look the same)."""
        remove_stale_temporaries(self.path)

    def remove_if_empty(self) -> None:
        """Remove a folder this process created and left without records (only the lock, temporaries)."""
        try:
            ignored = (LOCK_NAME, BACKUP)
            left = [n for n in os.listdir(self.path) if n not in ignored and not n.endswith(TMP_SUFFIX)]
            if not left:
                shutil.rmtree(self.path, ignore_errors=True)
        except OSError:
            pass

    # -- --overwrite: the old records stay until the new run is set up --------------------------------
    def restore_interrupted_overwrite(self, overwrite: bool) -> bool:
        """An ``--overwrite`` killed during its setup left the old records aside: drop them when this start
        overwrites again, else put them back. True when they were put back."""
        leftover = self.file(BACKUP)
        if not os.path.isdir(leftover):
            return False
        if overwrite:
            shutil.rmtree(leftover)
            return False
        self.backup = leftover
        self.restore_backup()
        return True

    def move_aside(self) -> None:
        """Move every record to the backup folder (``--overwrite``): back by :meth:`restore_backup` if the new
        run fails to set up, gone by :meth:`drop_backup` once it is set up."""
        b = self.file(BACKUP)
        if os.path.isdir(b):
            shutil.rmtree(b)
        os.makedirs(b)
        for name in os.listdir(self.path):
            if name not in (LOCK_NAME, BACKUP):
                os.rename(self.file(name), os.path.join(b, name))
        self.backup = b

    def restore_backup(self) -> None:
        """Put back the records that --overwrite moved aside, when the new run failed to set up."""
        b = self.backup
        if b is None or not os.path.isdir(b):
            return
        empty_directory(self.path, keep=(LOCK_NAME, BACKUP))  # what the failed setup wrote
        for name in os.listdir(b):
            os.rename(os.path.join(b, name), self.file(name))
        os.rmdir(b)
        self.backup = None

    def drop_backup(self) -> None:
        if self.backup is not None:
            shutil.rmtree(self.backup, ignore_errors=True)
            self.backup = None

    def set_aside(self) -> str:
        """Move a stale record to ``<folder>.stale-<n>/`` (under its lock); return the new path."""
        n = 1
        while os.path.exists(f"{self.path}.stale-{n}"):
            n += 1
        target = f"{self.path}.stale-{n}"
        with DirLock(self.path, self.what):
            os.rename(self.path, target)
        return target

    # -- identity ----------------------------------------------------------------------------------
    def read_identity(self) -> Optional[Identity]:
        """The recorded identity; None when there is none; :class:`RecordError` when fingerprint.json is there
        but cannot be read (damaged), which is not the same as a record from before fingerprints."""
        try:
            with open(self.file(FINGERPRINT), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RecordError(f"{FINGERPRINT} cannot be read: {e.strerror or e}") from None
        return parse_identity(text)

    def identity_problem(self) -> Tuple[Optional[Identity], str]:
        """``(identity or None, why it could not be read or "")``."""
        try:
            return self.read_identity(), ""
        except RecordError as e:
            return None, str(e)

    def write_identity(self, ident: Identity) -> None:
        atomic_write_json(self.file(FINGERPRINT), ident.as_dict())

    def recorded_threads(self) -> Optional[int]:
        """The torch thread count the run's record names (its ``machine`` line), for records made before the
        thread count entered the identity."""
        try:
            return threads_of_machine(read_json(self.file(SUMMARY)).get("machine"))
        except (OSError, ValueError, AttributeError):
            return None

    def matches(self, ident: Identity) -> bool:
        """The folder's record is the run ``ident`` describes (:func:`datafree.results.same_run`)."""
        old, _ = self.identity_problem()
        return same_run(old, ident, self.recorded_threads())

    # -- config, metrics -----------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        atomic_write_text(self.file(CONFIG), text)

    def read_metrics(self) -> List[Dict[str, Any]]:
        return read_jsonl(self.file(METRICS))

    def write_metrics(self, records: List[Dict[str, Any]]) -> None:
        atomic_write_jsonl(self.file(METRICS), records)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, state: Dict[str, Any], rank: int = 0) -> None:
        atomic_torch_save(state, self.file(CHECKPOINT if rank == 0 else rank_checkpoint(rank)))

    def has_checkpoint(self) -> bool:
        return self.has(CHECKPOINT)

    def load_checkpoint(self, rank: int = 0) -> Dict[str, Any]:
        """The run's checkpoint (with rank ``rank``'s own part over it), read with ``weights_only=True``;
        :class:`CheckpointError` naming the file and the fix when it is unreadable or not a run checkpoint."""
        import torch

        path = self.file(CHECKPOINT)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if rank > 0:
                state.update(torch.load(self.file(rank_checkpoint(rank)), map_location="cpu", weights_only=True))
        except Exception as e:
            raise CheckpointError(
                f"cannot resume: {path} is unreadable ({type(e).__name__}: {first_line(e)}); "
                "use --overwrite to start the run again"
            ) from e
        if not isinstance(state, dict) or not all(k in state for k in ("epoch", "student", "rng", "metrics")):
            raise CheckpointError(f"cannot resume: {path} is not a datafree run checkpoint; use --overwrite")
        return state

    # -- the run record ---------------------------------------------------------------------------------
    def read_record(self) -> RunRecord:
        return RunRecord.read(self.file(SUMMARY))

    def previous_record(self) -> Optional[RunRecord]:
        """The record a run left, or None (none, or one that cannot be read: the run is then not finished)."""
        try:
            return self.read_record() if self.is_finished() else None
        except (OSError, RecordError):
            return None

    def write_record(self, record: RunRecord) -> None:
        record.write(self.file(SUMMARY))

    # -- attempts: the wall time of every process that worked on the run ---------------------------------
    def start_attempt(self, fingerprint: Optional[str], started: Optional[float] = None) -> None:
        """Record a new attempt (this process), after the earlier ones of this run: those of another run that
        never got past its setup here are dropped. Its wall time counts from ``started`` (the start of its
        setup; now by default). ``from_epoch`` is set once the checkpoint is read (:meth:`attempt_set_up`)."""
        self._attempt_t0 = started if started is not None else time.time()
        try:
            earlier = list(read_json(self.file(ATTEMPTS)).get("attempts", []))
        except (OSError, ValueError, AttributeError):
            earlier = []
        self.attempts = [a for a in earlier if a.get("fingerprint", fingerprint) == fingerprint]
        self.attempts.append(
            {
                "started": datetime.datetime.fromtimestamp(self._attempt_t0).isoformat(timespec="seconds"),
                "pid": os.getpid(),
                "seconds": 0.0,
                "from_epoch": None,
                "fingerprint": fingerprint,
                "setup": True,
            }
        )
        self._attempts_closed = False
        self.save_attempts(force=True)

    def attempt_set_up(self, from_epoch: int) -> None:
        """This attempt got through its setup and goes on from ``from_epoch`` (an attempt killed during its
        setup keeps ``"setup": true``)."""
        if self.attempts:
            self.attempts[-1]["from_epoch"] = from_epoch
            self.attempts[-1].pop("setup", None)
            self.save_attempts(force=True)

    def save_attempts(self, force: bool = False) -> None:
        """This attempt's wall time so far: at every checkpoint, and otherwise at most every
        :data:`ATTEMPT_SAVE_SECONDS`, so a SIGKILL loses at most that much of it (or one round, if longer)."""
        if not self.attempts or self._attempts_closed:
            return
        now = time.time()
        if not force and now - self._attempt_saved < ATTEMPT_SAVE_SECONDS:
            return
        self.attempts[-1]["seconds"] = round(now - self._attempt_t0, 3)
        atomic_write_json(self.file(ATTEMPTS), {"attempts": self.attempts})
        self._attempt_saved = now

    def close_attempts(self) -> None:
        """The last word on this attempt's wall time: saved now, never after (the run record's wall time is
        the same)."""
        self.save_attempts(force=True)
        self._attempts_closed = True

    def discard_attempts(self) -> None:
        """Forget this attempt (a start that failed before the folder held a run); earlier ones stay."""
        earlier, self.attempts, self._attempts_closed = self.attempts[:-1], [], True
        if earlier:
            atomic_write_json(self.file(ATTEMPTS), {"attempts": earlier})
        elif self.has(ATTEMPTS):
            os.unlink(self.file(ATTEMPTS))

    def wall_seconds(self) -> float:
        return float(sum(a.get("seconds", 0.0) for a in self.attempts))

    # -- a benchmark cell: its request and its error -------------------------------------------------------
    def write_cell(self, text: str) -> None:
        os.makedirs(self.path, exist_ok=True)
        atomic_write_text(self.file(CELL), text)

    def write_error(self, info: Dict[str, Any]) -> None:
        os.makedirs(self.path, exist_ok=True)
        atomic_write_json(self.file(ERROR), info)

    def read_error(self) -> Optional[Dict[str, Any]]:
        try:
            e = read_json(self.file(ERROR))
        except (OSError, ValueError):
            return None
        return e if isinstance(e, dict) else None

    def clear_error(self) -> None:
        if self.has(ERROR):
            os.unlink(self.file(ERROR))
