"""The accuracy tables say which teacher produced each cell (the "Teachers" list: file, sha256 prefix, published
or trained here with which recipe, measured accuracy) and flag a cell whose measured teacher accuracy is more
than 0.5 points from the published teacher's (the reference's teacher row)."""

import json

import pandas as pd
import pytest

from conftest import REPO
from datafree.cli import main
from datafree.report import TEACHER_MARK, accuracy_rows, accuracy_table, load_reference, teacher_rows, teacher_source
from datafree.runs import load_runs

REF = f"{REPO}/benchmarks/reference/cifar10.yaml"  # teacher row: resnet34->resnet18 95.70, wrn40_2->* 94.87
R34, WRN = "resnet34->resnet18", "wrn40_2->wrn16_1"
SHA_TRAINED, SHA_PUBLISHED, SHA_OLD = "a1" * 32, "b2" * 32, "c3" * 32
TRAINED = {
    "kind": "trained",
    "file": "cifar10_resnet34.pt",
    "sha256": SHA_TRAINED,
    "layout": "datafree",
    "recipe": "cmi",
    "arch": "resnet34",
}
PUBLISHED = {
    "kind": "published",
    "file": "cifar10_wrn40_2.pth",
    "sha256": SHA_PUBLISHED,
    "layout": "cmi",
    "recipe": None,
    "arch": "wrn40_2",
}


def _summary(method, pair, teacher_acc, seed=0, last=90.0, **over):
    teacher, student = pair.split("->")
    s = {
        "run_id": f"{teacher}-{student}-s{seed}",
        "method": method,
        "dataset": "cifar10",
        "teacher": teacher,
        "student": student,
        "pair": pair,
        "seed": seed,
        "tag": "",
        "uses_real_data": "",
        "epochs": 2,
        "evaluations": 2,
        "last_acc": last,
        "best_acc": last,
        "mean_acc": last,
        "var_acc": 0.0,
        "teacher_acc": teacher_acc,
        "machine": "CPU test",
        "finished": "2026-01-01T00:00:00",
        "peak_memory_mb": 100.0,
        "total_seconds": 36.0,
        "total_hours": 0.01,
        "gpu_hours": 0.0,
    }
    s.update(over)
    return s


def _write(root, name, summary):
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text('{"epoch": 1, "acc": 80.0}\n{"epoch": 2, "acc": 90.0}\n')


def _records(tmp_path):
    """cmi and dafl on resnet34 (a teacher trained here with the cmi recipe, 93.10% against the published 95.70%),
    cmi on wrn40_2 (the published file, 94.60% against 94.87%), an older record (no teacher_source) and a scratch
    run, which has no teacher."""
    _write(tmp_path, "cmi/r34", _summary("cmi", R34, 93.1, teacher_source=TRAINED, teacher_sha256=SHA_TRAINED))
    _write(tmp_path, "dafl/r34", _summary("dafl", R34, 93.1, teacher_source=TRAINED, teacher_sha256=SHA_TRAINED))
    _write(tmp_path, "cmi/wrn", _summary("cmi", WRN, 94.6, teacher_source=PUBLISHED, teacher_sha256=SHA_PUBLISHED))
    _write(
        tmp_path,
        "zskt/wrn",
        _summary("zskt", WRN, 94.6, teacher_sha256=SHA_OLD, teacher_path="/somewhere/model_zoo/cifar10_wrn40_2.pt"),
    )
    _write(tmp_path, "scratch/wrn", _summary("scratch", WRN, None, teacher_source=None))
    return load_runs(str(tmp_path))


def _line(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def test_the_teachers_section_names_each_cells_teacher(tmp_path):
    df = _records(tmp_path)
    ref = load_reference(REF)
    assert main(["table", str(tmp_path), "--reference", REF]) == 0
    readme = (tmp_path / "README.md").read_text()
    section = readme.split("Teachers of the cifar10 cells", 1)[1].split("## ", 1)[0]
    trained = _line(section, f"| {R34} |")
    assert "`cifar10_resnet34.pt`" in trained and f"`{SHA_TRAINED[:12]}`" in trained
    assert "trained here, recipe cmi" in trained and "93.10" in trained and "95.70" in trained
    assert trained.rstrip(" |").endswith("2")  # both runs of that pair used it
    wrn = [line for line in section.splitlines() if line.startswith(f"| {WRN} |")]
    assert len(wrn) == 2  # two teachers behind the one column: each is listed
    published = next(line for line in wrn if SHA_PUBLISHED[:12] in line)
    assert "`cifar10_wrn40_2.pth`" in published and "published (cmi layout)" in published and "94.60" in published
    old = next(line for line in wrn if SHA_OLD[:12] in line)
    assert "`cifar10_wrn40_2.pt`" in old and "unknown" in old  # an older record: its origin is not known
    # the scratch run has no teacher and is not listed; the records say which methods each teacher served
    rows = teacher_rows(df, "cifar10", ref)
    assert sum(r["runs"] for r in rows) == 4
    assert next(r for r in rows if r["sha256"] == SHA_TRAINED)["methods"] == ["dafl", "cmi"]


def test_teacher_source_of_a_record_with_and_without_the_field():
    assert teacher_source({"teacher_source": TRAINED})["recipe"] == "cmi"
    # a checkpoint's recipe values in place of its name; a trained file from before recipe names is ours
    assert teacher_source({"teacher_source": {**TRAINED, "recipe": {"name": "cmi", "lr": 0.1}}})["recipe"] == "cmi"
    assert teacher_source({"teacher_source": {**TRAINED, "recipe": None}})["recipe"] == "datafree"
    old = teacher_source({"teacher": "resnet34", "teacher_sha256": SHA_OLD, "teacher_acc": 95.0})
    assert old == {"kind": "unknown", "file": "resnet34", "sha256": SHA_OLD, "layout": None, "recipe": None}
    assert teacher_source({"teacher": "resnet34", "teacher_acc": None}) is None  # no teacher was loaded
    assert (
        teacher_source(pd.Series({"teacher": "x", "teacher_source": float("nan"), "teacher_acc": float("nan")})) is None
    )


@pytest.mark.parametrize(
    "teacher_acc,flagged", [(95.1, True), (96.3, True), (95.3, False), (95.2, False), (96.2, False), (95.7, False)]
)
def test_a_cell_is_flagged_only_beyond_half_a_point_from_the_published_teacher(teacher_acc, flagged):
    df = pd.DataFrame([_summary("cmi", R34, teacher_acc, teacher_source=TRAINED)])
    ref = load_reference(REF)
    recs = {r["method"]: r for r in accuracy_rows(df, reference=ref) if r["pair"] == R34}
    assert recs["cmi"]["teacher_flag"] is flagged and recs["teacher"]["teacher_flag"] is flagged
    assert recs["cmi"]["teacher_published"] == 95.7 and recs["cmi"]["teacher_acc"] == teacher_acc
    text = accuracy_table(df, reference=ref)
    cell = _line(text, "| cmi |").split("|")[2]
    assert (TEACHER_MARK in cell) is flagged
    note = f"{TEACHER_MARK} {R34}: teacher {teacher_acc:.2f}% vs published 95.70%"
    assert (note in text) is flagged


def test_a_pair_without_a_published_teacher_and_runs_without_a_measured_one_are_not_flagged():
    df = pd.DataFrame(
        [
            _summary("cmi", "resnet34->mobilenetv2", 80.0, teacher_source=TRAINED),
            _summary("dafl", R34, None, teacher_source=TRAINED),
        ]
    )
    text = accuracy_table(df, reference=load_reference(REF))
    assert TEACHER_MARK not in text.split("Teachers of", 1)[0]
    assert not any(r["teacher_flag"] for r in accuracy_rows(df, reference=load_reference(REF)))


def test_the_csv_carries_the_teacher_check(tmp_path):
    _records(tmp_path)
    assert main(["table", str(tmp_path), "--reference", REF]) == 0
    acc = pd.read_csv(tmp_path / "accuracy.csv")
    cmi = acc[(acc["method"] == "cmi") & (acc["pair"] == R34)].iloc[0]
    assert bool(cmi["teacher_flag"]) and cmi["teacher_acc"] == 93.1 and cmi["teacher_published"] == 95.7
    wrn = acc[(acc["method"] == "cmi") & (acc["pair"] == WRN)].iloc[0]
    assert not bool(wrn["teacher_flag"])
    assert "teacher_off" not in acc.columns
