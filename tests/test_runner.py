"""The benchmark runner: cells, skipping finished ones, failures, executors, and a SIGKILLed suite."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from datafree.cli import main
from datafree.errors import ConfigError, UnknownNameError
from datafree.suites import expand, load_suite
from datafree.runner import run_suite

TINY = {"epochs": 2, "ep_steps": 2, "batch_size": 8, "samples": 4, "progress": False}


def _suite(tmp_path, methods=("dafl", "deepinv"), **over):
    s = {
        "name": "tiny",
        "dataset": "digits",
        "out": str(tmp_path / "results"),
        "pairs": [{"teacher": "lenet5", "student": "lenet5_half"}],
        "methods": list(methods),
        "seeds": [0],
        "defaults": TINY,
        "overrides": {
            "dafl": {"synth.synthesis_batch_size": 8, "synth.ngf": 8},
            "deepinv": {"synth.iterations": 2, "synth.synthesis_batch_size": 8},
        },
    }
    s.update(over)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(s))
    return str(path)


def test_expand_seeds_only_and_dry_run(zoo, tmp_path, capsys):
    path = _suite(tmp_path)
    suite = load_suite(path)
    assert len(expand(suite)) == 2
    assert len(expand(suite, seeds=[0, 1, 2])) == 6
    assert [c.method for c in expand(suite, only="*deepinv*")] == ["deepinv"]
    assert main(["bench", path, "--dry-run", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "4 cells (0 finished)" in out and "pending" in out


def test_a_pair_sets_its_own_budget_over_the_suites(zoo, tmp_path, capsys):
    """A pair's defaults and per-method overrides come after the suite's (and a method's reach its presets)."""
    pairs = [
        {"teacher": "lenet5", "student": "lenet5_half"},
        {
            "teacher": "lenet5_bn",
            "student": "lenet5_half",
            "defaults": {"epochs": 1},
            "overrides": {"deepinv": {"synth.iterations": 1}},
        },
    ]
    suite = load_suite(_suite(tmp_path, methods=("dafl", "deepinv", "deepinv:paper"), pairs=pairs))
    cells = {(c.teacher, c.method): c.overrides for c in expand(suite)}
    assert cells[("lenet5", "deepinv")]["epochs"] == 2 and cells[("lenet5", "deepinv")]["synth"]["iterations"] == 2
    assert cells[("lenet5_bn", "dafl")]["epochs"] == 1 and cells[("lenet5_bn", "dafl")]["synth"]["ngf"] == 8
    assert cells[("lenet5_bn", "deepinv")]["synth"] == {"iterations": 1, "synthesis_batch_size": 8}
    assert cells[("lenet5_bn", "deepinv:paper")]["synth"]["iterations"] == 1
    # a pair cannot set a cell's identity, and a typo in its method names fails with suggestions
    bad = [{"teacher": "lenet5", "student": "lenet5_half", "overrides": {"dafl": {"seed": 3}}}]
    with pytest.raises(ConfigError, match="sets 'seed'"):
        load_suite(_suite(tmp_path, pairs=bad))
    typo = [{"teacher": "lenet5", "student": "lenet5_half", "overrides": {"dafll": {"epochs": 1}}}]
    with pytest.raises(UnknownNameError, match="dafl"):
        load_suite(_suite(tmp_path, pairs=typo))


def test_a_pair_sets_a_variants_budget_over_the_variants_own(zoo, tmp_path):
    """A pair's overrides may name a variant: they go over the variant's settings, on that pair only."""
    pairs = [
        {"teacher": "lenet5", "student": "lenet5_half"},
        {
            "teacher": "lenet5_bn",
            "student": "lenet5_half",
            "overrides": {"deepinv": {"epochs": 1}, "di_long": {"epochs": 3, "synth.iterations": 5}},
        },
    ]
    variants = {"di_long": {"method": "deepinv", "epochs": 4, "synth.iterations": 6, "synth.lr": 0.2}}
    suite = load_suite(_suite(tmp_path, methods=("deepinv", "di_long"), pairs=pairs, variants=variants))
    cells = {(c.teacher, c.name.split("/")[1]): c.overrides for c in expand(suite)}
    assert cells[("lenet5", "di_long")]["epochs"] == 4 and cells[("lenet5", "di_long")]["synth"]["iterations"] == 6
    assert cells[("lenet5_bn", "di_long")]["epochs"] == 3
    assert cells[("lenet5_bn", "di_long")]["synth"] == {"iterations": 5, "synthesis_batch_size": 8, "lr": 0.2}
    assert cells[("lenet5_bn", "deepinv")]["epochs"] == 1
    typo = [{"teacher": "lenet5", "student": "lenet5_half", "overrides": {"di_lng": {"epochs": 1}}}]
    with pytest.raises(UnknownNameError, match="di_long"):
        load_suite(_suite(tmp_path, pairs=typo, variants=variants))


def test_a_suite_extends_another(zoo, tmp_path):
    """extends: the other suite's keys under this one's (mappings merged, lists replaced), minus name/out/note."""
    base = _suite(tmp_path)  # tmp_path/suite.yaml: dafl and deepinv on lenet5 -> lenet5_half
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump(
            {
                "extends": base,
                "name": "child",
                "pairs": [{"teacher": "lenet5_bn", "student": "lenet5_half"}],
                "overrides": {"dafl": {"synth.ngf": 4}},
            }
        )
    )
    suite = load_suite(str(child))
    assert suite.name == "child" and suite.out == os.path.join("results", "child")
    assert suite.methods == ["dafl", "deepinv"] and [p["teacher"] for p in suite.pairs] == ["lenet5_bn"]
    cells = {c.method: c.overrides for c in expand(suite)}
    assert cells["dafl"]["synth"] == {"synthesis_batch_size": 8, "ngf": 4} and cells["deepinv"]["epochs"] == 2
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"extends": str(loop), "pairs": []}))
    with pytest.raises(ConfigError, match="extends itself"):
        load_suite(str(loop))


def test_unknown_method_in_suite_is_an_error(tmp_path, capsys):
    path = _suite(tmp_path, methods=("dafl", "cmii"))
    assert main(["bench", path, "--dry-run"]) == 2
    assert "unknown method 'cmii'" in capsys.readouterr().err


def test_a_bad_key_in_any_cell_fails_the_suite_before_anything_runs(zoo, tmp_path, capsys):
    path = _suite(tmp_path, overrides={"deepinv": {"synth.no_such_key": 1}})
    assert main(["bench", path]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "results" / "digits").exists()


def test_run_skip_finished_and_record_failures(zoo, tmp_path):
    # a value that passes the config's checks and fails in the cell's own process
    path = _suite(
        tmp_path,
        overrides={
            "dafl": {"synth.synthesis_batch_size": 8, "synth.ngf": 8},
            "deepinv": {"synth.pool_dtype": "float7"},
        },
    )
    res = run_suite(path)
    assert res["failed"] == 1 and res["ran"] == 1
    root = tmp_path / "results" / "digits"
    err = json.loads((root / "deepinv" / "lenet5-lenet5_half-s0" / "error.json").read_text())
    assert "float7" in err["error"]
    dafl_summary = root / "dafl" / "lenet5-lenet5_half-s0" / "summary.json"
    mtime = dafl_summary.stat().st_mtime
    assert (tmp_path / "results" / "README.md").exists() and (tmp_path / "results" / "accuracy.csv").exists()
    # fix the suite, run again: the finished cell is reused, the failed one runs and its error record goes
    path = _suite(tmp_path)
    res = run_suite(path)
    assert res == {**res, "failed": 0, "ran": 1, "reused": 1}
    assert dafl_summary.stat().st_mtime == mtime
    assert not (root / "deepinv" / "lenet5-lenet5_half-s0" / "error.json").exists()


def test_submitit_local_executor(zoo, tmp_path):
    pytest.importorskip("submitit")
    path = _suite(tmp_path, methods=("dafl",))
    res = run_suite(path, executor="submitit-local")
    assert res["ran"] == 1 and res["failed"] == 0
    assert (tmp_path / "results" / "digits" / "dafl" / "lenet5-lenet5_half-s0" / "summary.json").exists()


def test_killed_suite_resumes_without_rerunning_or_duplicating(zoo, tmp_path):
    """SIGKILL the runner and its cell mid-suite; running the suite again finishes it cleanly."""
    slow = dict(TINY, epochs=6, ep_steps=6)
    path = _suite(
        tmp_path,
        methods=("dafl", "deepinv"),
        defaults=slow,
        overrides={
            "dafl": {"synth.synthesis_batch_size": 8, "synth.ngf": 8},
            "deepinv": {"synth.iterations": 40, "synth.synthesis_batch_size": 32},
        },
    )
    root = tmp_path / "results" / "digits"
    first = root / "dafl" / "lenet5-lenet5_half-s0"
    second = root / "deepinv" / "lenet5-lenet5_half-s0"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "datafree.cli", "bench", path],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (second / "checkpoint.pt").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the cell it is running, mid-epoch
    proc.wait()
    assert (first / "summary.json").exists(), "the first cell should have finished before the kill"
    assert not (second / "summary.json").exists(), "the kill should land inside the second cell"
    mtime = (first / "summary.json").stat().st_mtime
    res = run_suite(path)
    assert res["reused"] == 1 and res["ran"] == 1 and res["failed"] == 0
    assert (first / "summary.json").stat().st_mtime == mtime  # not re-run
    for cell in (first, second):
        json.loads((cell / "summary.json").read_text())  # whole, parseable records
        epochs = [json.loads(l)["epoch"] for l in (cell / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 7)), epochs  # no record duplicated or missing
    assert "resuming" in (second / "log.txt").read_text()


def test_mnist_bn_suite_pairs_and_tracked_teachers():
    """The BN test bed: its second pair runs every method at its own shorter budget, the cmi_g200 diagnosis cell
    on each pair at that pair's cmi totals in rounds of 200 generator steps, and the two teachers it names are the
    tracked files the manifest records."""
    from datafree.results import file_sha256

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    suite = load_suite(os.path.join(root, "benchmarks", "suites", "mnist_bn.yaml"))
    cells = expand(suite)
    by_pair = {}
    for c in cells:
        by_pair.setdefault(os.path.basename(c.out), {})[c.entry] = c  # scratch names no teacher: its folder does
    a, b = by_pair["lenet5_bn-lenet5_half-s0"], by_pair["resnet20-resnet8-s0"]
    assert set(a) == set(b) and "cmi_g200" in b
    from datafree.runner import cell_config

    for pair in (a, b):
        cmi, g200 = cell_config(pair["cmi"]), cell_config(pair["cmi_g200"])
        assert (cmi.synth["g_steps"], g200.synth["g_steps"]) == (20, 200)
        assert cmi.epochs * cmi.kd_steps == g200.epochs * g200.kd_steps  # the same KD steps in fewer rounds
        steps = g200.epochs * g200.synth["g_steps"] / (cmi.epochs * cmi.synth["g_steps"])
        assert 0.9 <= steps <= 1.15  # and about the same generator steps

    assert cell_config(b["dfq"]).epochs < cell_config(a["dfq"]).epochs
    assert cell_config(b["fast10"]).kd_steps < cell_config(a["fast10"]).kd_steps
    assert cell_config(b["fast10"]).epochs == cell_config(a["fast10"]).epochs  # Fast keeps its 60 rounds
    with open(os.path.join(root, "model_zoo", "reference_manifest.yaml")) as f:
        manifest = yaml.safe_load(f)
    for key in ("mnist_lenet5_bn", "mnist_resnet20"):
        entry = manifest[key]
        assert entry.get("tracked") is True
        assert file_sha256(os.path.join(root, "model_zoo", entry["file"])) == entry["sha256"], key
