import json
import os

import pytest
import torch
import yaml

from conftest import tiny
from datafree.engine import Engine, run
from datafree.errors import DatafreeError
from datafree.results import read_jsonl


@pytest.mark.parametrize("method", ["dafl", "deepinv"])
def test_run_writes_records(zoo, tmp_path, method):
    run(tiny(method, tmp_path / "r"))
    d = tmp_path / "r"
    for f in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
        "student.pt",
        "samples_0000.png",
        "samples_0001.png",
    ):
        assert (d / f).exists(), f
    s = json.loads((d / "summary.json").read_text())
    for key in (
        "best_acc",
        "last_acc",
        "mean_acc",
        "var_acc",
        "peak_memory_mb",
        "synthesis_hours",
        "distill_hours",
        "total_hours",
        "gpu_hours",
        "images_synthesized",
        "images_seen",
        "teacher_acc",
        "seed",
        "versions",
    ):
        assert key in s, key
    assert s["images_seen"] == 2 * 3 * 16
    assert s["peak_memory_mb"] > 0 and s["teacher_acc"] > 50
    m = read_jsonl(str(d / "metrics.jsonl"))
    assert [r["epoch"] for r in m] == [1, 2]
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["method"] == method and cfg["synthesizer"] == method


def _interrupt_after_first_checkpoint(monkeypatch):
    real = Engine.save_checkpoint
    calls = {"n": 0}

    def save_then_die(self, epoch):
        real(self, epoch)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Engine, "save_checkpoint", save_then_die)


@pytest.mark.parametrize("method", ["dafl", "deepinv"])
def test_resume_matches_uninterrupted_run(zoo, tmp_path, monkeypatch, method):
    full = run(tiny(method, tmp_path / "full", epochs=3))
    with monkeypatch.context() as m:
        _interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            run(tiny(method, tmp_path / "cut", epochs=3))
    assert not (tmp_path / "cut" / "summary.json").exists()
    with pytest.raises(DatafreeError, match="--resume"):
        run(tiny(method, tmp_path / "cut", epochs=3))  # no silent restart over an existing run
    resumed = run(tiny(method, tmp_path / "cut", epochs=3), resume=True)
    a = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "student.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
    mb = read_jsonl(str(tmp_path / "cut" / "metrics.jsonl"))
    assert [r["acc"] for r in ma] == [r["acc"] for r in mb]
    assert [r["epoch"] for r in mb] == [1, 2, 3]  # no record duplicated by the resume
    assert resumed["images_synthesized"] == full["images_synthesized"]


def test_resume_of_a_finished_run_returns_its_summary(zoo, tmp_path):
    first = run(tiny("dafl", tmp_path / "r"))
    again = run(tiny("dafl", tmp_path / "r"), resume=True)
    assert again == first


def test_overwrite_starts_clean(zoo, tmp_path):
    run(tiny("deepinv", tmp_path / "r"))
    (tmp_path / "r" / "stale.txt").write_text("x")
    s = run(tiny("deepinv", tmp_path / "r"), overwrite=True)
    assert not (tmp_path / "r" / "stale.txt").exists() and s["evaluations"] == 2


def test_new_run_never_sees_earlier_images(zoo, tmp_path):
    e1 = Engine(tiny("deepinv", tmp_path / "a"))
    e1.run()
    assert len(e1.synth.pool) == 2 * 1 * 16
    e2 = Engine(tiny("deepinv", tmp_path / "b", epochs=1))
    e2.setup()
    assert len(e2.synth.pool) == 0


def test_warmup_epochs_do_not_train_the_student(zoo, tmp_path):
    s = run(tiny("dafl", tmp_path / "r", epochs=3, warmup=1))
    assert s["evaluations"] == 2 and s["images_seen"] == 2 * 3 * 16
    assert s["images_synthesized"] == 3 * 16  # one round per epoch, warm-up included


def test_kd_steps_rounds(zoo, tmp_path):
    s = run(tiny("dafl", tmp_path / "r", epochs=1, ep_steps=5, kd_steps=2))
    assert s["images_synthesized"] == 3 * 16  # rounds of 2, 2 and 1 student steps


def test_tensorboard_logging(zoo, tmp_path):
    pytest.importorskip("tensorboard")
    run(tiny("dafl", tmp_path / "r", log="tensorboard", epochs=1))
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "r" / "tensorboard"))
