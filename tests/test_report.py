"""The paper-layout accuracy table: ours beside the published value, the teacher row from the run records."""
import pandas as pd

from conftest import REPO
from datafree.report import accuracy_rows, accuracy_table, load_reference

PAIR = "lenet5->lenet5_half"


def _runs():
    rows = [("dafl", 0, 97.0), ("dafl", 1, 98.0), ("cmi", 0, 60.0)]
    return pd.DataFrame([{"dataset": "mnist", "method": m, "pair": PAIR, "seed": s, "last_acc": a, "best_acc": a,
                          "teacher_acc": 99.26, "uses_real_data": ""} for m, s, a in rows])


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
