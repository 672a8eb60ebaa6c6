"""What the loop calls at named points, besides the method: logging, sample grids, keep-best, the collapse
stop and the progress bar.

A :class:`Hook` declares every point the loop calls (Lightning's callbacks are the model); a hook overrides
the ones it needs. Hooks run on rank 0 only, in the order :func:`run_hooks` lists them, and watch the run:
none of them changes what the run computes (they take no random numbers, except the sample grids, which
draw from the synthesizer at a fixed point of every evaluation, resumed runs included).

=================  ======================================================================================
point              when
=================  ======================================================================================
``open``           the run is set up (its checkpoint loaded), before the first epoch; a hook that cannot
                   start fails the setup
``on_round``       after each synthesis round and its student steps (``steps``: how many)
``during_evaluation``  right after the student is scored, timed as evaluation (the sample grids)
``on_evaluation``  after an evaluation is recorded in metrics.jsonl (``record``: its line)
``stop_reason``    after ``on_evaluation``: a reason stops the run after this epoch's checkpoint
``on_loop_end``    the epochs are over, before the run's record is written
``close``          once, when the run ends, fails or is interrupted
=================  ======================================================================================
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
from typing import Any, Dict, List, Optional

import torch

from .. import loggers
from ..config import to_dict
from ..models import save_model
from ..results import BEST_STUDENT, atomic_write_bytes, samples_png
from ..synthesis.base import round_iterations
from .record import finite_scores
from .view import RunView


class Hook:
    """A thing the loop calls at named points (see the module docstring); every point is a no-op here."""

    def open(self, engine: RunView) -> None:
        """The run is set up; a hook that cannot start raises (the setup then fails and cleans up)."""

    def on_round_start(self, engine: RunView) -> None:
        """A synthesis round begins (a round of DeepInversion or CMI is minutes of work on a CPU)."""

    def on_round(self, engine: RunView, steps: int) -> None:
        """A synthesis round and its ``steps`` student steps are done."""

    def during_evaluation(self, engine: RunView, epoch: int) -> None:
        """The student of epoch ``epoch`` (0-based) is scored; what runs here counts as evaluation time."""

    def on_evaluation(self, engine: RunView, epoch: int, record: Dict[str, Any]) -> None:
        """Evaluation ``epoch`` (0-based) is recorded; ``record`` is its metrics.jsonl line."""

    def stop_reason(self, engine: RunView) -> Optional[str]:
        """Why the run should stop after this epoch, or None to go on."""
        return None

    def on_loop_end(self, engine: RunView) -> None:
        """The epochs are over (finished, stopped or diverged), before the record is written."""

    def close(self) -> None:
        """The run is over (finished, failed or interrupted)."""


class LoggerHook(Hook):
    """The run's ``log=`` loggers (:mod:`datafree.loggers`): the config once, each evaluation's numbers."""

    def __init__(self) -> None:
        self.logger: loggers.Logger = loggers.NullLogger()

    def open(self, engine: RunView) -> None:
        """Open the loggers; one that fails to start (wandb.init refused, say) fails the setup, and what it left
        in a fresh run's folder goes with it. A resumed run's logs go on after its checkpoint's epoch."""
        folder = engine.folder
        fresh = engine.checkpoint is None
        before = set(os.listdir(folder.path)) if fresh else set()
        try:
            self.logger = loggers.open_logger(engine.cfg.log, folder.path, folder.name, start_step=engine.start_epoch)
        except BaseException:
            for name in (set(os.listdir(folder.path)) - before) if fresh else ():
                path = folder.file(name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            raise
        self.logger.config({**to_dict(engine.cfg), "run_id": folder.name, "fingerprint": engine.identity.fingerprint})

    def on_evaluation(self, engine: RunView, epoch: int, record: Dict[str, Any]) -> None:
        # the record's numbers at step epoch + 1: acc, lr, ..., synth/<loss>, distill/<loss>
        scalars = {("student_steps" if k == "step" else k): v for k, v in record.items() if k != "epoch"}
        self.logger.scalars(loggers.flatten(scalars), epoch + 1)

    def image(self, name: str, images: torch.Tensor, step: int) -> None:
        if not isinstance(self.logger, loggers.NullLogger):
            import torchvision

            self.logger.image(name, torchvision.utils.make_grid(images.cpu(), nrow=8), step)

    def close(self) -> None:
        logger, self.logger = self.logger, loggers.NullLogger()
        logger.close()


def class_colours(maps: torch.Tensor) -> torch.Tensor:
    """Class maps (N, H, W) as [0, 1] RGB images (N, 3, H, W): class 0 black, 255 (not scored) white, and class
    c at hue c times the golden ratio (mod 1): the same colour for a class in every grid, neighbours apart."""
    scored = maps != 255
    k = int(maps[scored].max()) + 1 if bool(scored.any()) else 1
    hues = (torch.arange(k, dtype=torch.float64) * 0.6180339887).remainder(1.0).float()
    rgb = torch.stack([(hues * 6 - s).abs().sub(3).abs().neg().add(2).clamp(0, 1) for s in (0, 2, 4)], 1)
    rgb[0] = 0.0
    out = torch.ones(maps.shape[0], 3, *maps.shape[1:])
    out.permute(0, 2, 3, 1)[scored] = rgb[maps[scored].long()]
    return out


def save_sample_grid(
    images: torch.Tensor, labels: Optional[torch.Tensor], path: str, ncol: int = 8, cell: int = 40
) -> str:
    """A PNG grid of [0, 1] images, each captioned with its (teacher's) class."""
    from PIL import Image, ImageDraw

    images = images.detach().float().cpu().clamp(0, 1)
    if labels is not None and labels.dim() == 3:  # a class per pixel: each tile is the image and its map
        maps = class_colours(labels.detach().cpu())
        images = torch.cat([images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3], maps], dim=3)
        labels = None
    n, c, h, w = images.shape
    scale = max(1, cell // max(h, w))
    h2, w2 = h * scale, w * scale
    cap = 12
    nrow = int(math.ceil(n / ncol))
    canvas = Image.new("RGB", (ncol * (w2 + 2), nrow * (h2 + cap + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    up = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
    arr = up.mul(255).round().byte()
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
    atomic_write_bytes(path, buf.getvalue())
    return path


class SampleGridHook(Hook):
    """``samples_<epoch>.png``: ``samples`` images of what the method makes, captioned with the teacher's class
    (or the batch's labels without a teacher), also sent to the loggers at the epoch's step."""

    def __init__(self, n: int, logger: LoggerHook):
        self.n = n
        self.logger = logger

    def during_evaluation(self, engine: RunView, epoch: int) -> None:
        with torch.no_grad():
            x = engine.synth.preview(self.n)
            if engine.teacher is not None:
                with engine.amp.autocast():
                    labels = engine.teacher(x).argmax(1)
            else:
                batch = engine.synth.sample(self.n)
                labels = batch[1] if isinstance(batch, tuple) else None
            images = engine.ctx.normalizer.denormalize(x.float()).clamp(0, 1)
        save_sample_grid(images, labels, engine.folder.file(samples_png(epoch)))
        # at the step of the epoch's scalars (epoch + 1), beside the accuracy of the same student
        self.logger.image("samples", images, epoch + 1)


class KeepBestHook(Hook):
    """``keep=best``: ``student_best.pt`` at each evaluation that beats every earlier one on record (a resumed
    run compares with the records it kept; selected on the test split)."""

    def on_evaluation(self, engine: RunView, epoch: int, record: Dict[str, Any]) -> None:
        score = engine.task.score(record)
        earlier = finite_scores(engine.metrics[:-1], engine.task)
        if earlier and score <= max(earlier):
            return
        save_model(
            engine.folder.file(BEST_STUDENT),
            engine.student,
            engine.cfg.student,
            engine.cfg.dataset,
            engine.spec.as_dict(),
            extra={"accuracy": score, "epoch": epoch + 1},
        )


class CollapseStopHook(Hook):
    """``stop_on_collapse``: stop once the last ``collapse_patience`` evaluations (after the first
    ``collapse_grace``) sat at chance."""

    def stop_reason(self, engine: RunView) -> Optional[str]:
        if not engine.collapsed():
            return None
        return (
            f"accuracy at chance for {engine.cfg.collapse_patience} evaluations in a row: stopping (stop_on_collapse)"
        )


class ProgressHook(Hook):
    """A progress bar over the run's student steps (``progress=true``), or one line per evaluation. While a
    round of many synthesis iterations runs, the bar says so."""

    def __init__(self, bar: bool):
        self.want_bar = bar
        self.bar = None
        self.desc = ""
        self._marked = False

    def open(self, engine: RunView) -> None:
        if not self.want_bar:
            return
        from tqdm.auto import tqdm

        cfg = engine.cfg
        self.desc = f"{cfg.method} {cfg.teacher or ''}->{cfg.student}"
        self.bar = tqdm(
            total=cfg.epochs * engine.ep_steps,
            initial=engine.start_epoch * engine.ep_steps,
            unit="step",
            desc=self.desc,
            leave=False,
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )

    def on_round_start(self, engine: RunView) -> None:
        if self.bar is None:
            return
        # the bar moves with student steps; a long round would leave it still with no sign of work
        its = round_iterations(engine.synth.cfg)
        what = f"synthesizing: {its} iterations (synth.iterations)" if isinstance(its, int) and its > 50 else None
        if what:
            self.bar.set_description_str(f"{self.desc} [{what}]", refresh=True)
            self._marked = True

    def on_round(self, engine: RunView, steps: int) -> None:
        if self.bar is not None:
            if self._marked:
                self.bar.set_description_str(self.desc, refresh=False)
                self._marked = False
            self.bar.update(steps)

    def on_evaluation(self, engine: RunView, epoch: int, record: Dict[str, Any]) -> None:
        task = engine.task
        score = task.score(record)
        best = max(task.score(m) for m in engine.metrics)
        if self.bar is not None:
            self.bar.set_postfix(
                {"epoch": epoch + 1, task.metric: f"{score:.2f}", "best": f"{best:.2f}"}, refresh=False
            )
        else:
            engine.log(
                f"epoch {epoch + 1}/{engine.cfg.epochs}: {task.metric} {score:.2f} (best {best:.2f}), "
                f"{engine.meter.total_seconds:.0f} s"
            )

    def on_loop_end(self, engine: RunView) -> None:
        self.close()  # before the run's last lines are logged

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_hooks(engine: RunView) -> List[Hook]:
    """The hooks of a run, in the order they are called: sample grids (they send images to the loggers),
    keep-best, the loggers, the progress bar, the collapse stop."""
    cfg = engine.cfg
    logger = LoggerHook()
    hooks: List[Hook] = []
    if cfg.samples > 0:
        hooks.append(SampleGridHook(cfg.samples, logger))
    if cfg.keep == "best":
        hooks.append(KeepBestHook())
    hooks += [logger, ProgressHook(cfg.progress)]
    if cfg.stop_on_collapse:
        hooks.append(CollapseStopHook())
    return hooks
