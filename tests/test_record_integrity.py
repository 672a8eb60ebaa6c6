"""Records that cannot be mixed up or lost (issue 24's eight defects, one or more tests each): cell folders named
without paths, the cells' own zoo, seeds grouped within one configuration, every run without a result listed,
signals that stop a suite resumably, the thread count in a run's identity, records checked against their own
files, and messages that name their cell and their fix."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import REPO, tiny
from datafree.cli import main
from datafree.engine import run
from datafree.identity import run_identity
from datafree.results import Identity, fingerprint_of, same_run
from datafree.rundir import RunFolder
from datafree.runs import load_runs
from datafree.suites import expand, load_suite


def _suite(tmp_path, teacher="lenet5", methods=("dafl", "zskt"), **extra):
    suite = {
        "name": "tiny",
        "out": str(tmp_path / "suite"),
        "dataset": "digits",
        "pairs": [{"teacher": teacher, "student": "lenet5_half"}],
        "methods": list(methods),
        "seeds": [0],
        "defaults": {"epochs": 1, "ep_steps": 2, "batch_size": 16, "samples": 0, "synth.synthesis_batch_size": 16},
    }
    suite.update(extra)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


# --------------------------------------------------------------------------- 1. no raw path in a cell folder


@pytest.mark.parametrize("relative", [False, True])
def test_a_teacher_file_names_cells_by_its_sha256_not_its_path(zoo, tmp_path, monkeypatch, relative):
    """Two methods of a suite whose teacher is a file get a folder each, inside the suite's folder, named by the
    file's stem and sha256: before, every cell shared ``<path>-lenet5_half-s0`` outside the suite."""
    from datafree.results import file_sha256
    from datafree.zoo import zoo_path

    teacher = tmp_path / "digits_lenet5.pt"
    shutil.copy(zoo_path("digits", "lenet5"), teacher)
    monkeypatch.chdir(tmp_path)
    given = "digits_lenet5.pt" if relative else str(teacher)
    cells = expand(load_suite(_suite(tmp_path, teacher=given)))
    folders = {c.out for c in cells}
    assert len(folders) == 2  # one per method
    label = f"lenet5-{file_sha256(str(teacher))[:12]}"
    for c in cells:
        assert os.path.commonpath([c.out, str(tmp_path / "suite")]) == str(tmp_path / "suite")
        assert os.path.basename(c.out) == f"{label}-lenet5_half-s0" and str(tmp_path) not in c.name
    # and the suite runs each cell in its own folder, as the method it says
    assert main(["bench", _suite(tmp_path, teacher=given)]) == 0
    for c in cells:
        assert json.load(open(os.path.join(c.out, "summary.json")))["method"] == c.method


# --------------------------------------------------------------------------- 2. the cells' zoo


def test_bench_trains_a_missing_teacher_into_the_zoo_its_cells_use(tmp_path, monkeypatch):
    """The cells look their teacher up in ``model_zoo``: bench trains it there, even when ./model_zoo has one
    (before, it trained nothing, and every cell failed); and does not train when the cells' zoo has it."""
    import datafree.runner as runner
    from datafree.zoo import zoo_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATAFREE_ZOO", raising=False)
    os.makedirs("model_zoo")
    open(zoo_path("digits", "lenet5", "model_zoo"), "wb").close()  # the default zoo has one
    trained = []

    def fake_train(dataset, model, over, zoo=None, log=print, **kw):
        trained.append(zoo)
        raise RuntimeError("stop here")  # the call is what this test checks

    monkeypatch.setattr(runner, "train_teacher", fake_train)
    cells_zoo = str(tmp_path / "cells_zoo")
    path = _suite(tmp_path, methods=("dafl",), defaults={"model_zoo": cells_zoo, "epochs": 1})
    res = runner.run_suite(path, tables=False)
    assert trained == [cells_zoo] and res["failed"] == 1
    err = json.load(open(tmp_path / "suite" / "digits" / "dafl" / "lenet5-lenet5_half-s0" / "error.json"))
    assert cells_zoo in err["error"] and "stop here" in err["error"]
    # the cells' zoo has the teacher, the default one does not: nothing is trained
    trained.clear()
    os.unlink(zoo_path("digits", "lenet5", "model_zoo"))
    os.makedirs(cells_zoo, exist_ok=True)
    open(zoo_path("digits", "lenet5", cells_zoo), "wb").close()
    runner.train_missing_teachers(load_suite(path), expand(load_suite(path)))
    assert trained == []


# --------------------------------------------------------------------------- 3. seeds of one configuration


def test_table_averages_seeds_only_within_one_configuration(zoo, tmp_path, capsys):
    """Two seed-0 runs at lr 0.002 and 0.05 are two labelled rows, not one mean with seeds=2."""
    for lr in (0.002, 0.05):
        run(tiny("dafl", tmp_path / "runs" / f"lr{lr}", optim={"lr": lr}))
    df = load_runs(str(tmp_path / "runs"))
    from datafree.report import accuracy_rows, tables_markdown

    rows = [r for r in accuracy_rows(df) if r["method"].startswith("dafl")]
    assert sorted(r["method"] for r in rows) == ["dafl [optim.lr=0.002]", "dafl [optim.lr=0.05]"]
    assert all(r["seeds"] == 1 for r in rows)
    text = tables_markdown(df)
    assert "different configs or teachers" in text and "`dafl [optim.lr=0.05]`" in text
    # seeds of one configuration still average into one row
    run(tiny("dafl", tmp_path / "runs" / "lr0.05-s1", optim={"lr": 0.05}, seed=1))
    rows = {r["method"]: r for r in accuracy_rows(load_runs(str(tmp_path / "runs")))}
    assert rows["dafl [optim.lr=0.05]"]["seeds"] == 2 and rows["dafl [optim.lr=0.002]"]["seeds"] == 1


# --------------------------------------------------------------------------- 4. runs without a result


def test_failed_stopped_and_set_aside_runs_are_listed(zoo, tmp_path, monkeypatch, capsys):
    from conftest import run_killed

    root = tmp_path / "runs"
    run(tiny("dafl", root / "done"))
    run_killed(tiny("dafl", root / "killed", epochs=3), monkeypatch)
    os.makedirs(root / "failed")
    (root / "failed" / "error.json").write_text(json.dumps({"error": "CheckpointError: teacher does not fit"}))
    shutil.copytree(root / "done", root / "done.stale-1")
    shutil.copytree(root / "done", root / "other" / ".overwritten")
    assert main(["table", str(root)]) == 0
    readme = (root / "README.md").read_text()
    section = readme.split("## Runs without a result", 1)[1]
    for path, state in (("killed", "stopped"), ("failed", "failed"), ("done.stale-1", "set aside")):
        assert f"`{path}` | {state} |" in section, path
    assert f"`{os.path.join('other', '.overwritten')}` | set aside |" in section
    assert "teacher does not fit" in section
    df = load_runs(str(root))
    assert list(df["run_dir"]) == [str(root / "done")]  # only the finished run is a row


# --------------------------------------------------------------------------- 5. signals


def test_sigterm_to_bench_stops_its_cells_and_the_suite_resumes(zoo, tmp_path):
    """SIGTERM to ``bench``: the running cell stops too (no orphan keeps training and holding its folder), bench
    exits 143, and the same command continues the cell from its checkpoint."""
    path = _suite(tmp_path, methods=("dafl",), defaults={"epochs": 400, "ep_steps": 20, "samples": 0})
    cell = expand(load_suite(path))[0]
    env = dict(os.environ, DATAFREE_ZOO=zoo, PYTHONPATH=REPO, OMP_NUM_THREADS="1")  # the threads this test has
    cmd = [sys.executable, "-m", "datafree.cli", "bench", path]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = os.path.join(cell.out, "checkpoint.pt")
    deadline = time.time() + 120
    while not os.path.isfile(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert os.path.isfile(ckpt), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in 120 s"
    pid = json.load(open(os.path.join(cell.out, "attempts.json")))["attempts"][-1]["pid"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "STOPPED" in out and "run the same command again" in out
    assert not os.path.exists(f"/proc/{pid}"), "the cell's process outlived its bench"
    assert not RunFolder(cell.out).in_use() and not os.path.isfile(os.path.join(cell.out, "error.json"))
    assert RunFolder(cell.out).has_checkpoint() and not RunFolder(cell.out).is_finished()
    attempts = json.load(open(os.path.join(cell.out, "attempts.json")))["attempts"]
    assert len(attempts) == 1 and attempts[0]["seconds"] > 0  # its wall time is on record
    from datafree.runner import cell_status

    assert cell_status(cell) == "partial"  # resumable: the same bench continues it


# --------------------------------------------------------------------------- 6. threads


def test_the_thread_count_enters_a_cpu_runs_identity(zoo, tmp_path):
    """threads=2 computes another student than threads=1 (13.89 against 15.83 before), so it is another run:
    the fingerprint differs, and a record of one is not the other's."""
    one = run_identity(tiny("dafl", tmp_path / "a", threads=1), device_kind="cpu")
    two = run_identity(tiny("dafl", tmp_path / "a", threads=2), device_kind="cpu")
    assert one.fields["threads"] == 1 and two.fields["threads"] == 2 and one.fingerprint != two.fingerprint
    auto = run_identity(tiny("dafl", tmp_path / "a"), device_kind="cpu", threads=3)  # what a runner gives it
    assert auto.fields["threads"] == 3
    assert "threads" not in run_identity(tiny("dafl", tmp_path / "a", threads=2), device_kind="cuda").fields
    # a record made before the field is recognised by the thread count its summary names, and only by it
    legacy = {k: v for k, v in one.fields.items() if k != "threads"}
    old = Identity(fingerprint_of(legacy), legacy)
    assert same_run(old, one, recorded_threads=1) and not same_run(old, two, recorded_threads=1)


def test_a_record_of_another_thread_count_is_not_resumed(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    run(tiny("scratch", out, teacher=None, threads=1))
    capsys.readouterr()
    cfg = ["--config", str(out / "config.yaml"), "--resume", "threads=2"]
    assert main(["distill", *cfg]) == 2
    assert "threads 1 -> 2" in capsys.readouterr().err


# --------------------------------------------------------------------------- 7. records checked against their files


def test_an_edited_summary_is_flagged_not_tabled(zoo, tmp_path, capsys):
    out = tmp_path / "runs" / "r"
    run(tiny("dafl", out))
    s = json.load(open(out / "summary.json"))
    s["last_acc"] = s["best_acc"] = 99.9
    (out / "summary.json").write_text(json.dumps(s))
    df = load_runs(str(tmp_path / "runs"))
    assert len(df) == 0
    (skip,) = df.attrs["skipped"]
    assert "summary.json says last 99.90 but metrics.jsonl holds" in skip["reason"]


def test_a_metrics_file_cut_at_a_line_break_is_noticed(zoo, tmp_path):
    out = tmp_path / "runs" / "r"
    run(tiny("dafl", out, epochs=3))
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))  # the last line gone, cleanly
    df = load_runs(str(tmp_path / "runs"))
    assert len(df) == 0 and "metrics.jsonl" in df.attrs["skipped"][0]["reason"]


def test_an_edited_checkpoint_is_refused_on_resume(zoo, tmp_path, monkeypatch, capsys):
    from conftest import run_killed

    out = tmp_path / "r"
    run_killed(tiny("scratch", out, teacher=None, epochs=3), monkeypatch, after=2)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["metrics"][0]["acc"] = 99.9
    torch.save(state, out / "checkpoint.pt")
    assert main(["distill", "--config", str(out / "config.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt and metrics.jsonl disagree at evaluation 1" in err and "--overwrite" in err


def test_resume_rewrites_config_yaml_from_the_resolved_config(zoo, tmp_path, monkeypatch):
    from conftest import run_killed

    out = tmp_path / "r"
    cfg = tiny("scratch", out, teacher=None, epochs=3)
    run_killed(cfg, monkeypatch)
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("epochs: 3", "epochs: 300"))  # a hand edit
    run(cfg, resume=True)
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3


# --------------------------------------------------------------------------- 8. messages


def test_error_json_keeps_the_whole_message(tmp_path):
    from datafree.executors import error_text

    log = tmp_path / "log.txt"
    log.write_text(
        "=== 2026-12-07 cmd\nsome progress\nerror: no lenet5 teacher for mnist in the zoo (x is missing). Train one "
        "with\n  datafree train-teacher --dataset mnist --model lenet5\nor pass a checkpoint path: teacher=/p.pt\n"
    )
    text = error_text(str(log))
    assert text.startswith("error: no lenet5") and "datafree train-teacher --dataset mnist" in text
    assert text.endswith("teacher=/p.pt")


def test_a_bad_value_in_a_bench_cell_names_the_cell(zoo, tmp_path, capsys):
    path = _suite(tmp_path, methods=("dafl",), overrides={"dafl": {"synth.no_such_key": 1}})
    assert main(["bench", path]) == 2
    err = capsys.readouterr().err
    assert "cell digits/dafl/lenet5-lenet5_half/s0:" in err and "no_such_key" in err


def test_a_truncated_teacher_says_so(zoo, tmp_path, capsys):
    from datafree.zoo import zoo_path

    data = open(zoo_path("digits", "lenet5"), "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["inspect", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "truncated or damaged" in err and "pickled model" not in err and len(err.strip().splitlines()) == 1
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert main(["inspect", str(text)]) == 2
    assert "is not a torch checkpoint" in capsys.readouterr().err


def test_a_damaged_fingerprint_is_not_called_old(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    run(tiny("scratch", out, teacher=None))
    (out / "fingerprint.json").write_text('{"fingerprint": "ab')  # cut mid-write by a crash of another tool
    capsys.readouterr()
    assert main(["distill", "--config", str(out / "config.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint.json cannot be read (fingerprint.json is not valid JSON" in err
    assert "before run fingerprints" not in err


def test_an_attempt_killed_during_setup_is_on_record(zoo, tmp_path, monkeypatch):
    """A run killed while it measures its teacher (setup) leaves its attempt in attempts.json."""
    import datafree.engine.state as state

    out = tmp_path / "r"
    run(tiny("dafl", out, epochs=2))  # a run to resume
    os.unlink(out / "summary.json")

    def killed(self):
        raise KeyboardInterrupt("killed in setup")

    monkeypatch.setattr(state.RunState, "_measure_teacher", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny("dafl", out, epochs=2), resume=True)
    attempts = json.load(open(out / "attempts.json"))["attempts"]
    assert len(attempts) == 2 and attempts[-1]["setup"] is True


def test_a_bad_teacher_recipe_in_a_suite_names_the_teacher(tmp_path, capsys):
    path = _suite(tmp_path, methods=("dafl",), teacher_training={"epochz": 3})
    assert main(["bench", path]) == 2
    err = capsys.readouterr().err
    assert "teacher lenet5 on digits (the suite's teacher_training):" in err and "'epochz'" in err


# --------------------------------------------------------------------------- from the review of the redesign


def test_a_record_from_before_the_thread_field_is_a_seed_of_the_same_configuration(zoo, tmp_path):
    """A record made before ``threads`` entered the identity (at the thread count its summary names) and a new
    record of the same config are seeds of one row, as the runner reuses the one for the other."""
    from datafree.report import accuracy_rows

    root = tmp_path / "runs"
    run(tiny("dafl", root / "s0"))
    run(tiny("dafl", root / "s1", seed=1))
    ident = RunFolder(str(root / "s0")).read_identity()
    legacy = {k: v for k, v in ident.fields.items() if k != "threads"}  # as the engine wrote it before
    RunFolder(str(root / "s0")).write_identity(Identity(fingerprint_of(legacy), legacy))
    assert "(1 torch threads)" in json.load(open(root / "s0" / "summary.json"))["machine"]
    rows = [r for r in accuracy_rows(load_runs(str(root))) if r["method"] != "teacher"]
    assert [(r["method"], r["seeds"]) for r in rows] == [("dafl", 2)]


def test_cells_a_stopped_suite_never_started_are_reported(tmp_path):
    from datafree import executors
    from datafree.suites import Cell

    cells = [Cell("m", "m", "digits", None, "s", i, out=str(tmp_path / f"c{i}")) for i in range(3)]
    ex = executors.LocalExecutor(gpus=0, jobs=1, poll=0.01, threads=1)
    seen = []

    def stops_the_suite(cell_out, cmd, env=None, processes=None):
        ex.stop()  # as SIGTERM does while the first cell runs
        return {"returncode": 130, "seconds": 0.0, "stopped": True}

    real, executors.run_cell_process = executors.run_cell_process, stops_the_suite
    try:
        ex.run(cells, lambda c, r: seen.append((c.seed, bool(r.get("not_started")))))
    finally:
        executors.run_cell_process = real
    assert seen == [(0, False), (1, True), (2, True)]


def test_the_evaluation_time_is_in_its_own_line(zoo, tmp_path):
    """Each metrics line counts its own evaluation (and sample grid) in ``seconds`` and ``phase_seconds``."""
    run(tiny("dafl", tmp_path / "r"))
    first = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["phase_seconds"]["eval"] > 0


def test_a_failed_start_keeps_the_earlier_attempts_and_a_probe_writes_nothing(tmp_path):
    folder = RunFolder(str(tmp_path / "r"))
    folder.acquire()
    folder.start_attempt("f1")
    folder.close_attempts()  # killed during its setup, say
    folder.start_attempt("f1")
    folder.discard_attempts()  # the next start failed too: only its own attempt goes
    assert len(json.load(open(tmp_path / "r" / "attempts.json"))["attempts"]) == 1
    lock = tmp_path / "r" / ".datafree.lock"
    before = lock.read_text()
    assert folder.in_use() and lock.read_text() == before  # the probe's own open file meets the held lock
    folder.release()
    assert not folder.in_use() and not lock.exists()  # a released folder keeps no lock file


def test_evaluations_compare_a_non_finite_accuracy_as_the_null_it_is_written_as():
    from datafree.results import same_evaluations

    assert same_evaluations([{"epoch": 1, "acc": float("nan")}], [{"epoch": 1, "acc": None}])
    assert not same_evaluations([{"epoch": 1, "acc": 50.0}], [{"epoch": 1, "acc": None}])
    assert not same_evaluations([{"epoch": 1, "acc": 50.0}], [])


def test_a_run_resumed_past_its_record_is_listed_not_called_edited(zoo, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    out = root / "r"
    run(tiny("dafl", out, epochs=2))
    s = json.load(open(out / "summary.json"))
    attempts = json.load(open(out / "attempts.json"))
    attempts["attempts"].append({"started": "9999-01-01T00:00:00", "pid": 1, "seconds": 1.0, "from_epoch": 2})
    (out / "attempts.json").write_text(json.dumps(attempts))
    lines = (out / "metrics.jsonl").read_text() + json.dumps({"epoch": 3, "acc": 1.0}) + "\n"
    (out / "metrics.jsonl").write_text(lines)  # the run on wrote a line past its old record
    df = load_runs(str(root))
    assert len(df) == 0 and df.attrs["skipped"] == [] and s["status"] == "finished"
    (entry,) = df.attrs["unfinished"]
    assert entry["state"] == "stopped" and "resumed after its record" in entry["detail"]
