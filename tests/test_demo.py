import os

import yaml

from datafree.demo import run_demo


def test_tiny_demo_end_to_end(zoo, tmp_path, monkeypatch):
    """The demo machinery on a two-method suite: teacher reused, runs, both tables and the curves."""
    suite = {
        "name": "tinydemo", "dataset": "digits",
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": ["scratch", "dafl", "deepinv"], "seeds": [0],
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
