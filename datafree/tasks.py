"""Tasks: what a target is, how a student is scored, which student objectives apply.

A dataset's spec names its task (``DatasetSpec.task``). The engine scores a student with the task's
:class:`Scorer`, every metrics.jsonl line holds the task's figures under their names, and the run record and the
tables read the task's score by its name (:attr:`Task.metric`): ``acc`` for classification, ``miou`` for
segmentation. Nothing outside a task says which figure a score is.

=================  ===========================================  ===================================================
task               target                                       scores (percent)
=================  ===========================================  ===================================================
classification     one class per image                          ``acc``: top-1 accuracy
segmentation       one class per pixel; ``ignore_index`` (255)  ``miou`` (the score), ``pixel_acc``,
                   pixels are not scored                        ``mean_class_acc``, ``fw_iou``, ``predicted_classes``
=================  ===========================================  ===================================================

Segmentation scores are DFAD's ``StreamSegMetrics`` (VainF/Data-Free-Adversarial-Distillation,
utils/stream_metrics.py:23-76): one confusion matrix over the whole test split (pixels whose target is the ignore
index or outside the classes left out), overall pixel accuracy, the mean over classes of their accuracy, the mean
over classes of their IoU (a class absent from both targets and predictions does not count: ``nanmean``), and the
frequency-weighted IoU; here in percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

from .errors import UnknownNameError
from .registry import Registry

TASKS = Registry("task")

#: the target of a pixel that is not scored (DFAD's StreamSegMetrics, NYUv2's and CamVid's void label)
IGNORE_INDEX = 255
#: an evaluation within this many points of 100 / classes is at chance (a classifier's collapse)
CHANCE_BAND = 1.0


class Scorer:
    """Accumulates a student's predictions over the test split; :meth:`results` gives the task's figures."""

    def update(self, logits: Any, target: Any) -> None:
        raise NotImplementedError

    def results(self) -> Dict[str, float]:
        raise NotImplementedError


class TopOne(Scorer):
    """Top-1 accuracy (%) of class logits ``(N, K)`` against labels ``(N,)``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.correct, self.total = 0, 0

    def update(self, logits, target) -> None:
        self.correct += (logits.argmax(1) == target).sum()
        self.total += target.numel()

    def results(self) -> Dict[str, float]:
        return {"acc": 100.0 * float(self.correct) / max(1, self.total)}


class ConfusionMatrix(Scorer):
    """Per-pixel scores of logits ``(N, K, H, W)`` against targets ``(N, H, W)``: one confusion matrix, kept
    on the device (``bincount`` of ``K * target + prediction`` over the scored pixels)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.k, self.ignore_index = num_classes, ignore_index
        self.matrix = None

    def update(self, logits, target) -> None:
        import torch

        pred = logits.argmax(1)
        if pred.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"predictions of size {tuple(pred.shape[-2:])} for targets of {tuple(target.shape[-2:])}")
        t, p = target.reshape(-1).long(), pred.reshape(-1).long()
        keep = (t >= 0) & (t < self.k) & (t != self.ignore_index)
        counts = torch.bincount(self.k * t[keep] + p[keep], minlength=self.k * self.k).reshape(self.k, self.k)
        self.matrix = counts if self.matrix is None else self.matrix + counts

    def results(self) -> Dict[str, float]:
        import torch

        hist = (self.matrix if self.matrix is not None else torch.zeros(self.k, self.k)).double().cpu()
        diag, truth, predicted = hist.diag(), hist.sum(1), hist.sum(0)
        total = hist.sum()
        iou = diag / (truth + predicted - diag)  # nan for a class in neither: left out of the mean
        class_acc = diag / truth
        freq = truth / total
        seen = freq > 0
        return {
            "miou": 100.0 * float(torch.nanmean(iou)) if bool((~iou.isnan()).any()) else 0.0,
            "pixel_acc": 100.0 * float(diag.sum() / total) if total > 0 else 0.0,
            "mean_class_acc": 100.0 * float(torch.nanmean(class_acc)) if bool((~class_acc.isnan()).any()) else 0.0,
            "fw_iou": 100.0 * float((freq[seen] * iou[seen].nan_to_num(0.0)).sum()) if total > 0 else 0.0,
            "predicted_classes": int((predicted > 0).sum()),
        }


@dataclass(frozen=True)
class Task:
    """A kind of prediction: its target, its scorer, its score's name, the objectives that train for it."""

    name: str
    metric: str  # the key of the task's score in metrics.jsonl lines and in the record (last_<metric>, ...)
    label: str  # the score in a table's caption
    axis: str  # the score on a figure's axis
    target: str  # what a label is
    scorer_class: type
    figures: Tuple[str, ...]  # every figure of an evaluation (the score first)
    objectives: Tuple[str, ...] = field(default=())  # the distillers that train a student for it

    def scorer(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Scorer:
        return self.scorer_class(num_classes, ignore_index)

    @property
    def score_words(self) -> str:
        """The score in running text: ``test accuracy``, ``test mIoU``."""
        return self.axis.replace(" (%)", "")

    def score(self, line: Mapping[str, Any]) -> Any:
        """The task's score in a metrics line (None where there is none)."""
        return line.get(self.metric)

    def at_chance(self, line: Mapping[str, Any], num_classes: int) -> bool:
        """Whether an evaluation shows a collapsed student: a classifier within :data:`CHANCE_BAND` points of
        100 / classes, a segmenter that predicts one class everywhere."""
        if self.name == "segmentation":
            return int(line.get("predicted_classes", 2)) <= 1
        score = self.score(line)
        return isinstance(score, (int, float)) and abs(float(score) - 100.0 / max(1, num_classes)) <= CHANCE_BAND


CLASSIFICATION = TASKS.register(
    "classification",
    Task(
        "classification",
        "acc",
        "top-1 accuracy (%)",
        "test accuracy (%)",
        "one class per image",
        TopOne,
        ("acc",),
        ("kd", "ce", "l1"),
    ),
)
SEGMENTATION = TASKS.register(
    "segmentation",
    Task(
        "segmentation",
        "miou",
        "mIoU (%)",
        "test mIoU (%)",
        f"one class per pixel ({IGNORE_INDEX}: not scored)",
        ConfusionMatrix,
        ("miou", "pixel_acc", "mean_class_acc", "fw_iou", "predicted_classes"),
        ("kd", "ce", "l1"),
    ),
)


def ignore_index_of(spec: Any) -> int:
    """The target a cross-entropy leaves out: the spec's ``ignore_index`` for segmentation; for classification
    PyTorch's default (-100: no class is ever left out, and 255 is a class of a 1000-class set)."""
    return int(spec.ignore_index) if spec.task == "segmentation" else -100


def get_task(name: Any) -> Task:
    """The task named ``name`` (None or "" for a spec from before tasks: classification)."""
    name = str(name or "classification")
    if name not in TASKS:
        raise UnknownNameError("task", name, TASKS.list())
    return TASKS.get(name)


def score_field(stat: str, metric: str) -> str:
    """The record field of a statistic (``last``, ``best``, ``mean``, ``var``) of a task's score ``metric``:
    ``last_acc``, ``best_miou``, ..."""
    return f"{stat}_{metric}"


def metric_of(task: Any) -> str:
    """The score's key of a task name (``acc`` for a record from before tasks)."""
    return get_task(task).metric


def task_of_metric(metric: str) -> Task:
    """The task whose score is ``metric`` (``acc``: classification)."""
    return next((TASKS.get(n) for n in TASKS.list() if TASKS.get(n).metric == metric), CLASSIFICATION)
