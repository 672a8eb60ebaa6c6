import os

import yaml

from datafree.demo import run_demo


def test_tiny_demo_end_to_end(zoo, tmp_path, monkeypatch):
    """The demo machinery on a two-method suite: teacher reused, runs, both tables and the curves."""
    suite = {
        "name": "tinydemo",
        "dataset": "digits",
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": ["scratch", "dafl", "deepinv"],
        "seeds": [0],
        "defaults": {"samples": 8, "progress": False, "epochs": 2, "batch_size": 16},
        "overrides": {
            "scratch": {"ep_steps": 3},
            "dafl": {"ep_steps": 3, "synth.synthesis_batch_size": 16, "synth.ngf": 8},
            "deepinv": {"ep_steps": 3, "synth.iterations": 2, "synth.synthesis_batch_size": 16},
        },
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    text = run_demo(suite=str(path), out=str(out))
    assert (out / "README.md").exists() and (out / "curves.png").stat().st_size > 1000
    for m in ("| scratch † |", "| dafl |", "| deepinv |", "| teacher |"):
        assert m in text, m
    assert "## Per run" in text and "lenet5->lenet5_half" in text
    mtime = os.path.getmtime(out / "digits" / "dafl" / "lenet5-lenet5_half-s0" / "summary.json")
    run_demo(suite=str(path), out=str(out))  # a second invocation reuses finished runs
    assert os.path.getmtime(out / "digits" / "dafl" / "lenet5-lenet5_half-s0" / "summary.json") == mtime


def test_demo_reruns_cells_of_another_teacher(zoo, tmp_path, monkeypatch):
    """A new teacher (a fresh machine trains its own) makes every earlier demo run stale: none is reused."""
    import json

    suite = {
        "name": "tinydemo",
        "dataset": "digits",
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": ["kd_real"],
        "seeds": [0],
        "teacher_training": {"epochs": 2},
        "defaults": {"samples": 0, "progress": False, "epochs": 2, "batch_size": 16, "ep_steps": 3},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo_a"))
    out = tmp_path / "demo"
    run_demo(suite=str(path), out=str(out))
    cell = out / "digits" / "kd_real" / "lenet5-lenet5_half-s0"
    first = json.loads((cell / "summary.json").read_text())["teacher_sha256"]
    suite["teacher_training"] = {"epochs": 3}  # another teacher, as on a fresh machine: the demo retrains it
    path.write_text(yaml.safe_dump(suite))
    text = run_demo(suite=str(path), out=str(out))
    assert json.loads((cell / "summary.json").read_text())["teacher_sha256"] != first
    assert (
        json.loads(
            (tmp_path / "demo" / "digits" / "kd_real" / "lenet5-lenet5_half-s0.stale-1" / "summary.json").read_text()
        )["teacher_sha256"]
        == first
    )
    assert "set aside and run again" in text and "were reused" not in text
