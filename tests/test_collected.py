"""Collected real data (HiDFD's Dc): its size from rho or a count, teacher labels, seeded random and balanced
most-confident selection, the record of which images were used, source adaptation, and data inflation."""
import json

import pytest
import torch

from conftest import tiny
from datafree.data.collected import (CollectedConfig, InflatedSet, adapt_images, collect, collected_count,
                                     select_confident, teacher_labels)
from datafree.data.datasets import ImageSplit, get_source
from datafree.engine import Engine, run


def _teacher_and_spec(tmp_path):
    e = Engine(tiny("collected_kd", tmp_path / "r", synth={"rho": 0.05}))
    e.setup()
    return e


def test_size_from_rho_or_count():
    assert collected_count(0.01, 0, 60000) == 600
    assert collected_count(0.1, 0, 60000) == 6000
    assert collected_count(0.1, 123, 60000) == 123  # an absolute count wins
    with pytest.raises(ValueError, match="count"):
        collected_count(0.1, 0, 0)  # |Do| unknown
    with pytest.raises(ValueError):
        collected_count(0.0, 0, 100)


def test_random_selection_is_seeded_and_labelled_by_the_teacher(zoo, tmp_path):
    e = _teacher_and_spec(tmp_path)
    kw = dict(dataset="digits", run_seed=0)
    a = collect(CollectedConfig(rho=0.1), e.teacher, e.spec, "cpu", **kw)
    b = collect(CollectedConfig(rho=0.1), e.teacher, e.spec, "cpu", **kw)
    c = collect(CollectedConfig(rho=0.1, collect_seed=7), e.teacher, e.spec, "cpu", **kw)
    assert len(a) == round(0.1 * 1437) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    source = get_source("digits").load("train")
    assert torch.equal(a.split.images, source.images[a.indices])
    want, _ = teacher_labels(e.teacher, source.images[a.indices], e.spec, "cpu")
    assert torch.equal(a.split.labels.cpu(), want)  # the teacher's argmax, never the source's labels
    n = collect(CollectedConfig(count=50), e.teacher, e.spec, "cpu", **kw)
    assert len(n) == 50


def test_balanced_most_confident_selection():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0, 0])
    conf = torch.tensor([0.9, 0.5, 0.8, 0.7, 0.95, 0.6, 0.99, 0.3, 0.85])
    chosen = select_confident(labels, conf, 6, 3)
    # 2 per class: class 0 -> 0 (0.9), 8 (0.85); class 1 -> 4, 3; class 2 has only 6, the gap goes to the
    # most confident remaining image (2, 0.8)
    assert chosen.tolist() == [0, 2, 3, 4, 6, 8]
    assert select_confident(labels, conf, 3, 3).tolist() == [0, 4, 6]


def test_confident_selection_on_a_dataset_is_balanced(zoo, tmp_path):
    e = _teacher_and_spec(tmp_path)
    c = collect(CollectedConfig(count=100, selection="confident"), e.teacher, e.spec, "cpu", dataset="digits",
                run_seed=0)
    counts = torch.bincount(c.split.labels, minlength=10)
    assert len(c) == 100 and (counts >= 8).all()  # 10 per class unless the teacher predicts a class rarely
    assert "most confident" in c.describe()


def test_the_run_records_which_images_it_used(zoo, tmp_path):
    s = run(tiny("collected_kd", tmp_path / "r", synth={"rho": 0.05, "repeat": 2}, epochs=1, ep_steps=None))
    rec = json.loads((tmp_path / "r" / "collected.json").read_text())
    assert rec["count"] == s["real_images"] == len(rec["indices"]) == 72 and rec["labels"] == "teacher"
    assert rec["source"] == "digits" and rec["split"] == "train" and sum(rec["class_counts"]) == 72
    assert s["uses_real_data"] == "digits train, 72 images (rho 0.0501), teacher labels"
    assert s["collected_file"] == "collected.json" and s["collected_source"] == "digits train"
    assert s["images_seen"] == 9 * 16  # one pass over Dc x 2 = 144 items per epoch


def test_source_images_are_adapted_to_the_run():
    rgb = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    spec = get_source("mnist").spec
    out = adapt_images(rgb, spec)
    assert out.shape == (4, 1, 32, 32) and out.dtype == torch.uint8
    grey = adapt_images(out, get_source("cifar10").spec)
    assert grey.shape == (4, 3, 32, 32) and torch.equal(grey[:, 0], grey[:, 2])


def test_inflation_repeats_dc_and_resumes():
    real = ImageSplit(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), torch.arange(5))
    syn = ImageSplit(torch.arange(100, 107, dtype=torch.uint8).view(7, 1, 1, 1), torch.zeros(7, dtype=torch.long))
    mix = InflatedSet(real, syn, repeat=3)
    assert len(mix) == 22
    x, _, is_real = mix.sample(22)
    seen = x.view(-1).tolist()
    assert all(seen.count(i) == 3 for i in range(5)) and all(seen.count(i) == 1 for i in range(100, 107))
    assert int(is_real.sum()) == 15
    mix.sample(5)
    state = mix.state_dict()
    again = InflatedSet.from_state(real, state)
    assert torch.equal(again.sample(9)[0], mix.sample(9)[0])
