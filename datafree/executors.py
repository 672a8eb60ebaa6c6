"""Executors: where a suite's cells run, one process (or Slurm job) per cell.

* :class:`LocalExecutor`: local processes, one per visible GPU at a time, or ``jobs`` at a time on a CPU
  (each cell then gets an equal share of the cores through ``OMP_NUM_THREADS``, :func:`cpu_threads`);
* :class:`SubmititExecutor`: Slurm jobs through submitit (``submitit-local`` runs them here, for tests).

A cell's process is ``datafree distill --config <cell>/cell.yaml --resume``; its output goes to
``<cell>/log.txt`` and, when it fails, why to ``<cell>/error.json`` (the whole error message, not its first
line). :func:`forward_signals` makes SIGTERM and SIGINT to the runner stop every running cell the same way
(each cell saves its attempt and releases its folder) and wait for them, so that the suite resumes where it
stopped; a cell also stops by itself when the runner dies (:func:`watch_parent`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from .errors import DatafreeError, UnknownNameError
from .results import CELL, LOG
from .rundir import RunFolder
from .suites import Cell

#: exit codes of a cell that are outcomes, not failures: 0 finished, 3 diverged (its record says where)
OUTCOMES = (0, 3)
#: exit codes of a cell stopped by a signal (130: interrupted, 143 or -15: SIGTERM): resumable, not failed
STOPPED = (130, 143, -signal.SIGTERM, -signal.SIGINT)
#: the environment variable that tells a cell's process which runner to watch (:func:`watch_parent`)
PARENT_ENV = "DATAFREE_RUNNER_PID"

#: the CPUs (and so torch threads) of a Slurm cell
SLURM_CPUS_PER_TASK = 8

Done = Callable[[Cell, Dict[str, Any]], None]


def cpu_threads(jobs: int) -> int:
    """The torch threads each of ``jobs`` CPU cells gets: an equal share of the cores, or for one job at a time
    what torch uses in this process (its default, or what OMP_NUM_THREADS says). The runner tells each cell this
    count (``OMP_NUM_THREADS``) and judges its records by it, since the count enters a CPU run's identity."""
    if jobs > 1:
        return max(1, (os.cpu_count() or 1) // jobs)
    import torch

    return torch.get_num_threads()


def cell_command(cell: Cell) -> List[str]:
    """The command that runs (or resumes) one cell from its ``cell.yaml``."""
    return [
        sys.executable,
        "-m",
        "datafree.cli",
        "distill",
        "--config",
        os.path.join(cell.out, CELL),
        "--resume",
        "progress=false",
    ]


def error_text(log_path: str, size: int = 16000) -> str:
    """Why a cell failed, from the end of its log: the last ``error:`` message whole (it may span several
    lines, with its fix), else the end of the traceback."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.rstrip() for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if starts:
        block = lines[starts[-1] :]
        block = [line for line in block if line.strip() and not line.startswith("=== ")]
        return "\n".join(block).strip()
    tail = [line for line in lines if line.strip()][-20:]
    errors = [i for i, line in enumerate(tail) if line[:1].strip() and ("Error" in line or "Exception" in line)]
    return "\n".join(tail[errors[-1] :] if errors else tail[-1:]).strip()


def record_cell_error(cell_out: str, e: BaseException) -> Dict[str, Any]:
    """Write ``error.json`` for a cell that could not be started or run; return the result record."""
    res = {
        "returncode": -1,
        "seconds": 0.0,
        "error": f"{type(e).__name__}: {e}",
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:],
    }
    try:
        RunFolder(cell_out).write_error({**res, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    except OSError:
        pass
    return res


class CellProcesses:
    """The cell processes running now, so that a signal to the runner reaches each of them once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: Dict[int, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def start(self, cmd: List[str], log, env: Optional[Dict[str, str]]) -> subprocess.Popen:
        with self._lock:
            if self.stopping.is_set():
                raise KeyboardInterrupt
            env = dict(env if env is not None else os.environ)
            env[PARENT_ENV] = str(os.getpid())
            # a session of its own: a terminal's Ctrl-C reaches the runner, which stops each cell once
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._procs[proc.pid] = proc
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.pop(proc.pid, None)

    def stop_all(self) -> int:
        """SIGTERM to every running cell (each saves its attempt and exits resumable); how many were running."""
        self.stopping.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return len(procs)


def run_cell_process(
    cell_out: str, cmd: List[str], env: Optional[Dict[str, str]] = None, processes: Optional[CellProcesses] = None
) -> Dict[str, Any]:
    """Run one cell's command, logging to ``<cell>/log.txt``; write ``error.json`` on failure (a cell stopped by
    a signal is resumable: it gets none). ``processes`` tracks it for :meth:`CellProcesses.stop_all`."""
    processes = processes or CellProcesses()
    t0 = time.time()
    folder = RunFolder(cell_out)
    log_path = folder.file(LOG)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = processes.start(cmd, log, env)
        try:
            returncode = proc.wait()
        finally:
            processes.finished(proc)
    result: Dict[str, Any] = {"returncode": returncode, "seconds": time.time() - t0}
    if returncode in OUTCOMES and folder.is_finished():
        folder.clear_error()
    elif returncode in STOPPED or processes.stopping.is_set():
        result["stopped"] = True  # resumable: no error.json
    else:
        result["error"] = error_text(log_path)
        folder.write_error({**result, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd})
    return result


@contextlib.contextmanager
def forward_signals(stop: Callable[[], None]) -> Iterator[Dict[str, Any]]:
    """While the block runs, SIGTERM and SIGINT call ``stop`` (once) instead of killing this process; the
    block's dict says which signal came (``signal``: its number, or None). Outside the main thread (where
    Python cannot take signals) nothing is installed."""
    got: Dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum, _frame) -> None:
        if got["signal"] is None:
            got["signal"] = signum
            stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def watch_parent() -> None:
    """In a cell's process: stop (as on SIGTERM) when the runner that started it is gone, so that no cell keeps
    running, and holding its folder, after its runner was killed."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="datafree-watch-runner", daemon=True).start()


class LocalExecutor:
    """Run cells as local processes: one per visible GPU at a time, or ``jobs`` at a time on CPU (default 1).

    With several CPU jobs each cell gets an equal share of the cores (``OMP_NUM_THREADS``)."""

    def __init__(self, gpus: Optional[int] = None, jobs: int = 1, poll: float = 0.5, threads: Optional[int] = None):
        if gpus is None:
            try:
                import torch

                gpus = torch.cuda.device_count()
            except Exception:  # noqa: BLE001 (no usable torch: no GPUs)
                gpus = 0
        self.gpus = gpus
        self.jobs = max(1, jobs)
        self.slots = gpus if gpus > 0 else self.jobs
        self.poll = poll
        self.processes = CellProcesses()
        #: the torch threads each cell gets (OMP_NUM_THREADS), decided once: the runner judges records by it
        self.threads = threads if threads is not None else cpu_threads(self.jobs)

    def stop(self) -> None:
        """SIGTERM to every running cell, and no new one starts; :meth:`run` returns once they have exited."""
        self.processes.stop_all()

    def run(self, cells: Sequence[Cell], done: Done) -> None:
        queue = list(cells)
        free = list(range(self.slots))
        lock = threading.Lock()
        threads: List[threading.Thread] = []

        def work(cell: Cell, slot: int) -> None:
            # whatever goes wrong starting or running the cell is that cell's error: the slot always comes back
            try:
                env = dict(os.environ)
                if self.gpus > 0:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                env["OMP_NUM_THREADS"] = str(self.threads)  # also a device=cpu cell on a GPU machine
                res = run_cell_process(cell.out, cell_command(cell), env, self.processes)
            except KeyboardInterrupt:  # stopping: the cell never started
                res = {"returncode": 130, "seconds": 0.0, "stopped": True}
            except BaseException as e:  # noqa: BLE001 (a thread that dies silently hangs the suite)
                res = record_cell_error(cell.out, e)
            finally:
                with lock:
                    free.append(slot)
            try:
                done(cell, res)
            except Exception as e:  # noqa: BLE001
                print(f"[bench] reporting {cell.name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

        while (queue and not self.processes.stopping.is_set()) or any(t.is_alive() for t in threads):
            with lock:
                can_start = bool(queue) and bool(free) and not self.processes.stopping.is_set()
                slot = free.pop(0) if can_start else None
            if can_start:
                t = threading.Thread(target=work, args=(queue.pop(0), slot), daemon=True)
                t.start()
                threads.append(t)
            else:
                time.sleep(self.poll)
        for t in threads:
            t.join()
        for cell in queue:  # stopped before they started: each is reported, none ran
            done(cell, {"returncode": None, "seconds": 0.0, "stopped": True, "not_started": True})


def _submitit_job(cell_out: str, cmd: List[str], threads: int) -> Dict[str, Any]:
    return run_cell_process(cell_out, cmd, dict(os.environ, OMP_NUM_THREADS=str(threads)))


class SubmititExecutor:
    """Run cells as Slurm jobs (or local submitit jobs for testing) through submitit."""

    def __init__(
        self,
        folder: str,
        cluster: Optional[str] = None,
        partition: Optional[str] = None,
        timeout_min: int = 24 * 60,
        gpus_per_node: int = 1,
        cpus_per_task: int = SLURM_CPUS_PER_TASK,
        parallelism: int = 32,
    ):
        try:
            import submitit
        except ImportError as e:
            raise DatafreeError("the slurm executor needs submitit: pip install 'datafree[slurm]'") from e
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params: Dict[str, Any] = {"timeout_min": timeout_min}
        if self.executor.cluster == "slurm":
            params.update(gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, slurm_array_parallelism=parallelism)
            if partition:
                params["slurm_partition"] = partition
        self.executor.update_parameters(**params)
        #: the torch threads each job gets (its CPUs): what a device=cpu cell's identity counts
        self.threads = cpus_per_task
        self._jobs: List[Any] = []
        self._stopping = False

    def stop(self) -> None:
        """Cancel every job (Slurm sends each cell SIGTERM; it saves its attempt); their wait goes on."""
        self._stopping = True
        for job in self._jobs:
            with contextlib.suppress(Exception):
                job.cancel(check=False)

    def run(self, cells: Sequence[Cell], done: Done) -> None:
        pending = []
        for c in cells:
            if self._stopping:  # stopped before it was submitted: reported, not run
                done(c, {"returncode": None, "seconds": 0.0, "stopped": True, "not_started": True})
                continue
            try:
                job = self.executor.submit(_submitit_job, c.out, cell_command(c), self.threads)
                self._jobs.append(job)
                pending.append((c, job))
            except Exception as e:  # noqa: BLE001 (a refused submission is that cell's error)
                done(c, record_cell_error(c.out, e))
        while pending:
            still = []
            for cell, job in pending:
                if not job.done():
                    still.append((cell, job))
                    continue
                try:
                    res = job.result()
                except Exception as e:  # the job itself died (time limit, node failure, cancelled)
                    res = (
                        {"returncode": 143, "seconds": 0.0, "stopped": True}
                        if self._stopping
                        else record_cell_error(cell.out, e)
                    )
                try:
                    done(cell, res)
                except Exception as e:  # noqa: BLE001 (reporting one cell must not end the wait for the others)
                    print(f"[bench] reporting {cell.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            pending = still
            if pending:
                time.sleep(1.0)


def make_executor(name: str, out: str, **opts: Any):
    """The executor ``name`` (local, slurm, submitit-local); ``threads`` (local) is the torch thread count each
    cell gets, as the runner decided it."""
    if name == "local":
        return LocalExecutor(gpus=opts.get("gpus"), jobs=opts.get("jobs") or 1, threads=opts.get("threads"))
    if name in ("slurm", "submitit-local"):
        return SubmititExecutor(
            os.path.join(out, "submitit"),
            cluster="local" if name == "submitit-local" else None,
            partition=opts.get("partition"),
            timeout_min=opts.get("timeout_min") or 24 * 60,
            gpus_per_node=opts.get("gpus_per_job") or 1,
        )
    raise UnknownNameError("executor", name, ["local", "slurm", "submitit-local"])
