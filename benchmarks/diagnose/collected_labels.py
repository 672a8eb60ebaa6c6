#!/usr/bin/env python
"""How each teacher labels a collected set's source: the figures behind a collapsed collected_kd / HiDFD cell.

HiDFD's collected set Dc (``datafree.data.collected``) is real images from another source than the teacher's
data, labelled by the teacher; on MNIST the source is scikit-learn's 8x8 digits, resized for the run's 32x32. A student
distilled on Dc learns what the teacher says about those images, so a teacher that files most of them under a
few classes leaves the student nothing to learn about the others. For each teacher given, on the whole source
split (no sampling, so nothing here is seeded): the teacher's class histogram, its agreement with the source's
own labels (which the method never uses), its mean confidence, and the MNIST test accuracy a student would get
by always answering the teacher's most frequent class. Once per framing given in ``--boxes``: ``full`` (the
source image fills the frame) or a side in pixels (``synth.source_box``: the image resized into that box and
centred on a black canvas). A few seconds on the CPU.

    DATAFREE_DATA=../shared/data python benchmarks/diagnose/collected_labels.py --teachers lenet5_bn,resnet20 \
        --boxes full,23
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

import torch

from datafree.data.collected import open_source, teacher_labels
from datafree.data.datasets import default_root, get_source, get_spec
from datafree.results import report_json
from datafree.teacher import load_teacher


def label_report(
    teacher: torch.nn.Module, images: torch.Tensor, truth: torch.Tensor, spec, test_labels: torch.Tensor
) -> Dict[str, object]:
    labels, conf = teacher_labels(teacher, images, spec, "cpu")
    counts = torch.bincount(labels, minlength=spec.num_classes)
    top = int(counts.argmax())
    test_share = torch.bincount(test_labels, minlength=spec.num_classes).float() / test_labels.numel()
    return {
        "images": int(labels.numel()),
        "class_counts": counts.tolist(),
        "classes_with_images": int((counts > 0).sum()),
        "top_class": top,
        "top_class_share": round(counts[top].item() / labels.numel(), 3),
        "agreement_with_source_labels": round((labels == truth).float().mean().item(), 3),
        "mean_confidence": round(conf.mean().item(), 3),
        # accuracy on the run's test set of a student that always answers the top class
        "constant_top_class_test_acc": round(100 * test_share[top].item(), 2),
    }


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", help="the teachers' dataset")
    ap.add_argument("--teachers", default="lenet5_bn,resnet20", help="comma-separated zoo names or paths")
    ap.add_argument("--source", default="digits", help="the collected set's source (a dataset name)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--boxes", default="full,23", help="comma-separated framings: full, or a box side in pixels")
    ap.add_argument("--json", default="", help="also write the figures here")
    a = ap.parse_args(argv)
    spec = get_spec(a.dataset)
    truth = get_source(a.source).load(a.split).labels
    test_labels = get_source(a.dataset).load("test", default_root()).labels
    teachers = {name: load_teacher(name, dataset=a.dataset) for name in a.teachers.split(",") if name}
    out = {"dataset": a.dataset, "source": f"{a.source} {a.split}", "framings": {}}
    for framing in [b for b in a.boxes.split(",") if b]:
        box = None if framing == "full" else int(framing)
        images = open_source(a.source, a.split, spec, box=box).images
        out["framings"][framing] = {
            name: {"sha256": record["sha256"][:8], **label_report(teacher, images, truth, spec, test_labels)}
            for name, (teacher, record) in teachers.items()
        }
    report_json(out, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
