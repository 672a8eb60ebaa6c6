"""One run on two processes with torchrun: DDP for the student (gloo on CPU), records written once."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed")
def test_torchrun_two_ranks(zoo, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, DATAFREE_ZOO=zoo, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "datafree.cli",
           "distill", "--method", "dafl", "--dataset", "digits", "--teacher", "lenet5", "--student", "lenet5_half",
           "--out", str(out), "device=cpu", "epochs=2", "ep_steps=3", "batch_size=16", "samples=8",
           "synth.synthesis_batch_size=16", "synth.ngf=8", "progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True
    assert s["images_seen"] == 2 * 2 * 3 * 16  # two ranks, each 2 epochs x 3 steps x 16
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written once, by rank 0
    assert (out / "checkpoint.pt").exists() and (out / "checkpoint.rank1.pt").exists()
    assert proc.stdout.count("last ") == 1  # one result line, from rank 0
