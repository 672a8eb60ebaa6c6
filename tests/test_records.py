"""Records are evidence: run identity, one owner per directory, divergence and collapse as outcomes,
validation before I/O, measured teachers, a runner that never hangs, and the small things."""

import errno
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import count_calls, run_killed, tiny
from datafree.cli import main
from datafree.engine import Engine, run


def _cli_distill(out, *extra):
    return [
        "distill",
        "--method",
        "scratch",
        "--dataset",
        "digits",
        "--student",
        "lenet5_half",
        "--out",
        str(out),
        "epochs=2",
        "ep_steps=2",
        "batch_size=16",
        "samples=0",
        "progress=false",
        *extra,
    ]


def _lines(text):
    return [l for l in text.splitlines() if l.strip()]


# --------------------------------------------------------------------------- 1. run identity


def test_resolved_config_shows_every_method_default(zoo, tmp_path, capsys):
    """DAFL's generator BN eps (a Config default no YAML names) is in --print-config and config.yaml."""
    assert (
        main(
            [
                "distill",
                "--method",
                "dafl",
                "--dataset",
                "digits",
                "--teacher",
                "lenet5",
                "--student",
                "lenet5_half",
                "--print-config",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["synth"]["bn_eps"] == 0.8 and printed["distill"]["T"] == 1.0
    cfg = tiny("dafl", tmp_path / "r")
    run(cfg)
    assert yaml.safe_load(open(tmp_path / "r" / "config.yaml"))["synth"]["bn_eps"] == 0.8
    assert (
        json.load(open(tmp_path / "r" / "summary.json"))["fingerprint"]
        == json.load(open(tmp_path / "r" / "fingerprint.json"))["fingerprint"]
    )


def test_fingerprint_ignores_paths_and_follows_the_teacher_weights(zoo, tmp_path):
    from datafree.identity import run_identity
    from datafree.zoo import zoo_path

    a = run_identity(tiny("dafl", tmp_path / "a"))
    # threads=N is the count torch uses here (one in the tests): the same computation, the same run
    b = run_identity(tiny("dafl", tmp_path / "b", progress=True, log="tensorboard", threads=torch.get_num_threads()))
    c = run_identity(tiny("dafl", tmp_path / "c", teacher=zoo_path("digits", "lenet5")))  # same file, by path
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert run_identity(tiny("dafl", tmp_path / "a", synth={"bn_eps": 1e-5})).fingerprint != a.fingerprint
    assert run_identity(tiny("dafl", tmp_path / "a", seed=1)).fingerprint != a.fingerprint
    assert "teacher.sha256" in a.fields and "out" not in a.fields


def test_resume_refuses_another_config_and_names_the_keys(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_cli_distill(out)) == 0
    capsys.readouterr()
    assert main(_cli_distill(out, "--resume", "optim.lr=0.01", "seed=3")) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and err.startswith("error:")
    assert "optim.lr 0.05 -> 0.01" in err and "seed 0 -> 3" in err
    assert yaml.safe_load(open(out / "config.yaml"))["optim"]["lr"] == 0.05  # the old record is untouched
    assert main(_cli_distill(out, "--resume")) == 0  # the same config resumes (here: is finished)


def _suite(tmp_path, epochs=2, methods=("scratch", "kd_real"), **extra):
    suite = {
        "name": "tiny",
        "out": str(tmp_path / "suite"),
        "dataset": "digits",
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": list(methods),
        "seeds": [0],
        "defaults": {"samples": 0, "epochs": epochs, "ep_steps": 2, "batch_size": 16},
    }
    suite.update(extra)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def _in_process(monkeypatch):
    """Run the suite's cells in this process (the subprocess would not see the test's zoo fixture)."""
    import datafree.executors as executors

    def run_here(cell_out, cmd, env=None, processes=None):
        rc = main(cmd[3:])
        return {"returncode": rc, "seconds": 0.0, **({} if rc in (0, 3) else {"error": f"exit {rc}"})}

    monkeypatch.setattr(executors, "run_cell_process", run_here)


def test_runner_reuses_only_matching_cells_and_sets_stale_ones_aside(zoo, tmp_path, monkeypatch, capsys):
    from datafree.runner import run_suite

    _in_process(monkeypatch)
    res = run_suite(_suite(tmp_path), tables=False)
    assert res["ran"] == 2 and res["reused"] == 0
    res = run_suite(_suite(tmp_path), tables=False)
    assert res["ran"] == 0 and res["reused"] == 2
    capsys.readouterr()
    res = run_suite(_suite(tmp_path, epochs=3, methods=("scratch",)), tables=False)  # a new budget: stale
    assert res["ran"] == 1 and res["stale"] == 1 and res["reused"] == 0
    assert "0 reused, 1 stale -> rerun" in capsys.readouterr().err
    cell = tmp_path / "suite" / "digits" / "scratch" / "lenet5-lenet5_half-s0"
    assert json.load(open(cell / "summary.json"))["epochs"] == 3
    assert json.load(open(str(cell) + ".stale-1/summary.json"))["epochs"] == 2  # kept aside, not lost


def test_a_retrained_teacher_makes_its_cells_stale(zoo, tmp_path, monkeypatch):
    from datafree.runner import run_suite
    from datafree.train import train_teacher

    _in_process(monkeypatch)
    assert run_suite(_suite(tmp_path, methods=("kd_real",)), tables=False)["ran"] == 1
    other = tmp_path / "zoo2"
    monkeypatch.setenv("DATAFREE_ZOO", str(other))
    monkeypatch.chdir(tmp_path)
    train_teacher("digits", "lenet5", {"epochs": 2, "progress": False}, log=lambda *a: None)
    res = run_suite(_suite(tmp_path, methods=("kd_real",)), tables=False)
    assert res["stale"] == 1 and res["ran"] == 1


def test_train_teacher_never_relabels_another_seed(tmp_path, monkeypatch):
    from datafree.train import train_teacher

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    quiet = {"epochs": 2, "progress": False}
    first = train_teacher("digits", "lenet5", quiet, log=lambda *a: None)
    os.unlink(tmp_path / "zoo" / "digits_lenet5.pt")  # the finished run stays in results/teachers/
    second = train_teacher("digits", "lenet5", {**quiet, "seed": 1}, log=lambda *a: None)
    assert second["recipe"]["seed"] == 1 and second["sha256"] != first["sha256"]
    assert second["fingerprint"] != first["fingerprint"]
    assert (tmp_path / "results" / "teachers" / "digits_lenet5.stale-1").is_dir()
    # the zoo file of seed 1 is not reused for seed 0, nor silently replaced
    from datafree.errors import ConfigError

    with pytest.raises(ConfigError, match="seed 1 -> 0"):
        train_teacher("digits", "lenet5", quiet, log=lambda *a: None)
    assert train_teacher("digits", "lenet5", {**quiet, "seed": 1}, log=lambda *a: None)["sha256"] == second["sha256"]


# --------------------------------------------------------------------------- 2. one owner


HOLD = (
    "import sys, time; sys.path.insert(0, {repo!r}); from datafree.lock import DirLock; "
    "l = DirLock({d!r}).acquire(); print('held', flush=True); time.sleep(60)"
)


def _holder(d):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=repo, d=str(d))], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_on_a_run_directory_fails_at_once(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    holder = _holder(out)
    try:
        t0 = time.time()
        assert main(_cli_distill(out)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and f"pid {holder.pid}" in err and time.time() - t0 < 30
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock file is left behind: it must not block the run, which removes it when it ends
    assert (out / ".datafree.lock").exists()
    assert main(_cli_distill(out)) == 0
    assert not (out / ".datafree.lock").exists()


def test_a_released_lock_leaves_no_file_and_no_folder_it_made_empty(tmp_path):
    from datafree.lock import DirLock

    kept = tmp_path / "kept"
    kept.mkdir()
    with DirLock(str(kept / "a" / "b")):
        assert (kept / "a" / "b" / ".datafree.lock").exists()
    assert sorted(os.listdir(kept)) == []  # a/ and a/b/ were the lock's and stayed empty; kept/ was there before
    with DirLock(str(kept / "c" / "d")):
        (kept / "c" / "note").write_text("written while held")
    assert sorted(os.listdir(kept / "c")) == ["note"]  # d/ went, c/ holds a file
    again = DirLock(str(kept / "c"))
    with again:  # the path is free again, and taken again
        assert again.held


def test_two_bench_processes_on_one_suite(zoo, tmp_path, capsys):
    path = _suite(tmp_path)
    holder = _holder(tmp_path / "suite")
    try:
        assert main(["bench", path]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- 3. divergence and collapse


def test_divergence_is_an_outcome_with_exit_3(zoo, tmp_path, capsys):
    from datafree.runs import load_runs

    out = tmp_path / "r"
    assert (
        main(
            [
                "distill",
                "--method",
                "kd_real",
                "--dataset",
                "digits",
                "--teacher",
                "lenet5",
                "--student",
                "lenet5_half",
                "--out",
                str(out),
                "epochs=3",
                "ep_steps=10",
                "batch_size=16",
                "samples=0",
                "progress=false",
                "optim.lr=1e6",
            ]
        )
        == 3
    )
    s = json.load(open(out / "summary.json"))
    assert s["status"] == "diverged" and s["diverged"]["epoch"] == 1 and s["diverged"]["step"] < 10
    assert "non-finite" in s["diverged"]["reason"] and s["last_acc"] is None
    assert not (out / "student.pt").exists()
    for name in ("summary.json", "fingerprint.json", "attempts.json"):  # strict JSON: no bare NaN anywhere
        json.loads((out / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))
    df = load_runs(str(tmp_path))
    assert list(df["status"]) == ["diverged"]
    mtime = os.path.getmtime(out / "summary.json")
    assert main(["distill", "--config", str(out / "config.yaml"), "--resume"]) == 3  # an outcome: not rerun
    assert os.path.getmtime(out / "summary.json") == mtime


def test_metrics_stay_strict_json_when_a_logged_loss_is_nan(tmp_path):
    from datafree.results import atomic_write_jsonl, read_jsonl

    atomic_write_jsonl(str(tmp_path / "m.jsonl"), [{"acc": float("nan"), "synth": {"x": float("inf")}}])
    text = (tmp_path / "m.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_jsonl(str(tmp_path / "m.jsonl")) == [{"acc": None, "synth": {"x": None}}]


def test_a_method_declared_check_stops_the_run(zoo, tmp_path, monkeypatch):
    """A synthesizer's health_checks() flag (no host sync) stops the run as diverged, naming the check."""
    from datafree.synthesis.dafl import DAFL

    calls = {"n": 0}

    def saturated(self):
        calls["n"] += 1
        return {"generator saturated": torch.tensor(calls["n"] >= 2)}

    monkeypatch.setattr(DAFL, "health_checks", saturated, raising=False)
    s = run(tiny("dafl", tmp_path / "r", epochs=3, kd_steps=1))
    assert s["status"] == "diverged" and s["diverged"]["reason"] == "generator saturated"
    assert s["diverged"]["epoch"] == 1 and s["diverged"]["step"] == 1


def test_collapse_to_chance_is_marked_and_can_stop(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: {"acc": 10.0 if model is None else 97.0})
    s = run(tiny("scratch", tmp_path / "a", epochs=7, teacher=None))
    assert s["status"] == "collapsed" and s["collapsed"] and s["evaluations"] == 7
    s = run(tiny("scratch", tmp_path / "b", epochs=7, teacher=None, stop_on_collapse=True))
    assert s["status"] == "collapsed" and s["evaluations"] == 5  # 2 of grace, then 3 in a row at chance
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: {"acc": 60.0 if model is None else 97.0})
    assert run(tiny("scratch", tmp_path / "c", epochs=7, teacher=None))["status"] == "finished"


def test_the_divergence_check_does_not_sync_every_step(zoo, tmp_path, monkeypatch):
    """The flags are read at log points only: a few reads per epoch, not one per step."""
    from datafree.engine import health

    reads = count_calls(monkeypatch, health.Guard, "first_failure")
    run(tiny("scratch", tmp_path / "r", epochs=2, ep_steps=120, teacher=None))
    assert 2 <= reads["n"] <= 2 * (1 + 120 // 50)


# --------------------------------------------------------------------------- 4. validation before I/O


@pytest.mark.parametrize(
    "bad,needle",
    [
        ("batch_size=0", "batch_size"),
        ("epochs=-3", "epochs"),
        ("optim.lr=0", "optim.lr"),
        ("log=tb", "log"),
        ("warmup=2", "warmup"),
        ("ep_steps=0", "ep_steps"),
        ("optim.name=sdg", "'sgd'"),
        ("amp=bf17", "amp"),
    ],
)
def test_bad_values_fail_before_any_file_is_written(zoo, tmp_path, capsys, bad, needle):
    out = tmp_path / "r"
    assert main(_cli_distill(out, bad)) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and err.startswith("error:") and needle in err
    assert not out.exists()
    assert main(_cli_distill(out, bad, "--print-config")) == 2  # --print-config validates too


def test_unknown_suite_keys_are_errors_with_suggestions(zoo, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "dataset": "digits",
                "method": ["dafl"],
                "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
            }
        )
    )
    assert main(["bench", str(path), "--dry-run"]) == 2
    assert "'methods'" in capsys.readouterr().err
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": "digits",
                "methods": ["dafl"],
                "pairs": [{"teacher": "lenet5", "studnet": "lenet5_half", "student": "x"}],
            }
        )
    )
    assert main(["bench", str(path), "--dry-run"]) == 2
    assert "'student'" in capsys.readouterr().err
    path.write_text(
        yaml.safe_dump(
            {"dataset": "digits", "methods": "dafk*", "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}]}
        )
    )
    assert main(["bench", str(path), "--dry-run"]) == 2  # a pattern that matches nothing is a typo
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": "digits",
                "methods": ["dafl"],
                "defaults": {"batch_size": 0},
                "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
            }
        )
    )
    assert main(["bench", str(path), "--dry-run"]) == 2  # every cell's config is validated up front
    assert "batch_size" in capsys.readouterr().err


def test_a_suite_names_its_plugins(zoo, tmp_path, monkeypatch):
    from datafree.registry import METHODS
    from datafree.suites import expand, load_suite

    (tmp_path / "suite_plugin.py").write_text(
        "from datafree.methods import register_method\n"
        "register_method('dafl_from_suite_plugin', {'extends': 'dafl'}, override=True)\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": "digits",
                "methods": ["dafl_from_suite_plugin"],
                "plugins": ["suite_plugin.py"],
                "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
            }
        )
    )
    try:
        cells = expand(load_suite(str(path)))
        assert [c.method for c in cells] == ["dafl_from_suite_plugin"]
        assert cells[0].user_config()["plugins"] == [str(tmp_path / "suite_plugin.py")]
    finally:
        METHODS.unregister("dafl_from_suite_plugin")


# --------------------------------------------------------------------------- 5. the teacher is measured


def _save_lenet(path, dataset="digits", accuracy=99.9, spec=None):
    from datafree.data import get_spec
    from datafree.models import create_model, save_model

    torch.manual_seed(0)
    s = get_spec("digits")
    save_model(
        str(path),
        create_model("lenet5", s.num_classes, s.channels, s.size),
        "lenet5",
        dataset,
        spec or s.as_dict(),
        extra={"accuracy": accuracy},
    )


def test_teacher_accuracy_is_measured_not_read_from_the_file(zoo, tmp_path, monkeypatch):
    from datafree.results import file_sha256
    from datafree.zoo import measured_accuracy

    path = tmp_path / "untrained.pt"
    _save_lenet(path)
    s = run(tiny("kd_real", tmp_path / "r", teacher=str(path)))
    assert s["teacher_acc_stored"] == 99.9 and s["teacher_acc"] < 40
    assert measured_accuracy(file_sha256(str(path)), "digits", arch="lenet5") == pytest.approx(s["teacher_acc"])
    assert measured_accuracy(file_sha256(str(path)), "digits", arch="lenet5_half") is None  # per architecture
    # the second run takes it from the cache: the teacher is not evaluated again
    calls = []
    real = Engine.evaluate
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: calls.append(model) or real(self, model))
    assert run(tiny("kd_real", tmp_path / "r2", teacher=str(path)))["teacher_acc"] == pytest.approx(s["teacher_acc"])
    assert all(m is None for m in calls)


@pytest.mark.parametrize(
    "dataset,spec_change,needle",
    [
        ("mnist", {}, "trained on mnist"),
        ("digits", {"num_classes": 100}, "num_classes=100"),
        ("digits", {"channels": 3}, "channels=3"),
        ("digits", {"size": 32}, "size=32"),
    ],
)
def test_a_teacher_of_another_dataset_is_refused(zoo, tmp_path, capsys, dataset, spec_change, needle):
    from datafree.data import get_spec

    path = tmp_path / "other.pt"
    _save_lenet(path, dataset=dataset, spec={**get_spec("digits").as_dict(), **spec_change})
    out = tmp_path / "r"
    assert (
        main(
            [
                "distill",
                "--method",
                "kd_real",
                "--dataset",
                "digits",
                "--teacher",
                str(path),
                "--student",
                "lenet5_half",
                "--out",
                str(out),
                "progress=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and needle in err and "train-teacher --dataset digits" in err
    assert not out.exists()  # a failed setup leaves no empty run directory


# --------------------------------------------------------------------------- 6. the runner never hangs


def test_a_cell_that_cannot_start_is_recorded_and_the_suite_goes_on(zoo, tmp_path, capsys):
    from datafree.suites import expand, load_suite
    from datafree.runner import prepare_cell, run_suite

    path = _suite(tmp_path)
    cells = expand(load_suite(path))
    prepare_cell(cells[0])
    os.makedirs(os.path.join(cells[0].out, "log.txt"))  # its log cannot be opened
    t0 = time.time()
    res = run_suite(path, tables=False)
    assert time.time() - t0 < 300
    assert res["failed"] >= 1
    err = json.load(open(os.path.join(cells[0].out, "error.json")))
    assert "log.txt" in err["error"] and err["returncode"] == -1


def test_an_exception_in_the_executor_thread_frees_the_slot(tmp_path):
    from datafree import executors
    from datafree.suites import Cell

    cells = [Cell("m", "m", "digits", None, "s", i, out=str(tmp_path / f"c{i}")) for i in range(3)]
    for c in cells:
        os.makedirs(c.out)
    seen = []

    def boom(cell_out, cmd, env=None, processes=None):
        raise RuntimeError("cannot fork")

    real = executors.run_cell_process
    executors.run_cell_process = boom
    try:
        executors.LocalExecutor(gpus=0, jobs=1, poll=0.01).run(cells, lambda c, r: seen.append(r["error"]))
    finally:
        executors.run_cell_process = real
    assert seen == ["RuntimeError: cannot fork"] * 3
    assert all(os.path.isfile(os.path.join(c.out, "error.json")) for c in cells)


# --------------------------------------------------------------------------- 8. small things


def test_interrupted_write_temporaries_are_removed_on_restart(zoo, tmp_path, monkeypatch):
    cfg = tiny("scratch", tmp_path / "r", epochs=3, teacher=None)
    run_killed(cfg, monkeypatch)
    junk = tmp_path / "r" / ".checkpoint.pt.abc123.tmp"
    junk.write_bytes(b"half a checkpoint")
    s = run(tiny("scratch", tmp_path / "r", epochs=3, teacher=None), resume=True)
    assert not junk.exists()
    attempts = json.loads((tmp_path / "r" / "attempts.json").read_text())["attempts"]
    assert s["attempts"] == 2 and attempts[0]["seconds"] > 0  # the killed attempt's time is on record
    assert s["wall_seconds"] >= s["checkpointed_seconds"]  # wall time covers every attempt, setup included
    assert s["wall_seconds"] == pytest.approx(sum(a["seconds"] for a in attempts))


def test_records_honour_the_umask(zoo, tmp_path, monkeypatch):
    import datafree.results as results

    old = os.umask(0o027)
    try:  # the module reads the umask once, at import (os.umask can only be read by setting it)
        monkeypatch.setattr(results, "UMASK", results._current_umask())
        results.atomic_write_json(str(tmp_path / "a.json"), {"x": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640
    finally:
        os.umask(old)
    monkeypatch.setattr(results, "UMASK", results._current_umask())
    results.atomic_write_json(str(tmp_path / "b.json"), {"x": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o666 & ~old


def test_failed_setup_leaves_no_empty_run_directory(zoo, tmp_path, capsys):
    """The data is missing: the run fails after it took its directory, and leaves none behind."""
    out = tmp_path / "r"
    missing = tmp_path / "no_such_folder"
    assert (
        main(
            [
                "distill",
                "--method",
                "scratch",
                "--dataset",
                f"imagefolder:{missing}",
                "--student",
                "lenet5_half",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and str(missing) in err and not out.exists()


def test_a_full_disk_is_one_error_line(zoo, tmp_path, capsys, monkeypatch):
    import datafree.results as results

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(results, "atomic_write_bytes", full)
    assert main(_cli_distill(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and "disk is full" in err


def test_a_loadable_but_wrong_checkpoint_is_one_error_line(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_cli_distill(out, "epochs=3")) == 0
    os.unlink(out / "summary.json")
    torch.save({"epoch": 0, "student": {"nope": torch.zeros(1)}, "rng": {}, "metrics": []}, out / "checkpoint.pt")
    capsys.readouterr()
    assert main(_cli_distill(out, "epochs=3", "--resume")) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and "--overwrite" in err


# --------------------------------------------------------------------------- 9. defaults that travel


def test_a_dataset_section_applies_to_its_family():
    from datafree.config import provenance
    from datafree.methods import resolve

    cfg = resolve({"method": "dafl", "dataset": "fashion_mnist", "teacher": "lenet5", "student": "lenet5_half"})
    assert cfg.synth["generator"] == "dcgan" and cfg.ep_steps == 120  # DAFL's MNIST recipe, not CIFAR's
    assert any("MNIST family" in p for p in provenance(cfg))
    assert (
        resolve({"method": "cudfkd", "dataset": "kmnist", "teacher": "lenet5", "student": "lenet5_half"}).batch_size
        == resolve({"method": "cudfkd", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"}).batch_size
    )
    from datafree.methods import dataset_section

    sections = {"mnist": {}, "tiny_imagenet": {}}
    assert dataset_section(sections, "imagefolder:/nonexistent")[0] == "tiny_imagenet"  # 3x64x64
    assert dataset_section(sections, "cifar10")[0] is None


def test_reference_rows_take_the_learning_rate_of_the_architecture():
    from datafree.methods import resolve

    for ds in ("fashion_mnist", "cifar10", "svhn"):
        cfg = resolve({"method": "kd_real", "dataset": ds, "teacher": "lenet5", "student": "lenet5_half"})
        assert cfg.optim.lr == 0.01, ds
    assert (
        resolve({"method": "kd_real", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"}).optim.lr
        == 0.1
    )


def test_config_yaml_says_which_section_applied(zoo, tmp_path, capsys):
    assert (
        main(
            [
                "distill",
                "--method",
                "dafl",
                "--dataset",
                "kmnist",
                "--teacher",
                "lenet5",
                "--student",
                "lenet5_half",
                "--print-config",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "# datasets.mnist: kmnist is 1x32x32" in out
    run(tiny("dafl", tmp_path / "r"))
    assert "# datasets.digits: its own section" in (tmp_path / "r" / "config.yaml").read_text()


# --------------------------------------------------------------------------- found in review


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(zoo, tmp_path, capsys):
    from datafree.data import get_spec

    out = tmp_path / "r"
    assert main(_cli_distill(out)) == 0
    before = sorted(os.listdir(out))
    wrong = tmp_path / "mnist_teacher.pt"
    _save_lenet(wrong, dataset="mnist", spec=get_spec("digits").as_dict())
    assert (
        main(
            [
                "distill",
                "--method",
                "kd_real",
                "--dataset",
                "digits",
                "--teacher",
                str(wrong),
                "--student",
                "lenet5_half",
                "--out",
                str(out),
                "progress=false",
                "--overwrite",
            ]
        )
        == 2
    )
    assert "trained on mnist" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before and json.load(open(out / "summary.json"))["method"] == "scratch"
    assert main(_cli_distill(out, "epochs=3", "--overwrite")) == 0  # a good overwrite replaces it
    assert json.load(open(out / "summary.json"))["epochs"] == 3 and not (out / ".overwritten").exists()


@pytest.mark.parametrize(
    "bad", ["synth.synthesis_batch_size=0", "synth.ngf=0", "synth.lr_g=-1", "synth.lr_g=nan", "distill.T=0"]
)
def test_method_values_are_range_checked_before_any_io(zoo, tmp_path, capsys, bad):
    out = tmp_path / "r"
    assert (
        main(
            [
                "distill",
                "--method",
                "dafl",
                "--dataset",
                "digits",
                "--teacher",
                "lenet5",
                "--student",
                "lenet5_half",
                "--out",
                str(out),
                bad,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and bad.split("=")[0] in err and not out.exists()


def test_a_run_killed_before_its_first_checkpoint_keeps_its_attempt(zoo, tmp_path, monkeypatch):
    import datafree.engine as engine

    real = engine.Engine._loop

    def die(self):
        self.folder.save_attempts(force=True)
        raise KeyboardInterrupt("killed in epoch 1")

    monkeypatch.setattr(engine.Engine, "_loop", die)
    with pytest.raises(KeyboardInterrupt):
        run(tiny("scratch", tmp_path / "r", teacher=None))
    monkeypatch.setattr(engine.Engine, "_loop", real)
    s = run(tiny("scratch", tmp_path / "r", teacher=None), resume=True)
    assert s["attempts"] == 2


def test_fingerprint_leaves_out_what_only_watches_and_resolves_the_device(zoo, tmp_path):
    from datafree.identity import run_identity

    a = run_identity(tiny("dafl", tmp_path / "a"))
    assert (
        a.fingerprint
        == run_identity(
            tiny(
                "dafl",
                tmp_path / "a",
                eval_batch_size=7,
                stop_on_collapse=True,
                collapse_patience=9,
                cpu_malloc="default",
            )
        ).fingerprint
    )
    assert a.fields["device"] in ("cpu", "cuda") and a.fields["amp"] in ("off", "bf16")
    assert run_identity(tiny("dafl", tmp_path / "a", amp="fp16")).fingerprint != a.fingerprint


def test_a_run_stopped_on_collapse_continues_when_asked_to_run_on(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: {"acc": 10.0 if model is None else 97.0})
    s = run(tiny("scratch", tmp_path / "r", epochs=7, teacher=None, stop_on_collapse=True))
    assert s["evaluations"] == 5 and s["collapse"]["stopped"]
    assert (
        run(tiny("scratch", tmp_path / "r", epochs=7, teacher=None, stop_on_collapse=True), resume=True)["evaluations"]
        == 5
    )  # the same request: the record is the outcome
    s = run(tiny("scratch", tmp_path / "r", epochs=7, teacher=None), resume=True)
    assert s["evaluations"] == 7 and s["status"] == "collapsed"


def test_one_bad_cell_folder_does_not_stop_the_suite(zoo, tmp_path, monkeypatch):
    from datafree.runner import run_suite

    _in_process(monkeypatch)
    path = _suite(tmp_path)
    os.makedirs(tmp_path / "suite" / "digits")
    (tmp_path / "suite" / "digits" / "scratch").write_text("not a folder")
    res = run_suite(path, tables=False)
    assert res["failed"] == 1 and res["ran"] == 1


@pytest.mark.parametrize(
    "line,needle",
    [
        ("seeds: 0", "seeds"),
        ("exclude: [dafll]", "'dafl'"),
        ("reference: /nonexistent.yaml", "does not exist"),
        ("overrides: [dafl]", "overrides"),
        ("defaults: 5", "defaults"),
        ("teacher_training: {epochz: 3}", "'epochs'"),
    ],
)
def test_suite_values_are_checked(zoo, tmp_path, capsys, line, needle):
    path = tmp_path / "s.yaml"
    path.write_text(
        "dataset: digits\nmethods: [dafl]\npairs: [{teacher: lenet5, student: lenet5_half}]\n" + line + "\n"
    )
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and err.startswith("error:") and needle in err


def test_a_corrupt_local_manifest_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "digits_lenet5.pt").write_bytes(b"")
    for text in ("[unclosed", "digits_lenet5: 5"):
        (tmp_path / "zoo" / "manifest.yaml").write_text(text)
        assert main(["train-teacher", "--dataset", "digits", "--model", "lenet5", "epochs=1"]) == 2
        err = capsys.readouterr().err
        assert len(_lines(err)) == 1 and "manifest" in err


def test_a_collapsed_teacher_is_not_added_to_the_zoo(tmp_path, monkeypatch):
    from datafree.errors import DatafreeError
    from datafree.train import train_teacher

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAFREE_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: {"acc": 10.0})
    with pytest.raises(DatafreeError, match="collapsed"):
        train_teacher("digits", "lenet5", {"epochs": 6, "progress": False}, log=lambda *a: None)
    assert not (tmp_path / "zoo" / "digits_lenet5.pt").exists()


def test_named_three_channel_datasets_do_not_borrow_each_others_sections():
    from datafree.methods import dataset_section

    assert dataset_section({"cifar100": {}}, "cifar10")[0] is None
    assert dataset_section({"cifar100": {}}, "svhn")[0] is None


# --------------------------------------------------------------------------- found in the second review


def test_a_value_only_the_method_can_judge_is_one_error_line_and_no_directory(zoo, tmp_path, capsys):
    """The run takes its directory, then its synthesizer refuses a value: exit 2, one line, nothing left."""
    out = tmp_path / "r"
    assert (
        main(
            [
                "distill",
                "--method",
                "deepinv",
                "--dataset",
                "digits",
                "--teacher",
                "lenet5",
                "--student",
                "lenet5_half",
                "--out",
                str(out),
                "synth.pool_dtype=float7",
                "progress=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and "float7" in err and not out.exists()


def test_resume_refuses_another_teacher(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "distill",
        "--method",
        "kd_real",
        "--dataset",
        "digits",
        "--student",
        "lenet5_half",
        "--out",
        str(out),
        "epochs=2",
        "ep_steps=2",
        "batch_size=16",
        "samples=0",
        "progress=false",
    ]
    assert main(args + ["--teacher", "lenet5"]) == 0
    other = tmp_path / "other.pt"
    _save_lenet(other)
    capsys.readouterr()
    assert main(args + ["--teacher", str(other), "--resume"]) == 2
    assert "teacher.sha256" in capsys.readouterr().err


def test_what_make_demo_and_make_test_write_is_git_ignored():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(repo, ".git")):
        pytest.skip("not a git checkout")
    paths = [
        "results/runs/demo/README.md",
        "model_zoo/manifest.yaml",
        "model_zoo/measured.yaml",
        "model_zoo/digits_lenet5.pt",
        "results/teachers/digits_lenet5/summary.json",
        "results/demo/digits/dafl/lenet5-lenet5_half-s0/.datafree.lock",
        "results/demo/digits/dafl/lenet5-lenet5_half-s0/.overwritten/summary.json",
        "results/mnist/mnist/dafl/lenet5-lenet5_half-s0.stale-1/summary.json",
    ]
    res = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo, capture_output=True, text=True)
    assert sorted(res.stdout.split()) == sorted(paths)


@pytest.mark.parametrize(
    "line",
    [
        "defaults: {seed: 5}",
        "defaults: {out: x}",
        "overrides: {dafl: {method: cmi}}",
        "seeds: [0, 0]",
        "variants: {v: {method: 5}}",
    ],
)
def test_a_suite_cannot_override_its_cells_identity(zoo, tmp_path, capsys, line):
    path = tmp_path / "s.yaml"
    path.write_text(
        "dataset: digits\nmethods: [dafl]\npairs: [{teacher: lenet5, student: lenet5_half}]\n" + line + "\n"
    )
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and err.startswith("error:")


def test_a_teacher_that_cannot_be_trained_fails_only_its_cells(zoo, tmp_path, monkeypatch):
    from datafree.runner import run_suite

    _in_process(monkeypatch)
    monkeypatch.setenv("DATAFREE_DATA", str(tmp_path / "nodata"))
    monkeypatch.chdir(tmp_path)  # no ./data here either
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "suite"),
                "methods": ["kd_real"],
                "pairs": [
                    {"dataset": "digits", "teacher": "lenet5", "student": "lenet5_half"},
                    {"dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"},
                ],
                "defaults": {"samples": 0, "epochs": 2, "ep_steps": 2, "batch_size": 16},
            }
        )
    )
    res = run_suite(str(path), tables=False, extra={"data_root": str(tmp_path / "nodata")})
    assert res["ran"] == 1 and res["failed"] == 1
    err = json.load(open(tmp_path / "suite" / "mnist" / "kd_real" / "lenet5-lenet5_half-s0" / "error.json"))
    assert "could not be trained" in err["error"]


def test_other_collapse_settings_resume_a_run_stopped_on_collapse(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "evaluate", lambda self, model=None: {"acc": 10.0 if model is None else 97.0})
    quick = dict(epochs=7, teacher=None, stop_on_collapse=True, collapse_grace=0)
    assert run(tiny("scratch", tmp_path / "r", collapse_patience=1, **quick))["evaluations"] == 1
    assert run(tiny("scratch", tmp_path / "r", collapse_patience=4, **quick), resume=True)["evaluations"] == 4


def test_a_finished_run_without_its_checkpoint_is_not_rerun(zoo, tmp_path):
    out = tmp_path / "r"
    first = run(tiny("scratch", out, teacher=None))
    os.unlink(out / "checkpoint.pt")  # checkpoints are not committed
    again = run(tiny("scratch", out, teacher=None), resume=True)
    assert again["finished"] == first["finished"] and again["attempts"] == 1


def test_a_damaged_accuracy_cache_is_measured_again(zoo, tmp_path):
    (open(os.path.join(zoo, "measured.yaml"), "w")).write("- a\n")
    s = run(tiny("kd_real", tmp_path / "r"))
    assert s["teacher_acc"] > 50
    assert isinstance(yaml.safe_load(open(os.path.join(zoo, "measured.yaml"))), dict)


def test_an_interrupted_overwrite_is_undone_on_the_next_start(zoo, tmp_path):
    out = tmp_path / "r"
    assert run(tiny("scratch", out, teacher=None))["epochs"] == 2
    backup = out / ".overwritten"
    backup.mkdir()
    for name in os.listdir(out):  # what an --overwrite killed during its setup leaves
        if name not in (".overwritten", ".datafree.lock"):
            os.rename(out / name, backup / name)
    s = run(tiny("scratch", out, teacher=None), resume=True)
    assert s["epochs"] == 2 and not backup.exists() and (out / "summary.json").exists()


def test_a_slurm_cell_is_judged_by_the_device_it_runs_on(zoo, tmp_path):
    from datafree.identity import run_identity

    cfg = tiny("dafl", tmp_path / "a")
    assert run_identity(cfg, device_kind="cuda").fields["device"] == "cuda"
    assert run_identity(cfg, device_kind="cuda").fields["amp"] == "bf16"
    assert run_identity(cfg, device_kind="cuda").fingerprint != run_identity(cfg, device_kind="cpu").fingerprint
