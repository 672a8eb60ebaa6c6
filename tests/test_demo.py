import json
import os
import shutil
import sys
import time

import pytest
import yaml

import datafree.executors as executors
from datafree.cli import main
from datafree.errors import DatafreeError
from datafree.demo import (
    Costs,
    costs_path,
    estimate_seconds,
    load_costs,
    lpt_loads,
    run_demo,
    split_presets,
)
from datafree.suites import expand, load_suite

#: the tiny demo: three methods whose cells take a second or two each, on a teacher trained in a second
TINY = {
    "name": "tinydemo",
    "dataset": "digits",
    "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
    "methods": ["scratch", "dafl", "deepinv"],
    "seeds": [0],
    "teacher_training": {"epochs": 8},
    "defaults": {"samples": 8, "progress": False, "epochs": 2, "batch_size": 16},
    "overrides": {
        "scratch": {"ep_steps": 3},
        "dafl": {"ep_steps": 3, "synth.synthesis_batch_size": 16, "synth.ngf": 8},
        "deepinv": {"ep_steps": 3, "synth.iterations": 2, "synth.synthesis_batch_size": 16},
    },
}


def test_tiny_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """Two cells at a time on one thread each, longest first, after the estimate; then a second invocation
    reuses every finished run and --write-costs measures them."""
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(TINY))
    # measured costs beside the suite: processes of 3.5 (dafl), 2.5 (deepinv) and 1.5 s (scratch) on two slots
    # pack as 3.5 | 2.5 + 1.5, so the cells take 4 s; with the teacher (4 s) and the rest (1 s): 9 s
    costs = {"startup": 0.5, "teacher": 4, "overhead": 1, "cells": {"dafl": 3, "deepinv": 2, "scratch": 1}}
    (tmp_path / "suite_costs.yaml").write_text(yaml.safe_dump(costs))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))  # a zoo of its own: the teacher must be trained
    spans = {}
    real = executors.run_cell_process

    def spy(cell_out, cmd, env=None, processes=None):
        t = time.monotonic()
        res = real(cell_out, cmd, env, processes)
        spans[os.path.basename(os.path.dirname(cell_out))] = (t, time.monotonic(), (env or {}).get("OMP_NUM_THREADS"))
        return res

    monkeypatch.setattr(executors, "run_cell_process", spy)
    out = tmp_path / "demo"
    text = run_demo(suite=str(path), out=str(out), jobs=2)
    err = capsys.readouterr().err
    assert "[demo] estimated 9 s: 3 of 3 cells to run, 2 at a time" in err and "after training the teacher" in err
    assert "[demo] done in " in err and "(estimated 9 s)" in err
    # the longest two started first, at once, each told one thread
    first = sorted(spans, key=lambda m: spans[m][0])[:2]
    assert set(first) == {"dafl", "deepinv"}
    assert max(spans[m][0] for m in first) < min(spans[m][1] for m in first), spans
    assert {v[2] for v in spans.values()} == {"1"}
    cell = out / "digits" / "dafl" / "lenet5-lenet5_half-s0"
    assert yaml.safe_load((cell / "cell.yaml").read_text())["threads"] == 1
    assert (out / "README.md").exists() and (out / "curves.png").stat().st_size > 1000
    for m in ("| scratch † |", "| dafl |", "| deepinv |", "| teacher |"):
        assert m in text, m
    assert "## Per run" in text and "lenet5->lenet5_half" in text and "2 cells at a time" in text

    mtime, rows = os.path.getmtime(cell / "summary.json"), text.count("| dafl |")
    spans.clear()
    # a run that is not a cell of this demo (a preset of an earlier --presets, say) stays out of its tables
    shutil.copytree(cell, out / "digits" / "dafl@other" / "lenet5-lenet5_half-s0")
    text = run_demo(suite=str(path), out=str(out), jobs=2, write_costs=True)  # reuses the finished runs
    assert os.path.getmtime(cell / "summary.json") == mtime and not spans
    assert "1 finished run(s)" in text and "dafl@other" not in text and text.count("| dafl |") == rows
    err = capsys.readouterr().err
    assert "[demo] estimated 1 s: 0 of 3 cells to run" in err  # the rest only: no teacher, no cell
    written = load_costs(str(tmp_path / "suite_costs.yaml"))
    wall = json.loads((cell / "summary.json").read_text())["wall_seconds"]
    assert set(written.cells) == {"scratch", "dafl", "deepinv"} and written.cells["dafl"] == round(wall, 1)
    assert written.startup == 0.5  # no process ran now: the start-up measured before stays
    assert "1 torch thread" in written.machine


def _tiny_suite(tmp_path, monkeypatch, methods, zoo):
    """A two-epoch demo suite of ``methods`` on digits in ``tmp_path`` (the working folder), with its own zoo."""
    suite = {
        "name": "tinydemo",
        "dataset": "digits",
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": list(methods),
        "seeds": [0],
        "teacher_training": {"epochs": 2},
        "defaults": {"samples": 0, "progress": False, "epochs": 2, "batch_size": 16, "ep_steps": 3},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / zoo))
    return suite, path


def test_demo_reruns_cells_of_another_teacher(tmp_path, monkeypatch):
    """A new teacher (a fresh machine trains its own) makes every earlier demo run stale: none is reused."""
    suite, path = _tiny_suite(tmp_path, monkeypatch, ["kd_real"], "zoo_a")
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


def test_a_failing_cell_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    """A cell whose process fails is reported (stderr, error.json, the README's note) and the demo goes on."""
    suite, path = _tiny_suite(tmp_path, monkeypatch, ["kd_real", "scratch"], "zoo")
    real = executors.cell_command
    broken = [sys.executable, "-c", "import sys; print('error: kd_real broke on purpose'); sys.exit(2)"]
    monkeypatch.setattr(executors, "cell_command", lambda cell: broken if cell.entry == "kd_real" else real(cell))
    out = tmp_path / "demo"
    with pytest.raises(DatafreeError, match="1 demo method"):
        run_demo(suite=str(path), out=str(out), jobs=1)  # one at a time: kd_real first, then scratch
    assert "kd_real/lenet5-lenet5_half/s0: FAILED: error: kd_real broke on purpose" in capsys.readouterr().err
    assert (out / "digits" / "kd_real" / "lenet5-lenet5_half-s0" / "error.json").exists()
    assert (out / "digits" / "scratch" / "lenet5-lenet5_half-s0" / "summary.json").exists()
    readme = (out / "README.md").read_text()
    assert "Failed: kd_real: error: kd_real broke on purpose" in readme and "| scratch † |" in readme


def test_presets_left_out_unless_asked(tmp_path):
    """The demo suite's presets (`name:preset`) are left out by default; --presets brings them back."""
    suite = load_suite(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "suites", "demo.yaml"))
    cells = expand(suite, out=str(tmp_path))
    kept, left = split_presets(cells, presets=False)
    assert left and all(":" in c.method for c in left) and not any(":" in c.method for c in kept)
    assert {"hidfd:released", "cmi:tuned_fast"} <= {c.entry for c in left} and "hidfd" in {c.entry for c in kept}
    assert split_presets(cells, presets=True) == (cells, [])


def test_cli_demo_flags(monkeypatch):
    """`datafree demo` passes --presets and --write-costs on; both are off by default."""
    import datafree.demo

    calls = []
    monkeypatch.setattr(datafree.demo, "run_demo", lambda **kw: calls.append(kw))
    assert main(["demo"]) == 0 and main(["demo", "--presets", "--write-costs"]) == 0
    assert (calls[0]["presets"], calls[0]["write_costs"]) == (False, False)
    assert (calls[1]["presets"], calls[1]["write_costs"]) == (True, True)


def test_lpt_packing_and_estimate():
    """Longest first onto the slot that frees first; the estimate adds the teacher only when it is trained."""
    assert lpt_loads([3, 3, 3, 4, 5], 2) == [8.0, 10.0]  # 5 | 4, 3 -> 5+3 | 7+3: LPT, not the best (9)
    assert lpt_loads([5, 1], 4) == [5.0, 1.0, 0.0, 0.0]
    assert lpt_loads([2, 2, 2], 1) == [6.0]
    costs = Costs(cells={"a": 10, "b": 6, "c": 4}, startup=1, teacher=7, overhead=2, default=20)
    assert estimate_seconds(costs, ["a", "b", "c"], 2, teacher=False) == 12 + 2  # 11 | 7 + 5, start-ups included
    assert estimate_seconds(costs, ["a", "b", "c"], 2, teacher=True) == 12 + 2 + 7
    assert estimate_seconds(costs, ["a", "new"], 2, teacher=False) == 21 + 2  # an unmeasured cell: the default
    assert estimate_seconds(costs, [], 2, teacher=False) == 2


@pytest.mark.parametrize("text", ["cells: [1, 2]", "cells: {a: fast}", ": :"])
def test_bad_cost_file_falls_back_to_defaults(tmp_path, capsys, text):
    path = tmp_path / "demo_costs.yaml"
    path.write_text(text)
    assert load_costs(str(path)) == Costs()
    assert "cannot be used" in capsys.readouterr().err
    assert costs_path("benchmarks/suites/demo.yaml") == "benchmarks/suites/demo_costs.yaml"
