"""Tasks: a classifier's top-1 accuracy as the engine always measured it, a segmenter's scores as DFAD's
StreamSegMetrics computes them, and the collapse each task defines."""

import numpy as np
import pytest
import torch

from datafree.tasks import CLASSIFICATION, IGNORE_INDEX, SEGMENTATION, get_task, metric_of


def _stream_seg_metrics(preds, targets, k, ignore_index=IGNORE_INDEX):
    """DFAD's utils/stream_metrics.py:23-76 (StreamSegMetrics), restated with numpy: the reference."""
    hist = np.zeros((k, k))
    for lt, lp in zip(targets, preds):
        lt, lp = lt.flatten(), lp.flatten()
        mask = (lt >= 0) & (lt < k) & (lt != ignore_index)
        hist += np.bincount(k * lt[mask].astype(int) + lp[mask], minlength=k**2).reshape(k, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return {"Overall Acc": acc, "Mean Acc": acc_cls, "FreqW Acc": fwavacc, "Mean IoU": np.nanmean(iu)}


def test_segmentation_scores_are_dfads_stream_seg_metrics():
    g = torch.Generator().manual_seed(0)
    k = 6
    scorer = SEGMENTATION.scorer(k)
    preds, targets = [], []
    for _ in range(3):  # batches: one confusion matrix over all of them
        logits = torch.randn(4, k, 9, 7, generator=g)
        target = torch.randint(0, k - 1, (4, 9, 7), generator=g)  # class k - 1 never in the targets
        target[:, 0, :] = IGNORE_INDEX  # a row of void pixels
        scorer.update(logits, target)
        preds.append(logits.argmax(1).numpy())
        targets.append(target.numpy())
    got = scorer.results()
    want = _stream_seg_metrics(np.concatenate(preds), np.concatenate(targets), k)
    # both are ratios of the same integer counts, in float64: equal to the last bits
    assert got["miou"] == pytest.approx(100 * want["Mean IoU"], rel=1e-12)
    assert got["pixel_acc"] == pytest.approx(100 * want["Overall Acc"], rel=1e-12)
    assert got["mean_class_acc"] == pytest.approx(100 * want["Mean Acc"], rel=1e-12)
    assert got["fw_iou"] == pytest.approx(100 * want["FreqW Acc"], rel=1e-12)
    assert 1 < got["predicted_classes"] <= k


def test_a_perfect_and_a_constant_segmenter():
    k, target = 3, torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    perfect = torch.nn.functional.one_hot(target.clamp(max=k - 1), k).permute(0, 3, 1, 2).float()
    s = SEGMENTATION.scorer(k)
    s.update(perfect, target)
    assert s.results()["miou"] == 100.0 and s.results()["pixel_acc"] == 100.0
    constant = torch.zeros(1, k, 2, 2)
    constant[:, 0] = 1.0
    s = SEGMENTATION.scorer(k)
    s.update(constant, target)
    r = s.results()
    assert r["predicted_classes"] == 1 and r["miou"] == pytest.approx(100 / 9)  # IoUs 1/3, 0, 0
    assert SEGMENTATION.at_chance(r, k) and not SEGMENTATION.at_chance({"predicted_classes": 2}, k)


def test_top_one_is_the_engines_accuracy_and_its_chance():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    s = CLASSIFICATION.scorer(2)
    s.update(logits, torch.tensor([0, 1, 1]))
    assert s.results() == {"acc": pytest.approx(200 / 3)}
    assert CLASSIFICATION.at_chance({"acc": 10.5}, 10) and not CLASSIFICATION.at_chance({"acc": 12.0}, 10)


def test_a_record_from_before_tasks_is_a_classifier():
    assert get_task(None) is CLASSIFICATION and metric_of(None) == "acc" and metric_of("segmentation") == "miou"
    with pytest.raises(KeyError, match="Did you mean 'segmentation'"):
        get_task("segmentaton")
