"""Shared fixtures: a tiny digits teacher in a temporary zoo, and quiet, small run configs."""
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.abspath(os.path.join(REPO, "..", "shared", "data", "mnist"))

# tiny models run fastest on one thread (and do not fight other processes for the cores)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """A model zoo holding a lenet5 digits teacher trained for a few epochs (about a second)."""
    from datafree.train import train_teacher

    d = str(tmp_path_factory.mktemp("zoo"))
    old = os.environ.get("DATAFREE_ZOO")
    os.environ["DATAFREE_ZOO"] = d
    cwd = os.getcwd()
    os.chdir(str(tmp_path_factory.mktemp("teacher_runs")))
    try:
        train_teacher("digits", "lenet5", {"epochs": 8, "progress": False}, log=lambda *a: None)
    finally:
        os.chdir(cwd)
    yield d
    if old is None:
        os.environ.pop("DATAFREE_ZOO", None)
    else:
        os.environ["DATAFREE_ZOO"] = old


#: per-method synthesis settings that make one round take milliseconds
TINY_SYNTH = {
    "dafl": {"synthesis_batch_size": 16, "ngf": 8},
    "deepinv": {"iterations": 3, "synthesis_batch_size": 16},
}


def tiny(method: str, out, **over):
    """A resolved config for a fast digits run of ``method``."""
    from datafree.config import deep_merge, resolve
    from datafree.methods import method_entry

    base = {"method": method, "dataset": "digits", "teacher": "lenet5", "student": "lenet5_half",
            "epochs": 2, "ep_steps": 3, "kd_steps": None, "batch_size": 16, "samples": 8, "progress": False,
            "out": str(out), "warmup": 0}
    synth = method_entry(method).get("synthesizer")
    base["synth"] = dict(TINY_SYNTH.get(method, TINY_SYNTH.get(synth, {})))
    return resolve(deep_merge(base, over))


@pytest.fixture
def tiny_cfg(zoo):
    return tiny
