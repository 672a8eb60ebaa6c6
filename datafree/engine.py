"""The one training loop: synthesize -> distill -> evaluate -> checkpoint.

Each epoch runs rounds until ``ep_steps`` student steps are done: a round is
one ``synthesizer.synthesize()`` followed by ``kd_steps`` student steps, each
on ``synthesizer.sample(batch_size)``. During the first ``warmup`` epochs only
synthesis runs (Fast-DFKD). After every epoch the student is evaluated (every
``eval_every`` epochs and always after the last) and a checkpoint is written
atomically, so ``--resume`` continues a killed run from its last epoch with the
same random state: the resumed run ends in the same state as an uninterrupted
one.
"""

from __future__ import annotations

import datetime
import math
import os
import random
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from . import identity, loggers, results
from .config import RunConfig, config_yaml, to_dict, validate
from .data import get_source, iterate_eval
from .errors import CheckpointError, ConfigError, DatafreeError, first_line
from .health import Guard, collapse_streak
from .lock import LOCK_NAME, DirLock
from .meter import Meter
from .models import create_model, load_state, save_model
from .methods import method_folder
from .teacher import describe as describe_teacher, load_teacher, name_from_file, source_of
from .registry import DISTILLERS, SYNTHESIZERS, load_plugins
from .runtime import precision_name, tune_cpu_malloc, use_channels_last
from .synthesis.base import Amp, Context
from .zoo import measured_accuracy, remember_accuracy

CHECKPOINT = "checkpoint.pt"
BEST_STUDENT = "student_best.pt"  # keep=best: the student of the best evaluation
ATTEMPTS = "attempts.json"
#: student steps between two reads of the divergence flags (the only host syncs the checks cost)
CHECK_EVERY = 50


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available here; use device=cpu or auto")
    return dev


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[-1], tuple(int(v) for v in py[:-1]), state.get("python_gauss")))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_distributed() -> tuple:
    """(rank, world_size, local_rank) under torchrun (WORLD_SIZE > 1), else (0, 1, 0).

    Uses NCCL on CUDA and gloo on CPU; the process group is created once.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def default_run_dir(cfg: RunConfig) -> str:
    teacher = (name_from_file(cfg.teacher, cfg.dataset) or "none").replace("/", "-")  # timm/x: one folder
    name = f"{teacher}-{cfg.student}-s{cfg.seed}" + (f"-{cfg.tag}" if cfg.tag else "")
    return os.path.join(
        "results", "runs", cfg.dataset.replace(":", "_").replace("/", "_"), method_folder(cfg.method), name
    )


def _mean_logs(acc: Dict[str, List[torch.Tensor]]) -> Dict[str, float]:
    out = {}
    for k, vs in acc.items():
        if vs:
            out[k] = float(torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().cpu() for v in vs]).mean())
    return out


# --------------------------------------------------------------------------- the engine


class Engine:
    """Build everything a run needs from its config, then :meth:`run` it."""

    def __init__(
        self, cfg: RunConfig, resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = None
    ):
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.out_dir = os.path.abspath(cfg.out or default_run_dir(cfg))
        self.metrics: List[Dict[str, Any]] = []
        self.start_epoch = 0
        self.logger: loggers.Logger = loggers.NullLogger()  # the run's log= logger(s), opened by run() on rank 0
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.lock: Optional[DirLock] = None
        self.identity: Optional[identity.Identity] = None
        self.previous_summary: Optional[Dict[str, Any]] = None
        self.attempts: List[Dict[str, Any]] = []
        self._attempt_t0 = time.time()
        self._attempt_saved = 0.0
        self._finished = False
        self._backup: Optional[str] = None

    # -- setup -------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _prepare_dir(self) -> Optional[Dict[str, Any]]:
        """Check the run directory against the run's identity; clear it if asked. Returns a checkpoint to resume.

        The directory is locked already (rank 0). On several ranks, rank 0 clears the directory and every
        rank reads the checkpoint (rank r > 0 adds its own synthesizer and random state from
        ``checkpoint.rank<r>.pt``).
        """
        d = self.out_dir
        ckpt_path = os.path.join(d, CHECKPOINT)
        leftover = os.path.join(d, self.BACKUP)
        if self.is_main and os.path.isdir(leftover):  # an --overwrite killed during its setup: the old run is back
            self._backup = leftover
            if self.overwrite:
                shutil.rmtree(leftover)
                self._backup = None
            else:
                self._restore_backup()
                self.log(f"{d}: restored the records an interrupted --overwrite had moved aside")
        has_records = identity.has_records(d)
        if has_records and not self.resume and not self.overwrite:
            raise DatafreeError(
                f"run directory {d} already holds a run. Use --resume to continue it, --overwrite to start it "
                "again (its records are deleted), or out=<new dir> for a separate run"
            )
        if has_records and self.resume and not self.overwrite:
            old = identity.read_identity(d)
            if not identity.same_run(old, self.identity):
                raise DatafreeError(
                    f"cannot resume {d}: it holds a run of another config or teacher "
                    f"({identity.differences(old, self.identity)}). Use --overwrite to start it again, "
                    "or out=<new dir> for a separate run"
                )
        barrier(self.world_size)
        if self.is_main:
            if self.overwrite and has_records:
                # moved aside, not deleted: they come back if the new run fails to set up (a teacher that does
                # not fit, a bad method value), and go once it is set up
                b = os.path.join(d, self.BACKUP)
                if os.path.isdir(b):
                    shutil.rmtree(b)
                os.makedirs(b)
                for name in os.listdir(d):
                    if name not in (LOCK_NAME, self.BACKUP):
                        os.rename(os.path.join(d, name), os.path.join(b, name))
                self._backup = b
            os.makedirs(d, exist_ok=True)
            results.remove_stale_temporaries(d)
        barrier(self.world_size)
        summary_path = os.path.join(d, "summary.json")
        if self.resume and os.path.isfile(summary_path):
            try:
                self.previous_summary = results.read_json(summary_path)
            except (OSError, ValueError):
                self.previous_summary = None
        if self.resume and os.path.isfile(ckpt_path):
            try:
                state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
                if not self.is_main:
                    own = torch.load(self._rank_checkpoint_path(), map_location="cpu", weights_only=True)
                    state.update(own)
            except Exception as e:
                first = first_line(e)
                raise CheckpointError(
                    f"cannot resume: {ckpt_path} is unreadable ({type(e).__name__}: {first}); "
                    "use --overwrite to start the run again"
                ) from e
            if not isinstance(state, dict) or not all(k in state for k in ("epoch", "student", "rng", "metrics")):
                raise CheckpointError(f"cannot resume: {ckpt_path} is not a datafree run checkpoint; use --overwrite")
            return state
        return None

    def _rank_checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, f"checkpoint.rank{self.rank}.pt")

    def setup(self) -> None:
        """Validate, lock the run directory, then build everything; a failed setup leaves no empty directory."""
        cfg = self.cfg
        load_plugins(cfg.plugins)
        if cfg.synthesizer not in SYNTHESIZERS:
            SYNTHESIZERS.get(cfg.synthesizer)  # raises with suggestions
        if cfg.distiller not in DISTILLERS:
            DISTILLERS.get(cfg.distiller)
        validate(cfg)
        self._attempt_t0 = time.time()  # an attempt's wall time includes its setup (data, teacher measurement)
        self.teacher_file = identity.teacher_path(cfg)  # before any file is written
        self.identity = identity.run_identity(cfg, self.teacher_file)
        self.rank, self.world_size, self.local_rank = init_distributed()
        created = not os.path.isdir(self.out_dir)
        if self.is_main:
            self.lock = DirLock(self.out_dir, "run directory").acquire()
        try:
            self._setup()
        except BaseException:
            logger, self.logger = self.logger, loggers.NullLogger()
            logger.close()
            if self.is_main:
                self._restore_backup()
                if created:
                    self._remove_if_empty()
            self.release()
            raise
        if self.is_main and self._backup is not None:  # the new run is set up: the old records can go
            shutil.rmtree(self._backup, ignore_errors=True)
            self._backup = None

    BACKUP = ".overwritten"

    def _restore_backup(self) -> None:
        """Put back the records that --overwrite moved aside, when the new run failed to set up."""
        b = self._backup
        if b is None or not os.path.isdir(b):
            return
        results.empty_directory(self.out_dir, keep=(LOCK_NAME, self.BACKUP))  # what the failed setup wrote
        for name in os.listdir(b):
            os.rename(os.path.join(b, name), os.path.join(self.out_dir, name))
        os.rmdir(b)
        self._backup = None

    def _remove_if_empty(self) -> None:
        """Remove a run directory this process created and left without records (only the lock, temporaries)."""
        d = self.out_dir
        try:
            left = [n for n in os.listdir(d) if n not in (LOCK_NAME, self.BACKUP) and not n.endswith(".tmp")]
            if not left:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        tune_cpu_malloc(cfg.cpu_malloc)
        self.device = resolve_device(cfg.device)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
        source = get_source(cfg.dataset)
        self.spec = source.spec
        test = source.load("test", cfg.data_root)
        self.test_split = test.to(self.device)
        if self.spec.num_classes == 0:  # image folders learn their class count on load
            raise ConfigError(f"dataset {cfg.dataset} has no classes")
        self.checkpoint = self._prepare_dir()
        seed_everything(cfg.seed)
        self.amp = Amp(self.device, cfg.amp)
        channels_last = use_channels_last(cfg.channels_last, self.device)

        self.teacher, self.teacher_info = None, {}
        if self.teacher_file is not None:  # identity.teacher_path decided whether the method needs one
            model, record = load_teacher(
                self.teacher_file, dataset=cfg.dataset, arch=cfg.teacher_arch, device=self.device, spec=self.spec
            )
            self.teacher = model.to(memory_format=torch.channels_last) if channels_last else model
            self.teacher_info = dict(record)
        self.student = create_model(cfg.student, self.spec.num_classes, self.spec.channels, self.spec.size).to(
            self.device
        )
        if channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.ctx = Context(
            self.teacher,
            self.student,
            self.spec,
            self.device,
            cfg=cfg,
            amp=self.amp,
            out_dir=self.out_dir,
            channels_last=channels_last,
            rank=self.rank,
            world_size=self.world_size,
            teacher_record=self.teacher_info,
        )
        if self.world_size > 1:
            seed_everything(cfg.seed + 1000 * self.rank)  # each rank synthesises with its own seed
        try:  # a value only the method can judge (an unknown generator output, a pool dtype) is still bad input
            self.synth = SYNTHESIZERS.build(cfg.synthesizer, self.ctx, **cfg.synth)
            self.distiller = DISTILLERS.build(cfg.distiller, self.ctx, **cfg.distill)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            if isinstance(e, DatafreeError):
                raise
            first = first_line(e)
            raise ConfigError(
                f"method {cfg.method} cannot be built from its synth/distill values "
                f"({type(e).__name__}: {first}); check them with --print-config"
            ) from e
        # the synthesizer's own autocast policy (fp32 for the inversion methods under amp=auto on CUDA)
        self.synth_amp = getattr(getattr(self.synth, "ctx", None), "amp", None) or self.amp
        if self.is_main and self.synth_amp.mode != self.amp.mode:  # docs/precision.md
            self.log(
                f"precision: synthesis {precision_name(self.synth_amp.mode)}, "
                f"student steps {precision_name(self.amp.mode)} (amp={cfg.amp})"
            )
        self.ctx.total_steps = (cfg.epochs - cfg.warmup) * self.ep_steps
        if cfg.compile:
            self._compile()
        self.meter = Meter(self.device, self.ctx.world_size)
        self.guard = Guard(self.device)
        if self.teacher is not None:
            self._measure_teacher()
            if self.is_main and not self.checkpoint:  # once the run is set up: a failed setup says only why
                self.log(
                    f"teacher: {describe_teacher(self.teacher_info)}, test accuracy "
                    f"{self.teacher_info['accuracy']:.2f}%"
                )
        if self.checkpoint is not None:
            self._load_checkpoint(self.checkpoint)
        self._open_logger()  # after the checkpoint: a resumed run's logs go on after its epoch
        if self.checkpoint is None and self.is_main:
            identity.write_identity(self.out_dir, self.identity)
            results.atomic_write_text(os.path.join(self.out_dir, "config.yaml"), config_yaml(cfg))

    def _open_logger(self) -> None:
        """The run's ``log=`` logger(s), on rank 0, unless the run is already finished. A logger that fails to
        start (wandb.init refused, say) fails the setup; what it left in a fresh run's directory goes with it."""
        prev = self.previous_summary
        if not self.is_main or (prev is not None and not run_on_after_collapse(prev, self.cfg)):
            return
        fresh = self.checkpoint is None
        before = set(os.listdir(self.out_dir)) if fresh else set()
        try:
            self.logger = loggers.open_logger(
                self.cfg.log, self.out_dir, os.path.basename(self.out_dir), start_step=self.start_epoch
            )
        except BaseException:
            for name in (set(os.listdir(self.out_dir)) - before) if fresh else ():
                path = os.path.join(self.out_dir, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            raise
        self.logger.config(
            {
                **to_dict(self.cfg),
                "run_id": os.path.basename(self.out_dir),
                "fingerprint": self.identity.fingerprint if self.identity else None,
            }
        )

    def _measure_teacher(self) -> None:
        """The teacher's test accuracy, measured once per (sha256, dataset) and cached in the zoo."""
        sha = self.teacher_info["sha256"]
        amp = self.amp.mode
        arch = self.teacher_info.get("arch")
        acc = measured_accuracy(sha, self.cfg.dataset, self.cfg.model_zoo, amp=amp, arch=arch)
        if acc is None:
            acc = self.evaluate(self.teacher)
            if self.is_main:
                remember_accuracy(
                    sha, self.cfg.dataset, acc, self.teacher_info["path"], self.cfg.model_zoo, amp=amp, arch=arch
                )
        self.teacher_info["accuracy"] = acc

    # -- attempts: wall time across every process that worked on this run --------------------
    def _start_attempt(self) -> None:
        path = os.path.join(self.out_dir, ATTEMPTS)
        try:  # the directory holds this run's identity (or nothing): every earlier attempt was this run's
            self.attempts = list(results.read_json(path).get("attempts", []))
        except (OSError, ValueError, AttributeError):
            self.attempts = []
        self.attempts.append(
            {
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "pid": os.getpid(),
                "seconds": 0.0,
                "from_epoch": self.start_epoch,
            }
        )
        self._save_attempts(force=True)

    def _save_attempts(self, force: bool = False) -> None:
        """Record this attempt's wall time so far (since its setup began): at every checkpoint, and after every
        synthesis round at most every 10 s, so a SIGKILL loses at most 10 s of it (or one round, if longer)."""
        if not self.is_main or not self.attempts or self._finished:
            return
        now = time.time()
        if not force and now - self._attempt_saved < 10:
            return
        self.attempts[-1]["seconds"] = round(now - self._attempt_t0, 3)
        results.atomic_write_json(os.path.join(self.out_dir, ATTEMPTS), {"attempts": self.attempts})
        self._attempt_saved = now

    @property
    def ep_steps(self) -> int:
        if self.cfg.ep_steps is not None:
            return self.cfg.ep_steps
        n = getattr(self.synth, "epoch_length", None) if hasattr(self, "synth") else None
        if n:
            return int(math.ceil(n / self.cfg.batch_size))
        return int(math.ceil(max(1, self.spec.train_size) / self.cfg.batch_size))

    def _compile(self) -> None:
        self.student.forward = torch.compile(self.student.forward)
        if self.teacher is not None:
            self.teacher.forward = torch.compile(self.teacher.forward)

    # -- checkpoints -------------------------------------------------------
    def _checkpoint_state(self, epoch: int) -> Dict[str, Any]:
        return {
            "epoch": epoch,
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "distiller": self.distiller.state_dict(),
            "synthesizer": self.synth.state_dict(),
            "meter": self.meter.state_dict(),
            "metrics": self.metrics,
            "rng": rng_state(),
            "ctx": {"step": self.ctx.step, "round": self.ctx.round},
            "teacher_info": {k: v for k, v in self.teacher_info.items() if v is not None},
        }

    def save_checkpoint(self, epoch: int) -> None:
        state = self._checkpoint_state(epoch)
        if self.is_main:
            results.atomic_torch_save(state, os.path.join(self.out_dir, CHECKPOINT))
            self._save_attempts(force=True)  # the wall time that produced this checkpoint is on record with it
        else:  # the model, optimiser and records are rank 0's; a rank keeps its own data side and randomness
            results.atomic_torch_save(
                {"synthesizer": state["synthesizer"], "rng": state["rng"]}, self._rank_checkpoint_path()
            )
        barrier(self.world_size)

    def save_best(self, epoch: int, acc: float) -> None:
        """``keep=best``: write the student as ``student_best.pt`` when ``acc`` beats every earlier evaluation
        on record (rank 0, after the evaluation is recorded; a resumed run compares with the records it kept)."""
        earlier = [m["acc"] for m in self.metrics[:-1] if isinstance(m.get("acc"), (int, float))]
        if earlier and acc <= max(earlier):
            return
        save_model(
            os.path.join(self.out_dir, BEST_STUDENT),
            self.student,
            self.cfg.student,
            self.cfg.dataset,
            self.spec.as_dict(),
            extra={"accuracy": acc, "epoch": epoch + 1},
        )

    def _load_checkpoint(self, state: Dict[str, Any]) -> None:
        try:
            load_state(self.student, state["student"], "the run's checkpoint")
            self.distiller.load_state_dict(state["distiller"])
            self.synth.load_state_dict(state["synthesizer"])
            self.meter.load_state_dict(state["meter"])
            self.metrics = list(state["metrics"])
            self.ctx.step = int(state["ctx"]["step"])
            self.ctx.round = int(state["ctx"]["round"])
            self.start_epoch = int(state["epoch"]) + 1
            set_rng_state(state["rng"])
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume {self.out_dir}: {e}; use --overwrite to start it again") from e
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"cannot resume: {os.path.join(self.out_dir, CHECKPOINT)} does not fit this run "
                f"({type(e).__name__}: {e}); use --overwrite to start it again"
            ) from e
        if self.is_main:  # drop any record written after the checkpoint the run resumes from
            results.atomic_write_jsonl(os.path.join(self.out_dir, "metrics.jsonl"), self.metrics)
            self.log(f"resuming {self.out_dir} after epoch {self.start_epoch}")

    # -- evaluation --------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Optional[nn.Module] = None) -> float:
        """Top-1 accuracy (%) on the test split, of ``model`` or of the distiller's deployed student."""
        correct, total = 0, 0
        predict = self.distiller.predict if model is None else None
        if model is not None:
            model.eval()
        else:
            self.distiller.eval()
        for x, y in iterate_eval(self.test_split, self.spec, self.cfg.eval_batch_size, self.device):
            x = self.ctx.to_device(x) if hasattr(self, "ctx") else x
            if predict is not None:
                logits = predict(x)
            else:
                with self.amp.autocast():
                    logits = model(x)
            correct += (logits.argmax(1) == y).sum()
            total += y.numel()
        return 100.0 * float(correct) / max(1, total)

    def save_samples(self, epoch: int) -> Optional[str]:
        if self.cfg.samples <= 0:
            return None
        from .report import save_sample_grid

        with torch.no_grad():
            x = self.synth.preview(self.cfg.samples)
            if self.teacher is not None:
                with self.amp.autocast():
                    labels = self.teacher(x).argmax(1)
            else:
                batch = self.synth.sample(self.cfg.samples)
                labels = batch[1] if isinstance(batch, tuple) else None
            images = self.ctx.normalizer.denormalize(x.float()).clamp(0, 1)
        path = os.path.join(self.out_dir, f"samples_{epoch:04d}.png")
        save_sample_grid(images, labels, path)
        if not isinstance(self.logger, loggers.NullLogger):
            import torchvision

            # at the step of the epoch's scalars (epoch + 1), beside the accuracy of the same student
            self.logger.image("samples", torchvision.utils.make_grid(images.cpu(), nrow=8), epoch + 1)
        return path

    # -- the loop ----------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        self.setup()
        try:
            prev = self.previous_summary
            if prev is not None and not run_on_after_collapse(prev, self.cfg):  # same identity: the record stands
                self.log(f"{self.out_dir} is already finished ({prev.get('status', 'finished')})")
                return prev
            if self.is_main:
                self._start_attempt()
            try:
                summary = self._loop()
                barrier(self.world_size)  # no rank tears its process group down while another still uses it
                return summary
            finally:
                self.synth.close()
                logger, self.logger = self.logger, loggers.NullLogger()
                logger.close()
                if self.world_size > 1:
                    import torch.distributed as dist

                    self.distiller.release_distributed()
                    if dist.is_initialized():
                        dist.destroy_process_group()
        finally:
            self._save_attempts(force=True)
            self.release()

    def _check_health(self, epoch: int, weights: bool = True) -> Optional[Dict[str, Any]]:
        """Read the divergence flags (one host sync); the divergence record, or None while all is finite."""
        bad = self.guard.first_failure()
        if bad is None and weights and not all_finite(self.student):
            bad = (self.ctx.step, "student weights non-finite")
        if self.world_size > 1:  # every rank stops together, at the earliest failure of any rank
            import torch.distributed as dist

            never = 2**62
            first = torch.tensor([bad[0] if bad is not None else never], dtype=torch.long, device=self.device)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            step = int(first.item())
            if step == never:
                return None
            reasons: List[Any] = [None] * self.world_size  # a failure is rare: the names can travel as objects
            dist.all_gather_object(reasons, bad)
            rank, (step, reason) = min(
                ((r, b) for r, b in enumerate(reasons) if b is not None), key=lambda rb: rb[1][0]
            )
            bad = (step, reason if rank == self.rank else f"rank {rank}: {reason}")
        if bad is None:
            return None
        step, reason = bad
        return {"epoch": epoch + 1, "step": int(step), "reason": reason}

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision (it alone evaluates), on every rank."""
        if self.world_size <= 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.long, device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def _loop(self) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        ep_steps = self.ep_steps
        kd_steps = cfg.kd_steps or ep_steps
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.epochs * ep_steps,
                initial=self.start_epoch * ep_steps,
                unit="step",
                desc=f"{cfg.method} {cfg.teacher or ''}->{cfg.student}",
                leave=False,
                dynamic_ncols=True,
                mininterval=1.0,
                file=sys.stderr,
            )
        wall0 = time.time()
        guard = self.guard
        diverged: Optional[Dict[str, Any]] = None
        collapsed = False
        next_check = ctx.step + CHECK_EVERY
        for epoch in range(self.start_epoch, cfg.epochs):
            ctx.epoch = epoch
            train_student = epoch >= cfg.warmup
            self.synth.on_epoch_start(epoch)
            synth_logs: Dict[str, List[torch.Tensor]] = {}
            dist_logs: Dict[str, List[torch.Tensor]] = {}
            done = 0
            while done < ep_steps:
                with self.meter.phase("synthesis"):
                    logs = self.synth.synthesize() or {}
                    for k, v in logs.items():
                        synth_logs.setdefault(k, []).append(torch.as_tensor(v).detach())
                    guard.watch(ctx.step, "synthesis loss non-finite", logs.values())
                    guard.flags(ctx.step, self.synth.health_checks())
                ctx.round += 1
                self._save_attempts()  # at most every 10 s: a SIGKILL loses at most that much wall time
                n = min(kd_steps, ep_steps - done)
                if train_student:
                    with self.meter.phase("distill"):
                        for _ in range(n):
                            batch = self.synth.sample(cfg.batch_size)
                            x, y = batch if isinstance(batch, tuple) else (batch, None)
                            logs = self.distiller.step(ctx.to_device(x), y)
                            for k, v in logs.items():
                                dist_logs.setdefault(k, []).append(torch.as_tensor(v).detach())
                            guard.watch(ctx.step, "student loss non-finite", logs.values())
                            guard.flags(ctx.step, self.distiller.health_checks())
                            ctx.step += 1
                            self.meter.images_seen += x.shape[0]
                done += n
                if bar is not None:
                    bar.update(n)
                if ctx.step >= next_check and done < ep_steps:  # a log point inside a long epoch
                    next_check = ctx.step + CHECK_EVERY
                    diverged = self._check_health(epoch)
                    if diverged is not None:
                        break
                    self._save_attempts()
            if diverged is None:
                diverged = self._check_health(epoch)
            if diverged is not None:
                break
            self.meter.images_synthesized = self.synth.images_synthesized
            if train_student:
                self.distiller.on_epoch_end()
            last = epoch == cfg.epochs - 1
            acc_bad = False
            if train_student and self.is_main and ((epoch + 1) % max(1, cfg.eval_every) == 0 or last):
                with self.meter.phase("eval"):
                    acc = self.evaluate()
                    self.save_samples(epoch)
                if not math.isfinite(acc):  # cannot happen for a top-1 count, but a plugin's predict may
                    acc_bad = True
            if self._agree(acc_bad):
                diverged = {"epoch": epoch + 1, "step": ctx.step, "reason": "accuracy non-finite"}
                break
            if train_student and self.is_main and ((epoch + 1) % max(1, cfg.eval_every) == 0 or last):
                record = {
                    "epoch": epoch + 1,
                    "acc": acc,
                    "lr": self.distiller.lr,
                    "step": ctx.step,
                    "images_synthesized": self.meter.images_synthesized,
                    "images_seen": self.meter.images_seen,
                    "seconds": self.meter.total_seconds,
                    # cumulative seconds per phase (synthesis, distill, eval, other): per-epoch times
                    # without evaluation, e.g. for benchmarks/parity
                    "phase_seconds": {k: round(v, 4) for k, v in self.meter.seconds.items()},
                    "synth": _mean_logs(synth_logs),
                    "distill": _mean_logs(dist_logs),
                }
                self.metrics.append(record)
                results.atomic_write_jsonl(os.path.join(self.out_dir, "metrics.jsonl"), self.metrics)
                if cfg.keep == "best":
                    self.save_best(epoch, acc)
                # the record's numbers at step epoch + 1: acc, lr, ..., synth/<loss>, distill/<loss>
                scalars = {("student_steps" if k == "step" else k): v for k, v in record.items() if k != "epoch"}
                self.logger.scalars(loggers.flatten(scalars), epoch + 1)
                best = max(m["acc"] for m in self.metrics)
                if bar is not None:
                    bar.set_postfix(epoch=epoch + 1, acc=f"{acc:.2f}", best=f"{best:.2f}", refresh=False)
                else:
                    self.log(
                        f"epoch {epoch + 1}/{cfg.epochs}: acc {acc:.2f} (best {best:.2f}), "
                        f"{self.meter.total_seconds:.0f} s"
                    )
                if cfg.stop_on_collapse and self._collapsed():
                    self.log(
                        f"accuracy at chance for {cfg.collapse_patience} evaluations in a row: stopping "
                        "(stop_on_collapse)"
                    )
                    collapsed = True
            collapsed = self._agree(collapsed)
            with self.meter.phase("other"):
                self.save_checkpoint(epoch)
            if collapsed:
                break
        if bar is not None:
            bar.close()
        if diverged is not None:
            self.log(f"diverged at epoch {diverged['epoch']}, step {diverged['step']}: {diverged['reason']}")
        return self.finish(time.time() - wall0, diverged=diverged, stopped=collapsed)

    def _collapsed(self) -> bool:
        """True when the last ``collapse_patience`` evaluations after the first ``collapse_grace`` sat at chance."""
        accs = [m["acc"] for m in self.metrics][self.cfg.collapse_grace :]
        return collapse_streak(accs, self.spec.num_classes) >= self.cfg.collapse_patience

    def _ranks_in_sync(self) -> bool:
        """True when every rank ends with the same student weights (DDP kept them together)."""
        import torch.distributed as dist

        total = torch.stack([p.detach().double().sum() for p in self.student.parameters()]).sum().reshape(1)
        total = total.to(self.device)
        lo, hi = total.clone(), total.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(torch.isclose(lo, hi, rtol=0, atol=1e-9 * max(1.0, float(hi.abs()))).item())

    def teacher_name(self) -> Optional[str]:
        """The configured teacher's model name (also for methods that do not load it, e.g. scratch)."""
        return name_from_file(self.cfg.teacher, self.cfg.dataset)

    def finish(self, wall: float, diverged: Optional[Dict[str, Any]] = None, stopped: bool = False) -> Dict[str, Any]:
        cfg = self.cfg
        accs = [m["acc"] for m in self.metrics if isinstance(m.get("acc"), (int, float)) and math.isfinite(m["acc"])]
        collapsed = diverged is None and self._collapsed()
        status = "diverged" if diverged is not None else ("collapsed" if collapsed else "finished")
        if self.is_main and diverged is None:  # a diverged student's weights are not a model
            save_model(
                os.path.join(self.out_dir, "student.pt"),
                self.student,
                cfg.student,
                cfg.dataset,
                self.spec.as_dict(),
                extra={
                    "accuracy": accs[-1] if accs else None,
                    "extra_modules": {
                        k: {n: t.detach().cpu() for n, t in m.state_dict().items()}
                        for k, m in self.distiller.extra_modules().items()
                    },
                    **self.distiller.export_extra(),
                },
            )
        if self.is_main:  # what the method keeps past its checkpoint (a pool method's pool.pt), diverged or not
            for name, obj in self.synth.final_files().items():
                results.atomic_torch_save(obj, os.path.join(self.out_dir, name))
        teacher_name = self.teacher_info.get("arch") or self.teacher_name()
        self._save_attempts(force=True)
        self._finished = True  # the summary's wall time is the record's last word
        summary = {
            "run_id": os.path.basename(self.out_dir),
            "status": status,
            "fingerprint": self.identity.fingerprint if self.identity else None,
            "method": cfg.method,
            "synthesizer": cfg.synthesizer,
            "distiller": cfg.distiller,
            "dataset": cfg.dataset,
            "teacher": teacher_name,
            "teacher_path": self.teacher_info.get("path"),
            "teacher_sha256": self.teacher_info.get("sha256"),
            "student": cfg.student,
            "pair": f"{teacher_name}->{cfg.student}" if teacher_name else cfg.student,
            "seed": cfg.seed,
            "suite": cfg.suite,
            "tag": cfg.tag,
            "uses_real_data": cfg.uses_real_data or getattr(self.synth, "real_data", ""),
            "epochs": cfg.epochs,
            "evaluations": len(accs),
            "last_acc": accs[-1] if accs else None,
            "best_acc": max(accs) if accs else None,
            "mean_acc": float(np.mean(accs)) if accs else None,
            "var_acc": float(np.var(accs)) if accs else None,
            "teacher_acc": self.teacher_info.get("accuracy"),
            "teacher_acc_stored": self.teacher_info.get("stored_accuracy"),
            "teacher_source": source_of(self.teacher_info) if self.teacher_info else None,
            "device": str(self.device),
            # autocast modes (off = fp32) of synthesis and of the student's steps (docs/precision.md)
            "precision": {"synthesis": self.synth_amp.mode, "distillation": self.amp.mode},
            "machine": results.machine(),
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": results.versions(),
        }
        if diverged is not None:
            summary["diverged"] = diverged
        if collapsed:
            summary["collapsed"] = True
            summary["collapse"] = {
                "chance": 100.0 / self.spec.num_classes,
                "evaluations_at_chance": collapse_streak(accs, self.spec.num_classes),
                "stopped": bool(stopped),
                "patience": cfg.collapse_patience,
                "grace": cfg.collapse_grace,
            }
        summary.update(self.meter.report())
        # total_seconds is the time inside the epochs the checkpoints kept; wall time counts every attempt,
        # the work a killed attempt lost after its last checkpoint included
        summary["checkpointed_seconds"] = summary["total_seconds"]
        summary["attempts"] = len(self.attempts)
        summary["wall_seconds"] = float(sum(a.get("seconds", 0.0) for a in self.attempts))
        summary["world_size"] = self.world_size
        if self.world_size > 1:  # every rank synthesised and trained on its own batches
            summary["ranks_in_sync"] = self._ranks_in_sync()
            summary["images_synthesized"] *= self.world_size
            summary["images_seen"] *= self.world_size
        summary.update(getattr(self.synth, "summary_extra", lambda: {})())
        if not self.is_main:
            return summary
        results.atomic_write_json(os.path.join(self.out_dir, "summary.json"), summary)
        if diverged is not None:
            last = f"{summary['last_acc']:.2f}" if accs else "none"
            self.log(
                f"{cfg.method} {summary['pair']} on {cfg.dataset}: DIVERGED at epoch {diverged['epoch']} step "
                f"{diverged['step']} ({diverged['reason']}); last finite accuracy {last} -> {self.out_dir}"
            )
        elif accs:
            self.log(
                f"{cfg.method} {summary['pair']} on {cfg.dataset}: last {summary['last_acc']:.2f} "
                f"best {summary['best_acc']:.2f} ({summary['total_seconds']:.0f} s)"
                + (" COLLAPSED to chance" if collapsed else "")
                + f" -> {self.out_dir}"
            )
        else:
            self.log(f"{cfg.method}: finished without evaluation -> {self.out_dir}")
        return summary


def run_on_after_collapse(summary: Dict[str, Any], cfg: RunConfig) -> bool:
    """True when a record stopped on collapse must run on: the request no longer stops there (another
    stop_on_collapse, collapse_patience or collapse_grace; those keys are outside the fingerprint)."""
    c = summary.get("collapse") or {}
    if summary.get("status") != "collapsed" or not c.get("stopped"):
        return False
    return (
        not cfg.stop_on_collapse
        or c.get("patience", cfg.collapse_patience) != cfg.collapse_patience
        or c.get("grace", cfg.collapse_grace) != cfg.collapse_grace
    )


def all_finite(module: nn.Module) -> bool:
    """True when every parameter of ``module`` is finite (one host sync)."""
    params = [p.detach() for p in module.parameters()]
    if not params:
        return True
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Run one distillation described by ``cfg``; return its summary."""
    return Engine(cfg, resume=resume, overwrite=overwrite).run()
