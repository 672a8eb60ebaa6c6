"""`datafree train-teacher --recipe cmi`: the CMI repository's train_scratch.py schedule beside our own recipe,
its name in the manifest and the checkpoint and in the recipe fingerprint, the best-accuracy weights kept."""

import os

import pytest
import torch
import yaml

from datafree.cli import main
from datafree.methods import resolve
from datafree.data import get_spec
from datafree.engine.trainer import build_scheduler
from datafree.engine import Engine
from datafree.errors import ConfigError, DatafreeError, UnknownNameError
from datafree.identity import run_identity
from datafree.train import recipe_method, teacher_config, teacher_recipes, train_teacher

QUIET = lambda *a: None  # noqa: E731


def _lrs(cfg, epochs):
    """The learning rate of each epoch, as the distiller's scheduler steps it (once per epoch)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(opt, cfg.optim, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_the_cmi_recipe_resolves_to_the_reference_values():
    cfg, name = teacher_config("cifar10", "resnet34", recipe="cmi")
    assert name == "cmi" and cfg.method == "scratch_cmi" == recipe_method("cmi")
    assert (cfg.synthesizer, cfg.distiller, cfg.teacher) == ("real", "ce", None)
    assert cfg.epochs == 200 and cfg.batch_size == 256 and cfg.ep_steps is None and cfg.eval_every == 1
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.nesterov) == ("sgd", 0.1, 0.9, 1e-4, False)
    assert o.schedule == "multistep" and o.gamma == 0.1
    assert cfg.amp == "off" and cfg.keep == "best" and cfg.seed == 0
    assert cfg.out == os.path.join("results", "teachers", "cifar10_resnet34-cmi")
    # MultiStepLR at epochs 120, 150 and 180 of 200, stepped once per epoch
    sched = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), o, cfg.epochs)
    assert sorted(sched.milestones) == [120, 150, 180]
    lrs = _lrs(cfg, 200)
    for epoch, lr in ((0, 0.1), (119, 0.1), (120, 0.01), (149, 0.01), (150, 1e-3), (180, 1e-4), (199, 1e-4)):
        assert lrs[epoch] == pytest.approx(lr)
    # the dataset's standard augmentation and normalisation: registry.py's for CIFAR-10, CIFAR-100 and MNIST
    assert cfg.synth["augment"] == "" and get_spec("cifar10").augment == "crop_flip"
    assert get_spec("cifar10").mean == (0.4914, 0.4822, 0.4465) and get_spec("cifar10").std == (0.2023, 0.1994, 0.2010)
    assert get_spec("cifar100").mean == (0.5071, 0.4867, 0.4408) and get_spec("cifar100").std == (
        0.2675,
        0.2565,
        0.2761,
    )
    assert get_spec("mnist").augment == "none" and get_spec("mnist").size == 32
    assert (get_spec("mnist").mean, get_spec("mnist").std) == ((0.1307,), (0.3081,))
    # one recipe for every dataset and model: no LeNet or MNIST section of ours leaks in
    small, _ = teacher_config("mnist", "lenet5", recipe="cmi")
    assert (small.optim.lr, small.batch_size, small.epochs) == (0.1, 256, 200)


def test_our_recipe_stays_the_default_and_the_recipe_may_come_with_the_overrides():
    ours, name = teacher_config("cifar10", "resnet34")
    assert name == "datafree" and ours.method == "scratch" and ours.keep is None and ours.optim.schedule == "cosine"
    assert ours.out == os.path.join("results", "teachers", "cifar10_resnet34")
    assert teacher_recipes()[:1] == ["datafree"] and "cmi" in teacher_recipes()
    cmi, name = teacher_config("cifar10", "resnet34", {"recipe": "cmi", "epochs": 20})
    assert name == "cmi" and cmi.epochs == 20
    lrs = _lrs(cmi, 20)  # the milestones keep their place in a shorter run: epochs 12, 15 and 18 of 20
    assert (lrs[11], lrs[12], lrs[15], lrs[18]) == pytest.approx((0.1, 0.01, 1e-3, 1e-4))
    assert (
        run_identity(cmi, teacher_file=None).fingerprint
        != run_identity(teacher_config("cifar10", "resnet34", {"epochs": 20})[0], teacher_file=None).fingerprint
    )
    with pytest.raises(ConfigError, match="two teacher recipes"):
        teacher_config("cifar10", "resnet34", {"recipe": "cmi"}, recipe="datafree")


def test_an_unknown_recipe_is_one_error_line_with_close_matches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    assert main(["train-teacher", "--dataset", "digits", "--model", "lenet5", "--recipe", "cmj", "epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown teacher recipe 'cmj'" in err and "Did you mean 'cmi'" in err
    assert "datafree" in err and not (tmp_path / "zoo").exists() and not (tmp_path / "results").exists()
    with pytest.raises(UnknownNameError):
        recipe_method("CMI")
    assert issubclass(UnknownNameError, DatafreeError)


def test_keep_is_last_or_best():
    base = {"method": "scratch", "dataset": "digits", "student": "lenet5", "teacher": None}
    assert resolve({**base, "keep": "last"}).keep is None  # the default, one fingerprint
    assert resolve({**base, "keep": "best"}).keep == "best"
    with pytest.raises(ConfigError, match="Did you mean 'best'"):
        resolve({**base, "keep": "bset"})


def test_a_cmi_teacher_records_its_recipe_and_keeps_the_best_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    accs = iter([40.0, 70.0, 55.0])
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: {"acc": next(accs)})
    entry = train_teacher("digits", "lenet5", {"epochs": 3, "progress": False}, recipe="cmi", log=QUIET)
    assert entry["recipe"]["name"] == "cmi" and entry["recipe"]["method"] == "scratch_cmi"
    assert entry["recipe"]["keep"] == "best" and entry["recipe"]["milestones"] == [0.6, 0.75, 0.9]
    assert (entry["accuracy"], entry["best_accuracy"], entry["last_accuracy"]) == (70.0, 70.0, 55.0)
    assert entry["kept"].startswith("best (epoch 2")
    manifest = yaml.safe_load(open(tmp_path / "zoo" / "manifest.yaml"))
    assert manifest["digits_lenet5"]["recipe"]["name"] == "cmi"
    ckpt = torch.load(tmp_path / "zoo" / "digits_lenet5.pt", weights_only=True)
    assert ckpt["recipe"]["name"] == "cmi" and ckpt["accuracy"] == 70.0
    run = tmp_path / "results" / "teachers" / "digits_lenet5-cmi"
    best = torch.load(run / "student_best.pt", weights_only=True)
    last = torch.load(run / "student.pt", weights_only=True)
    assert best["epoch"] == 2 and best["accuracy"] == 70.0
    assert all(torch.equal(ckpt["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])
    assert not all(torch.equal(ckpt["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    # the same recipe again: reused, not retrained
    again = train_teacher("digits", "lenet5", {"epochs": 3, "progress": False}, recipe="cmi", log=QUIET)
    assert again["sha256"] == entry["sha256"]


def test_a_teacher_of_the_other_recipe_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    quiet = {"epochs": 2, "progress": False}
    ours = train_teacher("digits", "lenet5", quiet, log=QUIET)
    assert ours["recipe"]["name"] == "datafree" and ours["kept"] == "last"
    with pytest.raises(ConfigError, match="recipe datafree, not cmi"):
        train_teacher("digits", "lenet5", quiet, recipe="cmi", log=QUIET)
    cmi = train_teacher("digits", "lenet5", quiet, recipe="cmi", force=True, log=QUIET)
    assert cmi["fingerprint"] != ours["fingerprint"] and cmi["recipe"]["name"] == "cmi"
    ckpt = torch.load(tmp_path / "zoo" / "digits_lenet5.pt", weights_only=True)
    assert ckpt["recipe"]["name"] == "cmi"
    with pytest.raises(ConfigError, match="recipe cmi, not datafree"):
        train_teacher("digits", "lenet5", quiet, log=QUIET)
    # each recipe trains in a run folder of its own: neither is set aside or relabelled
    teachers = sorted(os.listdir(tmp_path / "results" / "teachers"))
    assert teachers == ["digits_lenet5", "digits_lenet5-cmi"]
    # the demo's way: retrain under the asked recipe instead of failing
    back = train_teacher("digits", "lenet5", quiet, log=QUIET, other_recipe="retrain")
    assert back["recipe"]["name"] == "datafree" and back["fingerprint"] == ours["fingerprint"]


def test_a_suite_names_its_teacher_recipe_in_teacher_training(tmp_path, monkeypatch, capsys):
    from datafree.runner import run_suite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    suite = {
        "name": "tiny",
        "out": str(tmp_path / "suite"),
        "dataset": "digits",
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": ["kd_real"],
        "seeds": [0],
        "teacher_training": {"recipe": "cmi", "epochs": 2},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert run_suite(str(path), dry_run=True)["cells"] == 1  # the recipe is checked before anything runs
    suite["teacher_training"]["recipe"] = "cmj"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(UnknownNameError, match="Did you mean 'cmi'"):
        run_suite(str(path), dry_run=True)
