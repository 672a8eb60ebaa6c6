"""The paper-layout accuracy table: ours beside the published value, the teacher row from the run records;
unreadable records listed as skipped, never dropped or crashed on; diverged and collapsed runs."""

import json
import os

import pandas as pd
import pytest

from conftest import REPO
from datafree.cli import main
from datafree.report import (
    accuracy_rows,
    accuracy_table,
    load_reference,
    runs_table,
    stability_table,
    tables_markdown,
    write_tables,
)
from datafree.runs import load_runs
from datafree.results import read_jsonl

PAIR = "lenet5->lenet5_half"


def _runs():
    rows = [("dafl", 0, 97.0), ("dafl", 1, 98.0), ("cmi", 0, 60.0)]
    return pd.DataFrame(
        [
            {
                "dataset": "mnist",
                "method": m,
                "pair": PAIR,
                "seed": s,
                "last_acc": a,
                "best_acc": a,
                "teacher_acc": 99.26,
                "uses_real_data": "",
            }
            for m, s, a in rows
        ]
    )


def test_rows_carry_ours_published_and_the_difference():
    ref = load_reference(f"{REPO}/benchmarks/reference/mnist.yaml")
    recs = {r["method"]: r for r in accuracy_rows(_runs(), reference=ref)}
    assert recs["dafl"]["mean"] == 97.5 and recs["dafl"]["seeds"] == 2 and recs["dafl"]["published"] == 98.2
    assert abs(recs["dafl"]["delta"] - (97.5 - 98.2)) < 1e-9 and recs["dafl"]["std"] > 0
    assert recs["cmi"]["published"] is None and recs["cmi"]["delta"] is None
    # one teacher row, with our teacher's accuracy from the records beside the paper's
    assert sum(r["method"] == "teacher" for r in accuracy_rows(_runs(), reference=ref)) == 1
    assert recs["teacher"]["mean"] == 99.26 and recs["teacher"]["published"] == 98.91
    assert recs["zskd"]["mean"] is None and recs["zskd"]["published"] == 98.77  # a published row we do not run


def test_markdown_shows_the_teacher_and_the_published_value():
    ref = load_reference(f"{REPO}/benchmarks/reference/mnist.yaml")
    text = accuracy_table(_runs(), reference=ref)
    teacher = next(line for line in text.splitlines() if line.startswith("| teacher"))
    assert "99.26" in teacher and "98.91" in teacher
    dafl = next(line for line in text.splitlines() if line.startswith("| dafl"))
    assert "98.20" in dafl and "-0.70" in dafl


# --------------------------------------------------------------------------- unreadable records and run statuses

OUTPUTS = ("README.md", "accuracy.csv", "stability.csv", "curves.png", "acc_vs_hours.png")


def _summary(method="dafl", seed=0, last=97.0, **over):
    """The keys engine.finish() writes that the tables read."""
    s = {
        "run_id": f"lenet5-lenet5_half-s{seed}",
        "method": method,
        "dataset": "digits",
        "teacher": "lenet5",
        "student": "lenet5_half",
        "pair": PAIR,
        "seed": seed,
        "tag": "",
        "uses_real_data": "",
        "epochs": 2,
        "evaluations": 2,
        "last_acc": last,
        "best_acc": last,
        "mean_acc": last,
        "var_acc": 0.0,
        "teacher_acc": 99.26,
        "machine": "CPU test",
        "finished": "2026-01-01T00:00:00",
        "peak_memory_mb": 100.0,
        "total_seconds": 36.0,
        "total_hours": 0.01,
        "gpu_hours": 0.0,
        "synthesis_seconds": 18.0,
        "synthesis_hours": 0.005,
        "images_synthesized": 1000,
    }
    s.update(over)
    return s


def _curve_of(summary):
    """metrics.jsonl lines a summary agrees with (the tables check a record against its curve): its best, then
    its last evaluation (none for a run that has no accuracy)."""
    last, best = summary.get("last_acc"), summary.get("best_acc")
    if not isinstance(last, (int, float)):
        return []
    first = best if isinstance(best, (int, float)) and best > last else last - 5.0
    return [json.dumps({"epoch": 1, "acc": first}), json.dumps({"epoch": 2, "acc": last})]


def _run(root, name, summary=None, metrics=None, raw_summary=None):
    """A run folder ``root/name`` with summary.json (a dict, or ``raw_summary`` text) and metrics.jsonl lines (by
    default the ones the summary says: :func:`_curve_of`)."""
    d = root / name
    d.mkdir(parents=True)
    summary = summary if summary is not None else _summary()
    lines = metrics if metrics is not None else _curve_of(summary)
    if metrics is None and isinstance(summary, dict):
        summary = {**summary, "evaluations": len(lines)}
    text = raw_summary if raw_summary is not None else json.dumps(summary)
    (d / "summary.json").write_text(text)
    (d / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return d


def _section(text, header):
    return text.split(f"## {header}", 1)[1]


@pytest.mark.parametrize(
    "bad,why",
    [
        ('{"method": "cmi", "dataset": "dig', "not valid JSON"),  # truncated by a crash mid-write
        ("[1, 2]", "not a JSON object"),
        (
            json.dumps({k: v for k, v in _summary("cmi").items() if k not in ("method", "dataset")}),
            "missing method, dataset",
        ),
        (json.dumps(_summary("cmi", status="exploded")), "unknown status"),
        (json.dumps(_summary("cmi", last_acc="high")), "last_acc is not a number"),
    ],
)
def test_an_unreadable_summary_is_listed_as_skipped_and_the_good_run_tabled(tmp_path, bad, why):
    _run(tmp_path, "dafl/s0")
    _run(tmp_path, "cmi/s0", raw_summary=bad)
    df = load_runs(str(tmp_path))
    assert list(df["method"]) == ["dafl"]
    (skip,) = df.attrs["skipped"]
    assert skip["path"] == os.path.join("cmi", "s0", "summary.json") and why in skip["reason"]
    text = write_tables(df, str(tmp_path))  # the old call form, as runner.py and demo.py make it
    readme = (tmp_path / "README.md").read_text()
    assert readme == text
    skipped = _section(readme, "Skipped records")
    assert "cmi/s0/summary.json" in skipped and why in skipped
    assert "| dafl |" in _section(readme, "Per run") and "| cmi" not in readme
    acc = pd.read_csv(tmp_path / "accuracy.csv")
    assert list(acc[acc["method"] != "teacher"]["method"]) == ["dafl"]


@pytest.mark.parametrize("line", ['{"epoch": 2, "acc": NaN', "NaN", '{"epoch": 2}', '{"epoch": "two", "acc": 1.0}'])
def test_a_bad_metrics_line_skips_only_the_curve_and_table_exits_0(tmp_path, capsys, line):
    _run(tmp_path, "dafl/s0", metrics=['{"epoch": 1, "acc": 90.0}', line])
    _run(tmp_path, "zskt/s0", _summary("zskt", last=96.0))
    assert main(["table", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "1 record skipped" in err
    assert all((tmp_path / f).is_file() for f in OUTPUTS)
    readme = (tmp_path / "README.md").read_text()
    skipped = _section(readme, "Skipped records")
    assert "dafl/s0/metrics.jsonl" in skipped and "line 2" in skipped and "curve is left out" in skipped
    # the run keeps its row, from summary.json, in the README and the CSVs alike
    per_run = _section(readme, "Per run").split("## ")[0]
    assert "| dafl |" in per_run and "| zskt |" in per_run
    acc = pd.read_csv(tmp_path / "accuracy.csv").set_index("method")
    assert acc.loc["dafl", "mean"] == 97.0 and acc.loc["zskt", "mean"] == 96.0
    assert set(pd.read_csv(tmp_path / "stability.csv")["method"]) == {"dafl", "zskt"}
    assert main(["plot", str(tmp_path)]) == 0
    assert "dafl/s0/metrics.jsonl" in capsys.readouterr().err


def test_nothing_is_written_until_every_output_is_built(tmp_path, monkeypatch):
    import matplotlib.figure

    _run(tmp_path, "dafl/s0")
    for f in ("README.md", "accuracy.csv", "stability.csv"):
        (tmp_path / f).write_text("previous\n")

    def broken(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        write_tables(load_runs(str(tmp_path)), str(tmp_path))
    assert all((tmp_path / f).read_text() == "previous\n" for f in ("README.md", "accuracy.csv", "stability.csv"))


def test_no_readable_runs_is_one_error_line_and_exit_2(tmp_path, capsys):
    _run(tmp_path, "dafl/s0", raw_summary="")
    _run(tmp_path, "cmi/s0", raw_summary='{"method": ')
    for cmd in ("table", "plot"):
        assert main([cmd, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
        assert "2 records skipped" in err and "dafl/s0/summary.json" in err and "cmi/s0/summary.json" in err
    assert not any((tmp_path / f).exists() for f in OUTPUTS)


def _statuses(tmp_path):
    """dafl: two seeds finished, one diverged (its last finite accuracy 50 must not count); cmi: its only seed
    diverged; dfad: collapsed to chance; zskt: an older record with no status."""
    diverged = {"status": "diverged", "diverged": {"epoch": 2, "step": 6, "reason": "non-finite loss"}}
    _run(tmp_path, "dafl/s0", _summary("dafl", 0, 97.0, status="finished"))
    _run(tmp_path, "dafl/s1", _summary("dafl", 1, 98.0))
    _run(
        tmp_path,
        "dafl/s2",
        _summary("dafl", 2, 50.0, evaluations=1, **diverged),  # the engine counts finite evaluations
        metrics=['{"epoch": 1, "acc": 50.0}', '{"epoch": 2, "acc": null, "lr": null}'],
    )
    _run(
        tmp_path,
        "cmi/s0",
        _summary("cmi", 0, None, best_acc=None, mean_acc=None, var_acc=None, evaluations=0, **diverged),
        metrics=['{"epoch": 1, "acc": null}'],
    )
    _run(tmp_path, "dfad/s0", _summary("dfad", 0, 10.09, status="collapsed", collapsed=True))
    _run(tmp_path, "zskt/s0", _summary("zskt", 0, 96.0))
    return load_runs(str(tmp_path))


def _line(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def test_diverged_and_collapsed_cells(tmp_path):
    df = _statuses(tmp_path)
    assert df.attrs["skipped"] == []  # null accuracies in metrics.jsonl are accepted
    assert dict(zip(df["method"] + df["seed"].astype(str), df["status"])) == {
        "cmi0": "diverged",
        "dafl0": "finished",
        "dafl1": "finished",
        "dafl2": "diverged",
        "dfad0": "collapsed",
        "zskt0": "finished",
    }
    recs = {r["method"]: r for r in accuracy_rows(df)}
    assert recs["dafl"]["mean"] == 97.5 and recs["dafl"]["seeds"] == 2 and recs["dafl"]["diverged"] == 1
    assert recs["dafl"]["status"] == "mixed" and recs["cmi"]["mean"] is None and recs["cmi"]["status"] == "diverged"
    assert recs["dfad"]["mean"] == 10.09 and recs["dfad"]["status"] == "collapsed"

    acc = accuracy_table(df)
    assert _line(acc, "| dafl |") == "| dafl | 97.50 ± 0.71 (1/3 diverged) |"
    assert _line(acc, "| cmi |") == "| cmi | diverged |"
    assert _line(acc, "| dfad |") == "| dfad | 10.09 (collapsed) |"
    assert _line(acc, "| zskt |") == "| zskt | 96.00 |"

    stab = stability_table(df)
    cmi = _line(stab, f"| digits | {PAIR} | cmi |")
    assert cmi.split(" | ")[4:8] == ["diverged"] * 4  # mean, var, best, last: no number
    dafl = _line(stab, f"| digits | {PAIR} | dafl |")
    assert "97.50 (1/3 diverged)" in dafl and "50.00" not in dafl and "81.67" not in dafl  # 81.67: all 3 seeds
    assert "10.09 (collapsed)" in _line(stab, f"| digits | {PAIR} | dfad |")

    runs = runs_table(df)
    assert "| status |" in runs.splitlines()[0]
    div = _line(runs, "| digits | dafl | lenet5->lenet5_half | 2 |")
    assert "diverged at epoch 2, step 6: non-finite loss" in div and "50.00" not in div
    assert "| finished |" in _line(runs, "| digits | zskt |")
    assert "10.09 (collapsed)" in _line(runs, "| digits | dfad |")


def test_csvs_carry_the_status(tmp_path):
    df = _statuses(tmp_path)
    write_tables(df, str(tmp_path / "out"))
    acc = pd.read_csv(tmp_path / "out" / "accuracy.csv").set_index("method")
    assert acc.loc["dafl", "status"] == "mixed" and acc.loc["dafl", "mean"] == 97.5
    assert acc.loc["cmi", "status"] == "diverged" and pd.isna(acc.loc["cmi", "mean"])
    assert acc.loc["dfad", "status"] == "collapsed" and acc.loc["zskt", "status"] == "finished"
    stab = pd.read_csv(tmp_path / "out" / "stability.csv").set_index("method")
    assert stab.loc["dafl", "last_acc"] == 97.5 and stab.loc["dafl", "diverged"] == 1
    assert stab.loc["cmi", "status"] == "diverged" and pd.isna(stab.loc["cmi", "last_acc"])


def test_the_reader_accepts_null_and_reads_older_nan_as_null(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 1, "acc": null}\n\n{"epoch": 2, "acc": NaN, "lr": Infinity}\n')
    assert read_jsonl(str(p)) == [{"epoch": 1, "acc": None}, {"epoch": 2, "acc": None, "lr": None}]
    p.write_text('{"epoch": 1, "acc": 1.0}\nNaN\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(str(p))


def test_tables_markdown_lists_the_skipped_records_of_the_frame(tmp_path):
    _run(tmp_path, "dafl/s0")
    _run(tmp_path, "cmi/s0", raw_summary="{")
    text = tables_markdown(load_runs(str(tmp_path)))  # what `datafree table DIR --out -` prints
    assert "1 record could not be used" in text and "`cmi/s0/summary.json`" in _section(text, "Skipped records")


def test_plot_curves_of_run_dirs_leaves_a_bad_metrics_file_out(tmp_path):
    from datafree.report import plot_curves

    good, bad = _run(tmp_path, "dafl/s0"), _run(tmp_path, "cmi/s0", metrics=["NaN"])
    skipped = []
    plot_curves([str(good), str(bad)], str(tmp_path / "c.png"), skipped=skipped)  # the old call form, plus a list
    assert (tmp_path / "c.png").stat().st_size > 0
    assert [s["path"] for s in skipped] == [str(bad / "metrics.jsonl")] and "not a JSON object" in skipped[0]["reason"]


def test_index_links_parity_folder_instead_of_tabulating_it(tmp_path):
    """results/parity has its own table (benchmarks/parity/parity.py): the index links it and never tabulates the
    run directories inside it as if they were a suite's."""
    from datafree.report import write_index

    parity = tmp_path / "parity"
    (parity / "dfq" / "ours-s0" / "run").mkdir(parents=True)
    (parity / "dfq" / "ours-s0" / "run" / "summary.json").write_text("{}")
    (parity / "README.md").write_text("# Parity\n")
    text = write_index(str(tmp_path))
    assert "## Parity with the reference code" in text
    assert "[parity/README.md](parity/README.md)" in text
    assert "## parity" not in text and "No readable runs" not in text
    assert (tmp_path / "README.md").read_text() == text
