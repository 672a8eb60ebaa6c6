"""Collected real data (HiDFD's Dc): its size from rho or a count, teacher labels, seeded random and balanced
most-confident selection, the record of which images were used, source adaptation, data inflation, and where
Dc comes from: a named source (never an implicit one), an image folder found in the data roots (or a clear error
naming where it looked), digits upscaled and framed as MNIST frames its digits, and the in-distribution mark in
records and tables."""

import dataclasses
import json
import os

import pytest
import torch

from conftest import tiny
from datafree.methods import resolve
from datafree.data import collected as collected_mod
from datafree.data.collected import (
    CollectedConfig,
    InflatedSet,
    adapt_images,
    collect,
    collected_count,
    open_source,
    select_confident,
    teacher_labels,
)
from datafree.data.datasets import ImageSplit, get_source, get_spec
from datafree.engine import Engine, run
from datafree.errors import ConfigError, DataNotFoundError


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
    a = collect(CollectedConfig(source="digits", rho=0.1), e.teacher, e.spec, "cpu", **kw)
    b = collect(CollectedConfig(source="digits", rho=0.1), e.teacher, e.spec, "cpu", **kw)
    c = collect(CollectedConfig(source="digits", rho=0.1, collect_seed=7), e.teacher, e.spec, "cpu", **kw)
    assert len(a) == round(0.1 * 1437) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    source = get_source("digits").load("train")
    assert torch.equal(a.split.images, source.images[a.indices])
    want, _ = teacher_labels(e.teacher, source.images[a.indices], e.spec, "cpu")
    assert torch.equal(a.split.labels.cpu(), want)  # the teacher's argmax, never the source's labels
    n = collect(CollectedConfig(source="digits", count=50), e.teacher, e.spec, "cpu", **kw)
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
    c = collect(
        CollectedConfig(source="digits", count=100, selection="confident"),
        e.teacher,
        e.spec,
        "cpu",
        dataset="digits",
        run_seed=0,
    )
    counts = torch.bincount(c.split.labels, minlength=10)
    assert len(c) == 100 and (counts >= 8).all()  # 10 per class unless the teacher predicts a class rarely
    assert "most confident" in c.describe()


def test_the_run_records_which_images_it_used(zoo, tmp_path):
    s = run(tiny("collected_kd", tmp_path / "r", synth={"rho": 0.05, "repeat": 2}, epochs=1, ep_steps=None))
    rec = json.loads((tmp_path / "r" / "collected.json").read_text())
    assert rec["count"] == s["real_images"] == len(rec["indices"]) == 72 and rec["labels"] == "teacher"
    assert rec["source"] == "digits" and rec["split"] == "train" and sum(rec["class_counts"]) == 72
    assert rec["dataset"] == "digits" and rec["in_distribution"] is True  # the demo's Dc: digits' own split
    assert s["uses_real_data"] == (
        "digits train, 72 images (rho 0.0501), teacher labels; in-distribution: the teacher's own dataset"
    )
    assert s["collected_file"] == "collected.json" and s["collected_source"] == "digits train"
    assert s["collected_in_distribution"] is True
    assert s["images_seen"] == 9 * 16  # one pass over Dc x 2 = 144 items per epoch


def test_source_images_are_adapted_to_the_run():
    rgb = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    spec = get_source("mnist").spec
    out = adapt_images(rgb, spec)
    assert out.shape == (4, 1, 32, 32) and out.dtype == torch.uint8
    grey = adapt_images(out, get_source("cifar10").spec)
    assert grey.shape == (4, 3, 32, 32) and torch.equal(grey[:, 0], grey[:, 2])


def test_a_source_box_centres_the_resized_image_on_a_black_canvas():
    torch.manual_seed(0)
    src = torch.randint(1, 256, (3, 1, 8, 8), dtype=torch.uint8)  # no black pixel of its own
    spec = get_source("mnist").spec  # 1 x 32 x 32
    framed = adapt_images(src, spec, box=23)
    assert framed.shape == (3, 1, 32, 32) and framed.dtype == torch.uint8
    # 32 - 23 = 9: 4 rows and columns of black before the box, 5 after
    assert torch.equal(framed[..., 4:27, 4:27], adapt_images(src, dataclasses.replace(spec, size=23)))
    border = framed.clone()
    border[..., 4:27, 4:27] = 0
    assert int(border.count_nonzero()) == 0
    assert framed[..., 4:27, 4:27].min() > 0  # the resized digit itself is untouched by the padding
    assert torch.equal(adapt_images(src, spec, box=32), adapt_images(src, spec))  # a full box is no frame
    for bad in (0, 33):
        with pytest.raises(
            ConfigError,
            match=rf"synth\.source_box must be between 1 and the run's image size 32 "
            rf"\(got {bad}\); leave it unset",
        ):
            open_source("digits", "train", spec, box=bad)


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


# --------------------------------------------------------------------------- where Dc comes from


def test_the_source_must_be_named(zoo, tmp_path):
    e = _teacher_and_spec(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"no source .*synth\.source=imagefolder:imagenet32.*synth\.source=digits "
        r"uses the teacher's own training split \(in-distribution",
    ):
        collect(CollectedConfig(rho=0.1), e.teacher, e.spec, "cpu", dataset="digits", run_seed=0)


def test_a_missing_image_folder_fails_naming_where_it_looked(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e = _teacher_and_spec(tmp_path)
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError) as err:
        collect(
            CollectedConfig(source="imagefolder:imagenet32", rho=0.1),
            e.teacher,
            e.spec,
            "cpu",
            dataset="digits",
            run_seed=0,
            data_root=str(root),
        )
    msg = str(err.value)
    assert "'imagefolder:imagenet32' (train split) was not found" in msg and "\n" not in msg  # one line
    assert str(tmp_path / "imagenet32") in msg and str(root / "imagenet32") in msg  # the cwd, then each data root
    assert "ImageNet" in msg and "synth.source=imagefolder:/path" in msg


def test_the_cli_exits_2_with_the_message_when_the_folder_is_missing(zoo, tmp_path, monkeypatch, capsys):
    from datafree.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "distill",
            "--method",
            "collected_kd",
            "--dataset",
            "digits",
            "--teacher",
            "lenet5",
            "--student",
            "lenet5_half",
            "--out",
            str(tmp_path / "r"),
            "synth.source=imagefolder:imagenet32",
            "epochs=1",
            "progress=false",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the collected set's image folder 'imagefolder:imagenet32'") and "looked for" in err


def _write_folder(path, n_per_class=4, classes=("a", "b", "c"), size=10):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    for c in classes:
        os.makedirs(path / c, exist_ok=True)
        for i in range(n_per_class):
            arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(path / c / f"{i}.png")


def test_an_image_folder_in_a_data_root_decodes_only_the_images_it_takes(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e = _teacher_and_spec(tmp_path)
    root = tmp_path / "root"
    _write_folder(root / "natural" / "train")  # 12 RGB 10x10 images in 3 class folders
    decoded = []
    real_decode = collected_mod.decode_images
    monkeypatch.setattr(collected_mod, "decode_images", lambda s, size: decoded.append(len(s)) or real_decode(s, size))
    c = collect(
        CollectedConfig(source="imagefolder:natural", count=5),
        e.teacher,
        e.spec,
        "cpu",
        dataset="digits",
        run_seed=0,
        data_root=str(root),
    )
    assert decoded == [5]  # of 12
    assert c.split.images.shape == (5, 1, 8, 8) and c.split.images.dtype == torch.uint8  # grey, at digits' size
    assert c.location == str(root / "natural" / "train") and not c.in_distribution
    rec = c.record()
    assert rec["location"] == c.location and rec["in_distribution"] is False and len(rec["indices"]) == 5
    assert c.describe().endswith("; out-of-distribution: another source than the teacher's digits")
    # a folder of class folders (no train/) is a train split too: the released code's layout
    _write_folder(tmp_path / "flat")
    d = collect(
        CollectedConfig(source="imagefolder:flat", count=3), e.teacher, e.spec, "cpu", dataset="digits", run_seed=0
    )
    assert len(d) == 3 and d.location == str(tmp_path / "flat")


def test_mnist_collects_from_digits_upscaled(zoo, tmp_path):
    from datafree.models import create_model

    for method in ("hidfd", "collected_kd", "hidfd:released"):
        cfg = resolve({"method": method, "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"})
        assert cfg.synth["source"] == "digits" and cfg.synth["rho"] == 0.01, method
        assert cfg.synth["source_box"] == 23, method  # MNIST's 20-in-28 digit box at 32 px
        # digits' own split (the demo) and CIFAR's image folder fill the frame; unset, so their fingerprints stand
        cfg = resolve({"method": method, "dataset": "digits", "teacher": "lenet5", "student": "lenet5_half"})
        assert cfg.synth.get("source_box") is None, method
    for method in ("hidfd", "collected_kd", "hidfd:released"):  # CIFAR: the ImageNet folder, not CIFAR's train split
        for ds in ("cifar10", "cifar100"):
            cfg = resolve({"method": method, "dataset": ds, "teacher": "resnet34", "student": "resnet18"})
            assert cfg.synth["source"] == "imagefolder:imagenet32", (method, ds)
    spec = get_spec("mnist")
    torch.manual_seed(0)
    teacher = create_model("lenet5", 10, 1, 32).eval()
    c = collect(CollectedConfig(source="digits", rho=0.01), teacher, spec, "cpu", dataset="mnist", run_seed=0)
    assert len(c) == 600 and c.split.images.shape == (600, 1, 32, 32)  # rho 0.01 of MNIST's 60,000
    digits = get_source("digits").load("train")
    assert torch.equal(c.split.images, adapt_images(digits.images[c.indices], spec))
    assert not c.in_distribution and c.summary()["collected_in_distribution"] is False
    assert c.describe() == (
        "digits train, 600 images (rho 0.01), teacher labels; out-of-distribution: another "
        "source than the teacher's mnist"
    )
    assert "source_box" not in c.record()
    framed = collect(
        CollectedConfig(source="digits", rho=0.01, source_box=23), teacher, spec, "cpu", dataset="mnist", run_seed=0
    )
    assert torch.equal(framed.indices, c.indices)  # the same images, framed
    assert torch.equal(framed.split.images, adapt_images(digits.images[c.indices], spec, box=23))
    assert framed.record()["source_box"] == 23
    assert framed.describe().startswith("digits train, 600 images in a 23 px box (rho 0.01), teacher labels;")


def test_tables_mark_whether_the_collected_set_is_in_distribution():
    import pandas as pd

    from datafree.report import accuracy_table, method_label, runs_table

    ood = (
        "digits train, 600 images (rho 0.01), teacher labels; out-of-distribution: another source than the "
        "teacher's mnist"
    )
    ind = "mnist train, 600 images (rho 0.01), teacher labels; in-distribution: the teacher's own dataset"
    assert method_label("hidfd", ood) == "hidfd † OOD" and method_label("hidfd", ind) == "hidfd † ID"
    assert method_label("kd_real", "mnist train split, 60,000 images (labels used)") == "kd_real †"
    assert method_label("dafl", "") == "dafl"
    # records made before the mark (no distribution in the note) keep the plain dagger
    assert method_label("hidfd", "mnist train, 600 images (rho 0.01), teacher labels") == "hidfd †"
    rows = [
        dict(
            dataset="mnist",
            method=m,
            pair="lenet5->lenet5_half",
            seed=0,
            last_acc=a,
            best_acc=a,
            mean_acc=a,
            var_acc=0.0,
            status="finished",
            uses_real_data=r,
        )
        for m, a, r in (("hidfd", 98.0, ood), ("collected_kd", 97.0, ind), ("dafl", 90.0, ""))
    ]
    df = pd.DataFrame(rows)
    table = accuracy_table(df)
    assert "| hidfd † OOD |" in table and "| collected_kd † ID |" in table and "| dafl |" in table
    assert f"† hidfd: uses real data: {ood}" in table and f"† collected_kd: uses real data: {ind}" in table
    runs = runs_table(df)
    assert "hidfd † OOD" in runs and "collected_kd † ID" in runs


def test_collected_labels_diagnosis_reports_a_teacher_that_files_everything_under_one_class():
    """benchmarks/diagnose/collected_labels.py: the figures behind the source_box of MNIST's presets."""
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "diagnose", "collected_labels.py"
    )
    spec_ = importlib.util.spec_from_file_location("collected_labels", path)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)

    class Always(torch.nn.Module):  # logits favouring class 4, confidence e^2 / (e^2 + 9)
        def forward(self, x):
            z = torch.zeros(x.shape[0], 10)
            z[:, 4] = 2.0
            return z

    spec = get_spec("mnist")
    images = torch.zeros(6, 1, 32, 32, dtype=torch.uint8)
    truth = torch.tensor([4, 4, 1, 2, 3, 5])
    test_labels = torch.tensor([4, 0, 0, 1, 1, 1, 2, 3, 4, 9])  # class 4: 2 of 10
    r = mod.label_report(Always(), images, truth, spec, test_labels)
    assert r["class_counts"] == [0, 0, 0, 0, 6, 0, 0, 0, 0, 0] and r["classes_with_images"] == 1
    assert r["top_class"] == 4 and r["top_class_share"] == 1.0
    assert r["agreement_with_source_labels"] == round(2 / 6, 3)
    assert r["mean_confidence"] == round(float(torch.tensor(2.0).exp() / (torch.tensor(2.0).exp() + 9)), 3)
    assert r["constant_top_class_test_acc"] == 20.0
