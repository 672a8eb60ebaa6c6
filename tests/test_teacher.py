"""datafree.load_teacher: one loader for our checkpoints, bare state dicts, timm files and timm's cache."""

import json
import os

import pytest
import torch

from datafree import load_teacher
from datafree.cli import main
from datafree.errors import CheckpointError, UnknownNameError
from datafree.models import create_model, save_model
from datafree.methods import check_arch
from datafree.names import name_from_file


def _zoo_teacher(zoo):
    return os.path.join(zoo, "digits_lenet5.pt")


def _same_function(a, b, shape=(4, 1, 8, 8)):
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_our_checkpoint_by_name_and_by_path(zoo):
    model, rec = load_teacher("lenet5", dataset="digits")
    assert rec["path"] == _zoo_teacher(zoo) and rec["file"] == "digits_lenet5.pt"
    assert (rec["kind"], rec["layout"], rec["arch"], rec["arch_from"]) == (
        "trained",
        "datafree",
        "lenet5",
        "checkpoint",
    )
    assert rec["recipe"] == "datafree" and rec["num_classes"] == 10 and rec["channels"] == 1
    assert len(rec["sha256"]) == 64
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    again, rec2 = load_teacher(_zoo_teacher(zoo))  # a path needs no dataset: counts from the file's spec
    assert rec2["sha256"] == rec["sha256"] and _same_function(model, again)


def test_a_name_without_a_dataset_is_refused():
    with pytest.raises(CheckpointError, match="dataset="):
        load_teacher("lenet5")


def test_bare_state_dict_needs_its_architecture(zoo, tmp_path):
    ours, _ = load_teacher("lenet5", dataset="digits")
    bare = tmp_path / "mine.pt"
    torch.save(ours.state_dict(), bare)
    with pytest.raises(CheckpointError, match="teacher_arch=<model>"):
        load_teacher(str(bare), dataset="digits")
    model, rec = load_teacher(str(bare), dataset="digits", arch="lenet5")
    assert (rec["arch_from"], rec["kind"], rec["layout"]) == ("argument", "unknown", "datafree")
    assert _same_function(ours, model)
    named = tmp_path / "digits_lenet5.pth"  # a registered model in the file name is taken as its architecture
    torch.save({"state_dict": ours.state_dict()}, named)
    _, rec = load_teacher(str(named), dataset="digits")
    assert (rec["arch"], rec["arch_from"]) == ("lenet5", "file name")


def test_another_class_count_names_both_numbers(tmp_path):
    net = create_model("lenet5", num_classes=100, in_channels=1, image_size=8)
    bare = tmp_path / "c100.pt"
    torch.save(net.state_dict(), bare)
    with pytest.raises(CheckpointError, match=r"100 classes.*digits has 10"):
        load_teacher(str(bare), dataset="digits", arch="lenet5")
    ours = tmp_path / "ours100.pt"  # our own checkpoint says its spec
    save_model(str(ours), net, "lenet5", "digits100", {"num_classes": 100, "channels": 1, "size": 8})
    with pytest.raises(CheckpointError, match=r"num_classes=100.*num_classes=10"):
        load_teacher(str(ours), dataset="digits")


def test_pickled_module_is_one_clear_line(zoo, tmp_path, capsys):
    ours, _ = load_teacher("lenet5", dataset="digits")
    pickled = tmp_path / "whole_model.pt"
    torch.save(ours, pickled)  # a pickled nn.Module: weights_only loading refuses it
    assert main(["inspect", str(pickled)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "weights_only=True" in err and "state_dict" in err
    assert len(err.strip().splitlines()) == 1


def test_teacher_arch_is_checked_by_name():
    assert check_arch("resnet34_8x") == "resnet34_8x"  # DFAD's name for our resnet34
    with pytest.raises(UnknownNameError, match="resnet34"):
        check_arch("resnet43")


@pytest.mark.parametrize(
    "teacher,dataset,name",
    [
        ("resnet34", "cifar10", "resnet34"),
        ("model_zoo/cifar10_resnet34.pth", "cifar10", "resnet34"),
        ("checkpoint/teacher/cifar10-resnet34_8x.pt", "cifar10", "resnet34_8x"),
        ("/x/cifar100_wrn40_2.pth", "cifar10", "cifar100_wrn40_2"),
        ("timm/resnet18", "cifar10", "timm/resnet18"),
        (None, "cifar10", None),
    ],
)
def test_name_from_file(teacher, dataset, name):
    assert name_from_file(teacher, dataset) == name


def test_inspect_prints_the_record_and_the_accuracy(zoo, capsys):
    assert main(["inspect", _zoo_teacher(zoo), "--dataset", "digits", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["arch"] == "lenet5" and rec["kind"] == "trained" and rec["measured_on"] == "digits"
    from datafree.zoo import read_manifest

    trained = read_manifest(zoo)["digits_lenet5"]["accuracy"]  # what train-teacher measured, to 2 decimals
    assert rec["test_accuracy"] > 20 and abs(rec["test_accuracy"] - trained) <= 0.01
    assert main(["inspect", _zoo_teacher(zoo)]) == 0
    out = capsys.readouterr().out
    assert "layout" in out and "sha256" in out and "test_accuracy" not in out


def test_a_run_records_which_teacher_produced_it(zoo, tiny_cfg, tmp_path):
    from datafree.engine import Engine

    summary = Engine(tiny_cfg("dafl", tmp_path / "r", epochs=1, ep_steps=1)).run()
    src = summary["teacher_source"]
    assert src["kind"] == "trained" and src["recipe"] == "datafree" and src["file"] == "digits_lenet5.pt"
    assert src["sha256"] == summary["teacher_sha256"]


# -- timm -------------------------------------------------------------------------------------------------


def test_timm_wrapper_keys_are_timms_own(tmp_path):
    import timm

    ref = timm.create_model("test_resnet", num_classes=10)
    ours = create_model("timm/test_resnet", num_classes=10, in_channels=3, image_size=32)
    assert list(ours.state_dict()) == list(ref.state_dict())  # no prefix, the classifier once
    f = tmp_path / "timm_test_resnet.pth"
    torch.save(ref.state_dict(), f)  # a timm model saved as timm saves it
    model, rec = load_teacher(str(f), arch="timm/test_resnet")
    assert rec["num_classes"] == 10 and rec["channels"] == 3
    assert _same_function(ref, model, (2, 3, 32, 32))
    ours.load_state_dict(model.state_dict())  # and back: our keys load into timm's layout
    ref.load_state_dict(ours.state_dict())


def _fake_hf_cache(root, name="test_resnet.r160_in1k", classes=1000):
    import timm
    from safetensors.torch import save_file

    net = timm.create_model(name.split(".")[0], num_classes=classes)
    snap = root / "hub" / f"models--timm--{name}" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (root / "hub" / f"models--timm--{name}" / "refs").mkdir()
    (root / "hub" / f"models--timm--{name}" / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snap / "model.safetensors"))
    return net


def test_timm_pretrained_from_the_local_cache_only(tmp_path, monkeypatch, zoo):
    from datafree.zoo import resolve_teacher

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="pretrained=True"):  # not cached: how to fetch it on a connected machine
        resolve_teacher("timm/test_resnet.r160_in1k", "digits")
    net = _fake_hf_cache(tmp_path / "hf")
    path = resolve_teacher("timm/test_resnet.r160_in1k", "digits")
    assert path.endswith("model.safetensors")
    model, rec = load_teacher(path)
    assert (rec["kind"], rec["layout"], rec["arch"]) == ("pretrained", "timm", "timm/test_resnet.r160_in1k")
    assert rec["num_classes"] == 1000 and _same_function(net, model, (2, 3, 32, 32))
    with pytest.raises(CheckpointError, match="1000 classes, but digits has 10"):
        load_teacher("timm/test_resnet.r160_in1k", dataset="digits")


# -- the reference repositories' files ---------------------------------------------------------------------


def _reference_state(arch, layout="cmi", classes=10):
    """A state dict with the names and shapes the reference classes save (tests/fixtures/reference_layouts.json)."""
    path = os.path.join(os.path.dirname(__file__), "fixtures", "reference_layouts.json")
    with open(path) as f:
        entries = json.load(f)["layouts"]
    e = next(e for e in entries if (e["arch"], e["layout"], e["num_classes"]) == (arch, layout, classes))
    g = torch.Generator().manual_seed(0)
    return {
        k: (
            torch.rand(shape, generator=g) + 0.5
            if "running_var" in k
            else torch.zeros(shape, dtype=torch.long)
            if k.endswith("num_batches_tracked")
            else torch.randn(shape, generator=g) * 0.1
        )
        for k, shape in e["keys"]
    }


def test_a_cmi_checkpoint_in_the_zoo_is_the_published_teacher(tmp_path, monkeypatch):
    from datafree.runner import teacher_origin
    from datafree.zoo import resolve_teacher, zoo_path

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setenv("DATAFREE_ZOO", str(zoo))
    state = {"module." + k: v for k, v in _reference_state("resnet8").items()}  # saved from DataParallel
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet8",
            "state_dict": state,
            "best_acc1": 88.5,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0001, "momentum": 0.9}]},
        },
        zoo / "cifar10_resnet8.pth",
    )
    ours = create_model("resnet8")
    save_model(
        zoo_path("cifar10", "resnet8"), ours, "resnet8", "cifar10", {"num_classes": 10, "channels": 3, "size": 32}
    )
    assert resolve_teacher("resnet8", "cifar10").endswith("cifar10_resnet8.pth")  # the published file first
    assert teacher_origin("cifar10", "resnet8").startswith("published file")
    model, rec = load_teacher("resnet8", dataset="cifar10")
    assert (rec["kind"], rec["layout"], rec["arch"], rec["arch_from"]) == ("published", "cmi", "resnet8", "checkpoint")
    assert rec["stored_accuracy"] == 88.5 and rec["num_classes"] == 10 and rec["recipe"] is None
    assert torch.equal(model.state_dict()["head.weight"], state["module.fc.weight"])
    with pytest.raises(CheckpointError, match=r"10 classes.*cifar100 has 100"):
        load_teacher(str(zoo / "cifar10_resnet8.pth"), dataset="cifar100")


def test_an_old_mobilenetv2_checkpoint_is_the_cifar_network(tmp_path):
    net = create_model("mobilenetv2_cifar")
    path = tmp_path / "old.pt"
    save_model(str(path), net, "mobilenetv2", "cifar10", {"num_classes": 10, "channels": 3, "size": 32})
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = "datafree-model/1"  # saved before the name went to the reference network
    torch.save(ckpt, path)
    model, rec = load_teacher(str(path))
    assert rec["arch"] == "mobilenetv2_cifar" and _same_function(net, model, (2, 3, 32, 32))


# -- review fixes: identity and lookups ------------------------------------------------------------------


def test_a_record_from_before_unset_keys_were_dropped_is_still_the_same_run(tmp_path):
    from datafree.methods import resolve
    from datafree.results import Identity, fingerprint_of, same_run
    from datafree.identity import run_identity

    new = run_identity(
        resolve({"method": "scratch", "dataset": "digits", "student": "lenet5", "teacher": None}), teacher_file=None
    )
    legacy_fields = {**new.fields, "ep_steps": None, "teacher": None}  # what the old code hashed
    old = Identity(fingerprint_of(legacy_fields), legacy_fields)
    assert old.fingerprint != new.fingerprint and same_run(old, new)
    other = {**legacy_fields, "seed": 7}
    assert not same_run(Identity(fingerprint_of(other), other), new)


def test_a_renamed_architecture_is_another_run():
    from datafree.methods import resolve
    from datafree.identity import run_identity

    base = {"method": "scratch", "dataset": "cifar10", "teacher": None}
    a = run_identity(resolve({**base, "student": "mobilenetv2"}), teacher_file=None)
    b = run_identity(resolve({**base, "student": "mobilenetv2_cifar"}), teacher_file=None)
    assert a.fields["student.revision"] == 2 and "student.revision" not in b.fields


def test_teacher_arch_names_the_pair_for_its_settings():
    from datafree.methods import resolve

    by_name = resolve({"method": "cmi", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"})
    by_arch = resolve(
        {
            "method": "cmi",
            "dataset": "cifar10",
            "teacher": "/x/my_teacher.pt",
            "teacher_arch": "resnet34",
            "student": "resnet18",
        }
    )
    by_alias = resolve(
        {"method": "cmi", "dataset": "cifar10", "teacher": "/x/cifar10-resnet34_8x.pt", "student": "resnet18"}
    )
    assert by_arch.synth == by_name.synth == by_alias.synth


def test_dfad_names_find_the_published_file(tmp_path, monkeypatch):
    from datafree.zoo import resolve_teacher

    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path))
    torch.save(create_model("resnet8").state_dict(), tmp_path / "cifar10-resnet8.pt")
    assert resolve_teacher("resnet8", "cifar10").endswith("cifar10-resnet8.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher(str(tmp_path / "nope.pt"))


def test_old_timm_checkpoints_and_timm_counts_without_a_dataset(tmp_path):
    import timm

    ref = timm.create_model("test_resnet", num_classes=100)
    f = tmp_path / "c100.pth"
    torch.save(ref.state_dict(), f)
    model, rec = load_teacher(str(f), arch="timm/test_resnet")  # counts read at timm's own classifier
    assert (rec["num_classes"], rec["channels"], rec["layout"]) == (100, 3, "timm")
    old = tmp_path / "old.pt"  # datafree-model/1 kept the wrapper's prefix and the classifier twice
    state = {"model." + k: v for k, v in ref.state_dict().items()}
    state.update({"head.fc." + k: v for k, v in ref.get_classifier().state_dict().items()})
    torch.save(
        {
            "format": "datafree-model/1",
            "arch": "timm/test_resnet",
            "dataset": "x",
            "spec": {"num_classes": 100, "channels": 3, "size": 32},
            "state_dict": state,
        },
        old,
    )
    again, rec = load_teacher(str(old))
    assert rec["layout"] == "timm" and _same_function(ref, again, (2, 3, 32, 32))


def test_a_logger_that_fails_to_start_leaves_no_run_directory(zoo, tiny_cfg, tmp_path, monkeypatch):
    from datafree import loggers
    from datafree.engine import Engine

    def broken(spec, run_dir, name, start_step=0):
        os.makedirs(os.path.join(run_dir, "wandb"))
        raise loggers.DatafreeError("log=wandb: wandb.init failed")

    monkeypatch.setattr(loggers, "open_logger", broken)
    with pytest.raises(Exception, match="wandb.init failed"):
        Engine(tiny_cfg("dafl", tmp_path / "r", epochs=1, ep_steps=1)).run()
    assert not (tmp_path / "r").exists()
