"""Synthetic sets out and in: `datafree export`, the kd_folder method, and synth.init_from of the pool methods."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, engine_for, tiny
from datafree.cli import main
from datafree.data import get_source, get_spec
from datafree.data.image_set import list_images, read_image_set
from datafree.engine import run
from datafree.errors import DatafreeError
from datafree.export import export_run

#: the exported set: two DeepInversion rounds of 128 images (one per epoch), 100 pixel steps each (about 2 s)
SET_SYNTH = {"iterations": 100, "synthesis_batch_size": 128}
SET_SIZE = 2 * 128
#: one quick round of each pool method
SMALL = {
    "cmi": {"g_steps": 2, "synthesis_batch_size": 16, "ngf": 8, "n_neg": 64, "bank_size": 256},
    "deepinv": {"iterations": 3, "synthesis_batch_size": 16},
    "fast": {"g_steps": 2, "synthesis_batch_size": 16, "ngf": 8},
}


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _errors(text):
    return [line for line in _lines(text) if line.startswith("error:")]


@pytest.fixture(scope="module")
def exported(zoo, tmp_path_factory):
    """A finished tiny DeepInversion run on digits and its exported set: (run_dir, set_dir, manifest, summary)."""
    d = tmp_path_factory.mktemp("synthetic_sets")
    summary = run(tiny("deepinv", d / "run", synth=SET_SYNTH))
    manifest = export_run(str(d / "run"), str(d / "set"))
    return d / "run", d / "set", manifest, summary


def _teacher(summary):
    from datafree.teacher import load_teacher

    return load_teacher(summary["teacher_path"], dataset="digits")[0]


# --------------------------------------------------------------------------- export


def test_export_writes_the_pool_as_class_folders_of_pngs(exported):
    from datafree.data import Normalizer
    from datafree.results import file_sha256
    from datafree.rundir import RunFolder

    run_dir, out, manifest, summary = exported
    pool = torch.load(run_dir / "pool.pt", weights_only=True)
    images = pool["pool"]["images"]
    assert images.dtype == torch.uint8 and images.shape == (SET_SIZE, 1, 8, 8)
    files = list_images(str(out))
    assert len(files) == SET_SIZE == manifest["images"]
    # every PNG is its pool image, pixel for pixel, in the folder of the teacher's argmax on it
    spec = get_spec("digits")
    with torch.no_grad():
        argmax = _teacher(summary)(Normalizer(spec)(images.float() / 255)).argmax(1)
    seen = set()
    for path, label in files:
        index = int(os.path.splitext(os.path.basename(path))[0])
        png = np.asarray(Image.open(path))
        assert png.shape == (8, 8) and np.array_equal(png, images[index, 0].numpy()), path
        assert label == int(argmax[index]) == int(os.path.basename(os.path.dirname(path))), path
        seen.add(index)
    assert seen == set(range(SET_SIZE))
    # the manifest names the run, its teacher, the spec and the count per class
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == RunFolder(str(run_dir)).read_identity().fingerprint == summary["fingerprint"]
    assert manifest["teacher"]["sha256"] == summary["teacher_sha256"] == file_sha256(summary["teacher_path"])
    assert manifest["per_class"] == {str(c): int((argmax == c).sum()) for c in range(10)}
    assert manifest["spec"]["mean"] == list(spec.mean) and manifest["spec"]["channels"] == 1
    assert manifest["config"]["method"] == "deepinv" and manifest["status"] == "finished"
    assert manifest["digest"] == read_image_set(str(out), spec).digest


def test_an_exported_set_is_an_imagefolder_dataset(exported):
    _, out, manifest, _ = exported
    source = get_source(f"imagefolder:{out}")
    split = source.load("train")
    folders = sorted(os.listdir(out / "train"))
    assert len(split) == SET_SIZE and source.spec.num_classes == len(folders)
    # ImageFolder numbers the sorted folders; the zero-padded names sort as numbers
    counts = torch.bincount(split.labels, minlength=len(folders))
    assert {folders[i]: int(n) for i, n in enumerate(counts)} == {k: v for k, v in manifest["per_class"].items() if v}


def test_export_refuses_a_non_empty_folder_and_replaces_it_with_overwrite(exported, tmp_path, capsys):
    run_dir, out, manifest, _ = exported
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and err.startswith("error:") and "--overwrite" in err
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "junk.txt").write_text("x")
    assert main(["export", str(run_dir), "--out", str(dest), "--overwrite"]) == 0
    assert f"exported {SET_SIZE} images" in capsys.readouterr().out
    assert (
        not (dest / "junk.txt").exists()
        and json.loads((dest / "manifest.json").read_text())["digest"] == manifest["digest"]
    )
    assert sorted(os.listdir(tmp_path)) == ["dest"]  # no temporary folder left beside it
    assert main(["export", str(run_dir), "--out", str(run_dir.parent), "--overwrite"]) == 2  # would delete the run
    assert "holds the run directory" in capsys.readouterr().err


def test_an_interrupted_export_leaves_the_old_folder_and_no_half_set(exported, tmp_path, monkeypatch):
    import datafree.export as ex

    run_dir = exported[0]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    real, calls = ex._write_png, {"n": 0}

    def dies_midway(path, image):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt("killed")
        real(path, image)

    monkeypatch.setattr(ex, "_write_png", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        export_run(str(run_dir), str(dest), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["dest"] and sorted(os.listdir(dest)) == ["old.txt"]


def test_export_falls_back_to_the_checkpoint_and_says_when_there_is_no_pool(exported, zoo, tmp_path, capsys):
    run_dir, _, manifest, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    os.unlink(copy / "pool.pt")  # a run from before pool.pt: the checkpoint holds the pool too
    assert export_run(str(copy), str(tmp_path / "a"))["digest"] == manifest["digest"]
    os.unlink(copy / "checkpoint.pt")
    with pytest.raises(DatafreeError, match="neither pool.pt .* nor checkpoint.pt"):
        export_run(str(copy), str(tmp_path / "b"))
    # a method without a pool: one line naming the methods that keep one
    run(tiny("dafl", tmp_path / "dafl"))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "dafl"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and "keeps no synthetic pool" in err
    assert all(m in err for m in ("cmi", "deepinv", "fast10"))
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "d")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "bcd")


def test_export_refuses_a_teacher_other_than_the_runs(exported, tmp_path):
    run_dir, _, _, summary = exported
    ckpt = torch.load(summary["teacher_path"], weights_only=True)
    ckpt["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with pytest.raises(DatafreeError, match="ran with the teacher of sha256"):
        export_run(str(run_dir), str(tmp_path / "set"), teacher=str(other))
    assert not (tmp_path / "set").exists()


# --------------------------------------------------------------------------- kd_folder


def test_kd_folder_trains_a_student_from_an_exported_set(exported, tmp_path):
    _, out, manifest, _ = exported
    epochs, batch = 40, 32
    s = run(
        tiny("kd_folder", tmp_path / "kd", epochs=epochs, ep_steps=None, batch_size=batch, synth={"folder": str(out)})
    )
    assert s["status"] == "finished" and s["evaluations"] == epochs
    assert s["transfer_set_images"] == SET_SIZE and s["transfer_set_digest"] == manifest["digest"]
    assert s["images_seen"] == epochs * math.ceil(SET_SIZE / batch) * batch  # one pass over the set per epoch
    assert s["images_synthesized"] == 0
    # above chance by more than three binomial standard deviations of the 360-image test split at p = 1/10
    # (1.6 points each); measured 41-64% over seeds 0-5
    n, p = 360, 0.1
    assert s["last_acc"] > 100 * (p + 3 * math.sqrt(p * (1 - p) / n)), s["last_acc"]


def test_kd_folder_follows_the_reference_recipe():
    from datafree.methods import resolve

    cfg = resolve(
        {
            "method": "kd_folder",
            "dataset": "cifar10",
            "teacher": "wrn40_2",
            "student": "wrn16_1",
            "synth": {"folder": "x"},
        }
    )
    assert (cfg.synthesizer, cfg.distiller, cfg.distill) == ("folder", "kd", {"T": 20.0, "ce": 0.0})
    assert (cfg.epochs, cfg.batch_size, cfg.ep_steps) == (200, 128, None)
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule, o.gamma) == ("sgd", 0.1, 0.9, 1e-4, "multistep", 0.1)
    assert [round(m * cfg.epochs) for m in o.milestones] == [120, 150, 180]


def test_kd_folder_without_a_set_says_how_to_make_one(zoo, tmp_path, capsys):
    base = [
        "distill",
        "--method",
        "kd_folder",
        "--dataset",
        "digits",
        "--teacher",
        "lenet5",
        "--student",
        "lenet5_half",
        "--out",
        str(tmp_path / "r"),
        "progress=false",
    ]
    assert main(base) == 2
    err = _errors(capsys.readouterr().err)  # after the engine's line naming the teacher
    assert len(err) == 1 and "synth.folder is not set" in err[0] and "datafree export" in err[0]
    assert main(base + [f"synth.folder={tmp_path / 'missing'}"]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "no such folder" in err[0] and "datafree export" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_flat_folder_of_images_reads_as_an_unlabelled_set(exported, tmp_path):
    """The CMI repository's pre-inverted set is a flat folder of PNGs, read recursively as its
    UnlabeledImageDataset does."""
    _, out, _, _ = exported
    flat = tmp_path / "flat" / "batch0"
    flat.mkdir(parents=True)
    for path, _ in list_images(str(out)):
        shutil.copy(path, flat / os.path.basename(path))
    s = read_image_set(str(tmp_path / "flat"), get_spec("digits"))
    assert len(s) == SET_SIZE and bool((s.split.labels == -1).all()) and s.manifest is None


# --------------------------------------------------------------------------- init_from


@pytest.mark.parametrize("method", ["cmi", "deepinv", "fast"])
def test_init_from_fills_the_pool_before_the_first_round(exported, tmp_path, method):
    _, out, _, _ = exported
    e = engine_for(method, tmp_path / "r", synth={**SMALL[method], "init_from": str(out)})
    try:
        saved = read_image_set(str(out), e.spec)
        assert len(e.synth.pool) == SET_SIZE and e.synth.images_synthesized == 0
        images, labels = e.synth.pool.all()
        assert torch.equal(images.mul(255).round().to(torch.uint8).cpu(), saved.split.images)
        assert torch.equal(labels.cpu(), saved.split.labels) and bool((labels >= 0).all())
        e.synth.synthesize()
        batch = SMALL[method]["synthesis_batch_size"]
        assert len(e.synth.pool) == SET_SIZE + batch and e.synth.images_synthesized == batch
        assert torch.equal(e.synth.pool.all()[0][:SET_SIZE], images)  # the set stays; the batch joins it
    finally:
        e.synth.close()
        e.release()


def test_a_run_started_from_a_set_records_it_and_keeps_its_fingerprint_without_it(exported, tmp_path):
    from datafree.identity import run_identity

    _, out, manifest, _ = exported
    s = run(tiny("deepinv", tmp_path / "r", synth={"init_from": str(out)}))
    rounds, batch = 2, SMALL["deepinv"]["synthesis_batch_size"]
    assert s["init_from"] == str(out) and s["init_from_images"] == SET_SIZE
    assert s["init_from_digest"] == manifest["digest"] and s["init_from_fingerprint"] == manifest["fingerprint"]
    assert s["images_synthesized"] == rounds * batch and s["pool_images"] == SET_SIZE + rounds * batch
    pool = torch.load(tmp_path / "r" / "pool.pt", weights_only=True)
    assert pool["init_images"] == SET_SIZE and pool["pool"]["size"] == SET_SIZE + rounds * batch
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["synth"]["init_from"] == str(out)
    # the option's default None is left out of the fingerprint: records made before it stay valid
    plain = run_identity(tiny("deepinv", tmp_path / "p"))
    assert not any("init_from" in k for k in plain.fields)
    assert run_identity(tiny("deepinv", tmp_path / "p", synth={"init_from": str(out)})).fingerprint != plain.fingerprint
    with pytest.raises(DatafreeError, match="synth.init_from=.*no such folder.*datafree export"):
        run(tiny("deepinv", tmp_path / "bad", synth={"init_from": str(tmp_path / "missing")}))


# --------------------------------------------------------------------------- the suite row


def test_the_cifar10_suite_has_the_rows_that_start_from_a_saved_set(monkeypatch):
    from datafree.report import load_reference
    from datafree.runner import cell_config
    from datafree.suites import expand, load_suite

    monkeypatch.chdir(REPO)
    suite = load_suite("benchmarks/suites/cifar10.yaml")
    cells = expand(suite)
    rows = {c.entry: c for c in cells if c.entry in ("cmi_init", "kd_folder_cmi_set")}
    assert len([c for c in cells if c.entry in rows]) == 2  # one pair each
    for c in rows.values():
        assert (c.teacher, c.student) == ("wrn40_2", "wrn16_1")
    init = cell_config(rows["cmi_init"])
    assert (init.method, init.synth["init_from"], init.synth["oh"], init.epochs, init.ep_steps, init.kd_steps) == (
        "cmi",
        "data/cmi-preinverted-wrn402",
        0.5,
        40,
        2000,
        2000,
    )
    assert cell_config(rows["kd_folder_cmi_set"]).synth["folder"] == "data/cmi-preinverted-wrn402"
    ref = load_reference(suite.reference)["tables"]["cifar10"]["accuracy"]
    assert ref["cmi (init)"] == {"wrn40_2->wrn16_1": 90.01} and ref["kd_folder (cmi-set)"] == {
        "wrn40_2->wrn16_1": 87.38
    }


def test_a_variant_restricted_to_a_pair_the_suite_lacks_is_an_error(zoo, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        "dataset: digits\nmethods: [v]\npairs: [{teacher: lenet5, student: lenet5_half}]\n"
        "variants: {v: {method: deepinv, pairs: [lenet5->lenet5]}}\n"
    )
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and "lenet5->lenet5_half" in err


def test_a_set_enters_the_fingerprint_by_its_content_not_its_path(exported, tmp_path):
    import shutil

    from datafree.identity import run_identity

    _, out, _, _ = exported
    copy = tmp_path / "elsewhere"
    shutil.copytree(out, copy)
    a = run_identity(tiny("deepinv", tmp_path / "a", synth={"init_from": str(out)}))
    b = run_identity(tiny("deepinv", tmp_path / "b", synth={"init_from": str(copy)}))
    assert a.fingerprint == b.fingerprint and "synth.init_from.sha256" in a.fields  # the same set, moved
    first = sorted(p for p in copy.rglob("*.png"))[0]
    first.write_bytes(sorted(p for p in copy.rglob("*.png"))[1].read_bytes())  # one image replaced
    c = run_identity(tiny("deepinv", tmp_path / "c", synth={"init_from": str(copy)}))
    assert c.fingerprint != a.fingerprint
    k = run_identity(tiny("kd_folder", tmp_path / "k", synth={"folder": str(out)}))
    assert "synth.folder.sha256" in k.fields and "synth.folder" not in k.fields
