"""scripts/gpu_check.sh --dry-run: the GPU plan (env, perf, tests, fp32 against bf16 synthesis, report) on the CPU
at tiny sizes, into a temporary folder; every file the GPU run would bring back is there and says what it should."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")


def _env(**extra):
    env = dict(os.environ)
    env.pop("GPU_CHECK_DRY_RUN", None)
    env.update({"PYTHON": sys.executable, "PYTHONPATH": REPO, **extra})
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    proc = subprocess.run(
        ["bash", SCRIPT, "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        cwd=REPO,
    )
    return out, proc


def test_dry_run_writes_every_file_and_every_step_passes(dry_run):
    from datafree.gpucheck import FILES, read_steps

    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(FILES)  # 8 files: what the device tool brings back
    steps = read_steps(str(out / "steps.log"))
    assert [s["step"] for s in steps] == ["env", "perf", "tests", "precision", "report"] or [
        s["step"] for s in steps
    ] == ["env", "perf", "precision", "tests", "report"]  # tests and precision overlap
    assert all(s["status"] == "ok" for s in steps), steps
    env = json.loads((out / "env.json").read_text())
    assert env["dry_run"] is True and env["torch"] == torch.__version__
    assert " passed" in (out / "tests.log").read_text()


def test_dry_run_perf_table(dry_run):
    out, _ = dry_run
    records = json.loads((out / "perf.json").read_text())
    # the classification scale and the segmentation cell (the test bed's DeepLab pair in the dry run)
    assert [(r["method"], r["scale"]) for r in records] == [("deepinv", "mnist"), ("deepinv", "mnist_seg")]
    assert not any("error" in r for r in records)
    assert records[0]["precision"] == {"synthesis": "off", "distillation": "off"}  # the CPU: fp32 throughout
    table = (out / "perf.md").read_text()
    assert "| deepinv | mnist |" in table and "| deepinv | mnist_seg |" in table


def test_dry_run_compares_fp32_and_bf16_synthesis_side_by_side(dry_run):
    from datafree.gpucheck import PLANS

    out, _ = dry_run
    rec = json.loads((out / "precision.json").read_text())
    plan = PLANS["dry"]["methods"]
    assert rec["dry_run"] is True and sorted(rec["methods"]) == sorted(plan) == ["cmi", "deepinv", "fast10"]
    iters = {
        "deepinv": plan["deepinv"]["synth"]["iterations"],
        "cmi": plan["cmi"]["synth"]["g_steps"],
        "fast10": plan["fast10"]["synth"]["g_steps"],
    }
    rows = list(csv.DictReader(open(out / "precision_curves.csv")))
    for m, entry in rec["methods"].items():
        for prec, autocast in (("fp32", "off"), ("bf16", "bf16")):
            run = entry[prec]
            assert run["synthesis_autocast"] == autocast  # amp=off and amp=bf16: what synthesis really ran at
            assert len(run["rounds"]) == plan[m]["rounds"]
            assert run["iterations_per_round"] == [iters[m]] * plan[m]["rounds"]
            assert len(run["bn_per_iteration"]) == iters[m] * plan[m]["rounds"]
            assert all(v > 0 for v in run["bn_per_iteration"])  # resnet8 has BN layers: the term is live
            assert {"bn", "oh", "loss_g"} <= set(run["rounds"][-1])
            assert 0.0 <= run["teacher_agreement"] <= 1.0
            curve = [
                float(r["value"]) for r in rows if (r["method"], r["precision"], r["curve"]) == (m, prec, "iteration")
            ]
            assert curve == pytest.approx(run["bn_per_iteration"], rel=1e-15)  # repr() round-trips a float
        s = entry["summary"]
        # the same batch, its BN term in fp32 and under bf16: close, not equal (bf16 rounds every activation)
        assert s["same_batch_bn_fp32"] > 0 and s["same_batch_bn_bf16"] > 0
        assert s["same_batch_bn_bf16"] != s["same_batch_bn_fp32"] and s["same_batch_rel_diff"] < 0.1
        # the two runs start from the same seed: the first BN value differs only by rounding
        f0, b0 = entry["fp32"]["bn_per_iteration"][0], entry["bf16"]["bn_per_iteration"][0]
        assert f0 != b0 and abs(f0 - b0) / f0 < 0.1
    report = (out / "gpu_check.md").read_text()
    assert "## fp32 against bf16 synthesis" in report and "| deepinv |" in report and "| fast10 |" in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_mode_without_cuda_stops_after_the_env_step(tmp_path):
    proc = subprocess.run(
        ["bash", SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=120, cwd=REPO
    )
    assert proc.returncode == 1 and "env step failed" in proc.stderr
    assert "no CUDA device" in (tmp_path / "steps.log").read_text()
    assert not (tmp_path / "perf.json").exists()
