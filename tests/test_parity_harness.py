"""benchmarks/parity: record conversion, table rendering, budget files, resumable skip (no reference tree)."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(ROOT, "benchmarks", "parity")
CMI_METHODS = ("dafl", "zskt", "deepinv", "dfq", "cmi")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def parity():
    return _load("parity_harness", os.path.join(PARITY, "parity.py"))


def _metrics(n=3):
    out, work, ev = [], 0.0, 0.0
    for e in range(1, n + 1):
        work += 2.0 * e
        ev += 0.5
        out.append(
            {
                "epoch": e,
                "acc": 50.0 + e,
                "step": 40 * e,
                "seconds": work + ev,
                "phase_seconds": {"synthesis": work * 0.75, "distill": work * 0.25, "eval": ev, "other": 0.25 * e},
                "synth": {"bn": 1.0 / e, "oh": 0.5, "loss_g": 2.0},
                "distill": {"kd": 0.1},
            }
        )
    return out


def test_convert_ours_epoch_seconds_exclude_eval_and_checkpoint(parity):
    rec = parity.convert_ours(_metrics(), "dfq", 0, {"epochs": 3})
    assert rec["method"] == "dfq" and rec["side"] == "ours" and rec["seed"] == 0
    assert rec["epoch_seconds"] == pytest.approx([2.0, 4.0, 6.0])
    assert rec["acc_last"] == 53.0 and rec["acc_best"] == 53.0 and rec["eval_acc"] == [51.0, 52.0, 53.0]
    assert rec["curves"][1] == {"epoch": 2, "step": 80, "bn": 0.5, "oh": 0.5, "loss_g": 2.0}


def test_convert_ours_without_phase_seconds_falls_back(parity):
    ms = _metrics()
    for m in ms:
        del m["phase_seconds"]
    rec = parity.convert_ours(ms, "dfq", 1, {})
    assert rec["epoch_seconds"] == pytest.approx([2.5, 4.5, 6.5])
    assert rec["epoch_seconds_source"].startswith("seconds")


@pytest.mark.parametrize("method", CMI_METHODS)
def test_budget_files_load_and_cite_sources(parity, method):
    spec = parity.load_budget(method)
    assert spec["method"] == method and spec["adapter"] == "cmi_repo"
    assert len(spec["reference"]["commit"]) == 40
    for key in spec["budget"]:
        src = spec["sources"].get(key)
        assert src and (":" in src), f"{method}: budget key {key} has no file:line source"
    over = parity.our_overrides(spec)
    assert f"epochs={spec['budget']['epochs']}" in over
    smoke = parity.load_budget(method, smoke=True)["budget"]
    assert smoke["epochs"] <= 2 and set(smoke) == set(spec["budget"])


@pytest.mark.parametrize("method,adapter", [("fast10", "fast_datafree"), ("cudfkd", "ljrprocc")])
def test_shared_layout_budgets_run_through_the_harness(parity, method, adapter):
    spec = parity.load_budget(method)
    assert spec["adapter"] == adapter and adapter in parity.DEFAULT_WORKTREES
    assert spec["budget"] == spec["shared"]  # what the adapter records as its budget
    over = parity.our_overrides(spec)
    assert f"epochs={spec['shared']['epochs']}" in over and not any(o.endswith("=None") for o in over)
    smoke = parity.load_budget(method, smoke=True)
    assert smoke["budget"] == {**spec["shared"], **spec["smoke"]}
    sover = parity.our_overrides(smoke)
    for key, val in spec["smoke"].items():
        keys = [k for k in spec["ours"] if k.split(".")[-1] == key]
        assert all(f"{k}={parity._yaml_value(val)}" in sover for k in keys), key


def test_cell_done_skip_logic(parity, tmp_path):
    d = tmp_path / "dfq" / "ours-s0"
    budget = {"epochs": 2}
    assert not parity.cell_done(str(d), budget, "abc", fingerprint="f1")
    (d / "run").mkdir(parents=True)
    (d / "run" / "fingerprint.json").write_text(json.dumps({"fingerprint": "f1", "fields": {}}))
    (d / "record.json").write_text(
        json.dumps({"side": "ours", "budget": budget, "teacher_sha256": "abc", "fingerprint": "f1", "commit": "c1"})
    )
    assert parity.cell_done(str(d), budget, "abc", fingerprint="f1")
    assert parity.cell_done(str(d), budget, "abc", commit="c2", fingerprint="f1")  # our HEAD: information only
    assert not parity.cell_done(str(d), budget, "abc", commit="c1")  # ours needs the fingerprint
    assert not parity.cell_done(str(d), budget, "abc", fingerprint="f2")
    assert not parity.cell_done(str(d), {"epochs": 3}, "abc", fingerprint="f1")
    assert not parity.cell_done(str(d), budget, "other", fingerprint="f1")
    (d / "record.json").write_text(
        json.dumps({"side": "ours", "budget": budget, "teacher_sha256": "abc", "commit": "c1"})
    )  # a record from before the field
    assert parity.cell_done(str(d), budget, "abc", fingerprint="f1")
    assert not parity.cell_done(str(d), budget, "abc", fingerprint="f2")
    (d / "run" / "fingerprint.json").write_text(json.dumps({"fingerprint": "f2", "fields": {}}))
    assert not parity.cell_done(str(d), budget, "abc", fingerprint="f1")  # the run dir is another run's
    (d / "run" / "fingerprint.json").unlink()
    assert not parity.cell_done(str(d), budget, "abc", fingerprint="f1")
    (d / "record.json").write_text(
        json.dumps({"side": "theirs", "budget": budget, "teacher_sha256": "abc", "reference_commit": "r9"})
    )
    assert parity.cell_done(str(d), budget, "abc", commit="r9")
    assert not parity.cell_done(str(d), budget, "abc", commit="r8")
    (d / "record.json").write_text("{not json")
    assert not parity.cell_done(str(d), budget, "abc", commit="r9")


def test_our_fingerprint_is_the_engines(parity, tmp_path):
    """our_fingerprint (a subprocess, nothing run) = run_identity of the config `datafree distill` resolves from
    the same argv; a budget value changes it, the cell's output folder does not."""
    from datafree import identity
    from datafree.cli import _user_config, build_parser
    from datafree.methods import resolve

    teacher = os.path.join(ROOT, "model_zoo", "mnist_lenet5_bn.pt")
    if not os.path.isfile(teacher):
        pytest.skip("no teacher file")
    spec = parity.load_budget("dfq", smoke=True)
    fp = parity.our_fingerprint("dfq", 0, spec, teacher, str(tmp_path / "a"))
    cfg = resolve(_user_config(build_parser().parse_args(parity.ours_argv("dfq", 0, spec, teacher, "x"))))
    assert fp == identity.run_identity(cfg, identity.teacher_path(cfg)).fingerprint
    spec["budget"]["epochs"] = 3
    cfg3 = resolve(_user_config(build_parser().parse_args(parity.ours_argv("dfq", 0, spec, teacher, "x"))))
    assert identity.run_identity(cfg3, identity.teacher_path(cfg3)).fingerprint != fp


def _fake_cell(root, method, side, seed, acc, secs, curves):
    d = os.path.join(root, method, f"{side}-s{seed}")
    os.makedirs(d)
    rec = {
        "method": method,
        "side": side,
        "seed": seed,
        "acc_last": acc,
        "acc_best": acc,
        "epochs": len(secs),
        "epoch_seconds": secs,
        "eval_acc": [acc],
        "budget": {},
        "teacher_sha256": "x",
        "machine": {"cpu": "Fake CPU", "threads": 2},
    }
    rec.update(
        {"reference_repo": "zju-vipa/CMI", "reference_commit": "9e79fa9"} if side == "theirs" else {"commit": "abc"}
    )
    with open(os.path.join(d, "record.json"), "w") as f:
        json.dump(rec, f)
    with open(os.path.join(d, "curves.jsonl"), "w") as f:
        f.write("".join(json.dumps(c) + "\n" for c in curves))


def test_table_renders_pairs_and_verdicts(parity, tmp_path):
    root = str(tmp_path)
    curves = [{"epoch": 1, "step": 4, "bn": 2.0, "oh": 1.0}, {"epoch": 2, "step": 8, "bn": 1.0, "oh": 0.5}]
    for s, (ao, at) in enumerate([(90.0, 89.0), (91.0, 90.0), (92.0, 91.0)]):
        _fake_cell(root, "dfq", "ours", s, ao, [1.0, 1.0], curves)
        _fake_cell(root, "dfq", "theirs", s, at, [3.0, 3.0], curves)
    for s, (ao, at) in enumerate([(50.0, 60.0), (51.0, 61.0), (52.0, 62.0)]):
        _fake_cell(root, "cmi", "ours", s, ao, [2.0], curves)
        _fake_cell(root, "cmi", "theirs", s, at, [3.0], curves)
    _fake_cell(root, "fast10", "ours", 0, 50.0, [1.0], curves)
    _fake_cell(root, "fast10", "theirs", 0, 60.0, [3.0], curves)
    _fake_cell(root, "deepinv", "ours", 0, 80.0, [2.0], curves)
    text = parity.render_table(root, plots=True)
    main_table = text.split("## Per seed")[0]
    rows = {l.split("|")[1].strip(): l for l in main_table.splitlines() if l.startswith("| ") and "---" not in l}
    assert "91.00 ± 1.00 (3)" in rows["dfq"] and "90.00 ± 1.00 (3)" in rows["dfq"]
    assert "3.00x" in rows["dfq"] and "PASS" in rows["dfq"]
    assert "FAIL" in rows["cmi"] and "BELOW" in rows["cmi"] and "speed-up < 2x" in rows["cmi"]
    assert "incomplete" in rows["deepinv"]
    # one seed has no std: the row is provisional, neither PASS nor FAIL
    assert (
        "provisional (1 of 3 seeds)" in rows["fast10"] and "PASS" not in rows["fast10"] and "FAIL" not in rows["fast10"]
    )
    assert os.path.isfile(os.path.join(root, "dfq_curves.png"))
    assert "zju-vipa/CMI: 9e79fa9" in text and "Fake CPU" in text


def test_adapter_never_imports_our_package():
    src = open(os.path.join(PARITY, "adapters", "cmi_repo.py")).read()
    common = open(os.path.join(PARITY, "adapters", "_common.py")).read()
    # the reference package is also `datafree`: the adapters import it only after putting the work tree first
    assert "C.import_reference(root)" in src and "from datafree." not in src.split("def import_theirs")[0]
    assert "sys.path.insert(0, root)" in common and "not from {root}" in common and "from datafree" not in common


def test_speedup_pairs_each_seeds_two_cells(parity, tmp_path):
    """The speed-up is the mean over seeds of theirs / ours of the same seed (the two ran under one load), not
    the ratio of the means, which one slow session would dominate: here 2.87x against 41 / 21 = 1.95x."""
    root = str(tmp_path)
    for s, (so, st) in enumerate([(1.0, 5.0), (10.0, 18.0), (10.0, 18.0)]):
        _fake_cell(root, "dfq", "ours", s, 90.0, [so], [])
        _fake_cell(root, "dfq", "theirs", s, 90.0, [st], [])
    _fake_cell(root, "cmi", "ours", 0, 90.0, [1.0], [])
    _fake_cell(root, "cmi", "ours", 1, 90.0, [1.0], [])
    _fake_cell(root, "cmi", "theirs", 1, 90.0, [3.0], [])
    text = parity.render_table(root, plots=False)
    row = next(l for l in text.splitlines() if l.startswith("| dfq |"))
    assert "2.87x [1.80-5.00]" in row and "PASS" in row
    assert "| dfq | 0 | 90.00 | 90.00 | 1.00 | 5.00 | 5.00x | ? |" in text
    # a seed only one side ran has no ratio, and the row's speed-up uses the seeds both ran
    assert "| cmi | 0 | 90.00 | – | 1.00 | – | – | ? |" in text
    assert "3.00x" in next(l for l in text.splitlines() if l.startswith("| cmi |"))


def test_ran_together_reads_the_records_times(parity):
    a = {"started_at": "2026-12-02T15:00:00Z", "finished_at": "2026-12-02T15:10:00Z"}
    assert parity.ran_together(a, {"started_at": "2026-12-02T15:09:00Z", "finished_at": "2026-12-02T15:20:00Z"})
    assert (
        parity.ran_together(a, {"started_at": "2026-12-02T15:10:00Z", "finished_at": "2026-12-02T15:20:00Z"}) is False
    )
    assert parity.ran_together(a, {"acc_last": 1.0}) is None and parity.ran_together(a, None) is None
