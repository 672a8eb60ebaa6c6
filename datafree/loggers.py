"""Where a run's numbers go besides its records: a CSV file, TensorBoard, Weights & Biases.

The records (``metrics.jsonl``, ``summary.json``) are written whatever ``log=`` says; a logger only lets a
run be watched. ``log=`` names one logger or several, comma-separated (``log=csv,tensorboard``);
``none`` (the default) logs nothing. Logging does not change results: ``log`` is not part of a run's
fingerprint.

========================  =================================================================================
``csv``                   ``<run>/log.csv``: a ``step`` column (the epoch), then one column per scalar, in
                          the order they first appeared (a scalar that appears later adds a column: the
                          file is rewritten atomically; otherwise each row is appended and flushed)
``tensorboard``           ``<run>/tensorboard/``: scalars, sample grids and the config (as text)
``wandb``                 ``<run>/wandb/``: a Weights & Biases run named after the run id, with the config;
                          offline unless ``WANDB_MODE`` says otherwise (``wandb sync <run>/wandb/offline-run-*``
                          uploads it later)
========================  =================================================================================

A resumed run continues its logs after the epoch of its checkpoint: the CSV file keeps its header and drops the
rows of later epochs (written by the attempt that was killed), TensorBoard hides those events (``purge_step``),
and the W&B run is continued under the same id.

Every logger has the same four calls (:class:`Logger`). A plugin adds one with ``@LOGGERS.register("name")`` on a
:class:`Logger` subclass whose constructor takes ``(run_dir, run_name, start_step)``; a ``requires`` tuple of
``(module, pip name)`` pairs lets a missing package fail when the config is checked, before any file is written.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import secrets
import string
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, DatafreeError, MissingPackageError, first_line
from .registry import Registry
from .results import atomic_write_text

LOGGERS = Registry("logger")


class Logger:
    """What the engine calls. Steps are epochs (1-based), the x axis of every logger."""

    #: ``(module, pip name)`` pairs the logger needs; checked by :func:`check` before a run writes anything
    requires: Tuple[Tuple[str, str], ...] = ()

    def config(self, values: Dict[str, Any]) -> None:
        """The run's resolved config (nested dict), once per attempt, before anything else is logged."""

    def scalars(self, values: Dict[str, float], step: int) -> None:
        """Numbers of one step; nested sections are flattened to ``section/key`` by the caller."""

    def image(self, name: str, grid: Any, step: int) -> None:
        """An image grid: a float tensor (channels, height, width) with values in [0, 1]."""

    def close(self) -> None:
        """Flush and release; called once, also when the run fails."""


@LOGGERS.register("none")
class NullLogger(Logger):
    """Logs nothing (``log=none``)."""

    def __init__(self, run_dir: str = "", run_name: str = "", start_step: int = 0):
        pass


class MultiLogger(Logger):
    """Several loggers at once (``log=csv,tensorboard``): every call goes to each, in order."""

    def __init__(self, loggers: Sequence[Logger]):
        self.loggers = list(loggers)

    def config(self, values: Dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.config(values)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.scalars(values, step)

    def image(self, name: str, grid: Any, step: int) -> None:
        for lg in self.loggers:
            lg.image(name, grid, step)

    def close(self) -> None:
        first: Optional[BaseException] = None
        for lg in self.loggers:  # every logger is closed, even when one of them fails to
            try:
                lg.close()
            except Exception as e:  # noqa: BLE001 - re-raised below
                first = first or e
        if first is not None:
            raise first


# --------------------------------------------------------------------------- choosing loggers


def names(spec: str) -> List[str]:
    """``"csv, tensorboard"`` -> ``["csv", "tensorboard"]``; ``none`` and empty entries drop out, repeats too."""
    out: List[str] = []
    for n in str(spec or "").split(","):
        n = n.strip()
        if n and n != "none" and n not in out:
            out.append(n)
    return out


def check(spec: str) -> List[str]:
    """The logger names of ``spec``, each known and with its packages installed; a clear error otherwise.

    Cheap (no import of the packages): the config check calls it before any file is written.
    """
    found = names(spec)
    for n in found:
        if n not in LOGGERS:
            raise ConfigError(f"log={spec!r}: {LOGGERS.unknown(n, list(LOGGERS))}")
        for module, pip_name in getattr(LOGGERS.get(n), "requires", ()):
            if not installed(module):
                raise missing(n, pip_name)
    return found


def installed(module: str) -> bool:
    """True when ``module`` can be imported (it is found; it is not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(name: str, pip_name: str) -> MissingPackageError:
    extra = f" (or pip install 'datafree[{name}]')" if name in ("wandb", "tensorboard") else ""
    return MissingPackageError(
        f"log={name} needs the {pip_name} package, which is not installed here: pip install {pip_name}{extra}"
    )


def open_logger(spec: str, run_dir: str, run_name: str, start_step: int = 0) -> Logger:
    """The logger(s) ``spec`` names, writing into ``run_dir``; ``start_step`` is the last step already done
    (a resumed run's checkpoint epoch, 0 for a new run): what an earlier attempt logged after it is dropped."""
    built: List[Logger] = []
    try:
        for n in check(spec):
            try:
                built.append(LOGGERS.build(n, run_dir, run_name, start_step))
            except ImportError as e:  # found by check(), but it does not import: a missing or broken dependency
                needs = dict(getattr(LOGGERS.get(n), "requires", ()))
                if e.name in needs:
                    raise missing(n, needs[e.name]) from e
                raise DatafreeError(
                    f"log={n}: its package does not import here ({type(e).__name__}: {e}); "
                    f"reinstall it (pip install --force-reinstall {' '.join(needs.values()) or n})"
                ) from e
    except BaseException:
        for lg in built:  # the ones already open are closed: no half-started W&B run is left behind
            try:
                lg.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise
    if not built:
        return NullLogger()
    return built[0] if len(built) == 1 else MultiLogger(built)


def flatten(record: Dict[str, Any], prefix: str = "") -> Dict[str, float]:
    """The numbers of a (nested) record as ``{"acc": .., "synth/loss_g": ..}``; other values are left out."""
    out: Dict[str, float] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, (int, float)):
            out[key] = v
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
            out[key] = float(v.item())
    return out


# --------------------------------------------------------------------------- csv


def _step_of(row: Dict[str, str]) -> Optional[float]:
    try:
        return float(row.get("step", ""))
    except (TypeError, ValueError):
        return None


@LOGGERS.register("csv")
class CSVLogger(Logger):
    """``<run>/log.csv``: ``step``, then one column per scalar; resumable, each row flushed as it is written."""

    FILE = "log.csv"

    def __init__(self, run_dir: str, run_name: str = "", start_step: int = 0):
        self.path = os.path.join(run_dir, self.FILE)
        self.columns: List[str] = ["step"]
        self.rows: List[Dict[str, str]] = []
        rewrite = False
        if os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                text = f.read()
            if text and not text.endswith("\n"):  # the last line of a killed write is cut: drop it
                text, rewrite = text[: text.rfind("\n") + 1], True
            reader = csv.DictReader(io.StringIO(text))
            self.columns = list(reader.fieldnames or ["step"])
            if "step" not in self.columns:
                self.columns.insert(0, "step")
            for row in reader:
                s = _step_of(row)
                if s is not None and s <= start_step:  # later rows are the killed attempt's: they are redone
                    self.rows.append({k: v for k, v in row.items() if k is not None})
                else:
                    rewrite = True
        if rewrite or not os.path.isfile(self.path):
            self._rewrite()
        self._file = open(self.path, "a", newline="")

    def _rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, restval="", lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())

    def scalars(self, values: Dict[str, float], step: int) -> None:
        row = {"step": _cell(step)}
        row.update({str(k): _cell(v) for k, v in values.items() if str(k) != "step"})
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:  # a new column: the header changes, so the whole file is written again (atomically)
            self.columns += new
            self._file.close()
            self._rewrite()
            self._file = open(self.path, "a", newline="")
        else:
            csv.DictWriter(self._file, fieldnames=self.columns, restval="", lineterminator="\n").writerow(row)
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _cell(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr: the shortest text that reads back the same


# --------------------------------------------------------------------------- tensorboard


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """``<run>/tensorboard/``: event files for TensorBoard."""

    requires = (("tensorboard", "tensorboard"),)

    def __init__(self, run_dir: str, run_name: str = "", start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what the killed attempt logged after its checkpoint
        self.writer = SummaryWriter(
            os.path.join(run_dir, "tensorboard"), purge_step=start_step + 1 if start_step > 0 else None
        )
        self.start_step = start_step

    def config(self, values: Dict[str, Any]) -> None:
        import yaml

        text = yaml.safe_dump(values, sort_keys=False, default_flow_style=None)
        self.writer.add_text(
            "config", "".join("    " + line + "\n" for line in text.splitlines()), self.start_step
        )  # indented: markdown shows it as code

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, name: str, grid: Any, step: int) -> None:
        self.writer.add_image(name, grid, step)

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- weights & biases


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """A Weights & Biases run in ``<run>/wandb/``.

    Offline by default: ``WANDB_MODE`` (``online``, ``offline``, ``disabled``) overrides it, and
    ``WANDB_PROJECT`` the project (default ``datafree``). The W&B run id is kept in ``<run>/wandb/datafree-id``
    so that a resumed run continues the same W&B run; a new (or overwritten) run starts a new one.
    """

    requires = (("wandb", "wandb"),)
    ID_FILE = "datafree-id"

    def __init__(self, run_dir: str, run_name: str = "", start_step: int = 0):
        import wandb

        base = os.path.join(run_dir, "wandb")
        os.makedirs(base, exist_ok=True)
        id_path = os.path.join(base, self.ID_FILE)
        run_id = None
        if start_step > 0 and os.path.isfile(id_path):
            with open(id_path) as f:
                run_id = f.read().strip() or None
        if run_id is None:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            atomic_write_text(id_path, run_id + "\n")
        mode = os.environ.get("WANDB_MODE") or "offline"
        try:
            self.run = wandb.init(
                dir=run_dir,
                id=run_id,
                resume="allow",
                name=run_name or None,
                mode=mode,
                project=os.environ.get("WANDB_PROJECT") or "datafree",
                # console off: the run's own output (progress bar, log lines) stays as it is
                settings=wandb.Settings(console="off", quiet=True),
            )
        except Exception as e:  # noqa: BLE001 - W&B raises many kinds; the user needs one line
            first = first_line(e)
            raise DatafreeError(
                f"log=wandb: wandb.init failed in mode {mode!r} ({type(e).__name__}: {first}); "
                "set WANDB_MODE=offline to log without a network, or run `wandb login`"
            ) from e
        self._wandb = wandb

    def config(self, values: Dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def image(self, name: str, grid: Any, step: int) -> None:
        if hasattr(grid, "detach"):  # (C, H, W) floats in [0, 1] -> (H, W, C) bytes, which W&B takes as they are
            grid = (grid.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        self.run.log({name: self._wandb.Image(grid)}, step=step)

    def close(self) -> None:
        self.run.finish()
