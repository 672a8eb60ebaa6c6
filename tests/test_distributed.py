"""One run on two processes with torchrun: DDP for the student (gloo on CPU), records written once."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)
def test_torchrun_two_ranks(zoo, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, DATAFREE_ZOO=zoo, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "datafree.cli",
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
        "device=cpu",
        "epochs=2",
        "ep_steps=3",
        "batch_size=16",
        "samples=8",
        "synth.synthesis_batch_size=16",
        "synth.ngf=8",
        "progress=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True
    assert s["images_seen"] == 2 * 2 * 3 * 16  # two ranks, each 2 epochs x 3 steps x 16
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written once, by rank 0
    assert (out / "checkpoint.pt").exists() and (out / "checkpoint.rank1.pt").exists()
    assert proc.stdout.count("last ") == 1  # one result line, from rank 0


PLUGIN = """
import os
import torch
from datafree.distill.base import Distiller

def _rank1_breaks(self):  # a declared check that fails on rank 1 only, from its third student step
    return {"rank 1 check": torch.tensor(os.environ.get("RANK") == "1" and self.ctx.step >= 2)}

Distiller.health_checks = _rank1_breaks
"""


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)
def test_torchrun_ranks_stop_together_on_divergence_and_collapse(zoo, tmp_path):
    """One rank's divergence, or rank 0's collapse decision, stops every rank: a record, not a hang."""
    (tmp_path / "rank1_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, DATAFREE_ZOO=zoo, OMP_NUM_THREADS="1")
    base = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "datafree.cli",
        "distill",
        "--method",
        "scratch",
        "--dataset",
        "digits",
        "--student",
        "lenet5_half",
        "device=cpu",
        "batch_size=16",
        "samples=0",
        "progress=false",
    ]
    out = tmp_path / "diverged"
    proc = subprocess.run(
        base + ["--out", str(out), "--plugin", str(tmp_path / "rank1_plugin.py"), "epochs=3", "ep_steps=60"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(tmp_path),
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["diverged"]["step"] == 2, proc.stderr[-3000:]
    assert "rank 1 check" in s["diverged"]["reason"] and s["diverged"]["epoch"] == 1
    out = tmp_path / "collapsed"
    proc = subprocess.run(
        base
        + [
            "--out",
            str(out),
            "epochs=6",
            "ep_steps=1",
            "optim.lr=1e-12",
            "stop_on_collapse=true",
            "collapse_grace=0",
            "collapse_patience=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "collapsed" and s["evaluations"] == 1
