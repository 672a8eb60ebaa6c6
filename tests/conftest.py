"""Shared fixtures: a tiny digits teacher in a temporary zoo, and quiet, small run configs."""

import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.abspath(os.path.join(REPO, "..", "shared", "data", "mnist"))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def reference_fixture(json_name: str):
    """``(make_reference_layouts, facts)``: the fixture generators' shared module (its ``fill`` makes the weights
    the recorded outputs were computed from) and the recorded facts ``tests/fixtures/<json_name>``."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "make_reference_layouts", os.path.join(FIXTURES, "make_reference_layouts.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(os.path.join(FIXTURES, json_name)) as f:
        return module, json.load(f)


# tiny models run fastest on one thread (and do not fight other processes for the cores)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it (the suite runs in random order,
    pytest-randomly; its seed is printed in the header, and `-p randomly --randomly-seed=N` replays it)."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


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
    from datafree.config import deep_merge
    from datafree.engine import check_run
    from datafree.methods import method_entry, resolve

    base = {
        "method": method,
        "dataset": "digits",
        "teacher": "lenet5",
        "student": "lenet5_half",
        "epochs": 2,
        "ep_steps": 3,
        "kd_steps": None,
        "batch_size": 16,
        "samples": 8,
        "progress": False,
        "out": str(out),
        "warmup": 0,
    }
    synth = method_entry(method).get("synthesizer")
    base["synth"] = dict(TINY_SYNTH.get(method, TINY_SYNTH.get(synth, {})))
    return check_run(resolve(deep_merge(base, over)))  # checked against this machine, as `datafree distill` does


@pytest.fixture
def tiny_cfg(zoo):
    return tiny


# --------------------------------------------------------------------------- shared test helpers


def snapshot(module):
    """A copy of a module's state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(module, snap) -> bool:
    """True when the module's state equals a :func:`snapshot` of it."""
    return all(torch.equal(v, snap[k]) for k, v in module.state_dict().items())


def changed_params(module, snap) -> set:
    """The names of the module's parameters that differ from a :func:`snapshot` of it (buffers are not looked
    at: for "this module learned" checks on modules whose BatchNorm statistics move on any forward pass)."""
    return {k for k, p in module.named_parameters() if not torch.equal(p.detach(), snap[k])}


def count_calls(monkeypatch, owner, name: str) -> dict:
    """Wrap ``owner.name`` (a method of an instance or a class) so that calls are counted in the returned
    ``{"n": ...}``; it still does what it did."""
    calls = {"n": 0}
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def grad_norm(loss, module) -> float:
    """Sum of |d loss / d p| over the module's parameters (0 when none is reached)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def round_trains_only(e, module=None) -> dict:
    """One synthesis round of engine ``e``: every logged loss is finite, ``module`` (the generator, if given)
    changed, and neither the teacher nor the student did. Returns the round's logs."""
    teacher, student = snapshot(e.teacher), snapshot(e.student)
    before = snapshot(module) if module is not None else None
    logs = e.synth.synthesize()
    for k, v in logs.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), k
    assert unchanged(e.teacher, teacher) and unchanged(e.student, student)
    if module is not None:
        assert not unchanged(module, before)
    return logs


def assert_term_moves_only_the_generator(e) -> None:
    """One generator loss on a fresh batch of engine ``e``'s synthesizer is finite and non-zero, and its gradient
    reaches the generator and neither the student nor the teacher."""
    x = e.synth.generate(e.synth.latent(16))
    loss, _ = e.synth.generator_loss(x, None)
    assert torch.isfinite(loss) and loss != 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in e.synth.generator.parameters())
    assert all(p.grad is None for p in e.student.parameters())
    assert all(p.grad is None for p in e.teacher.parameters())


def adversarial_live_and_trap(e, method: str):
    """The adversarial term of ``method`` on one batch: with engine ``e``'s student, and with a copy of the teacher
    passed as the student (the reference-code trap that silences it). Returns the batch and both values."""
    import copy

    from datafree.registry import SYNTHESIZERS
    from datafree.synthesis.base import Context

    x = e.synth.generate(e.synth.latent(16))
    live = e.synth.generator_loss(x, None)[1]["adv"]
    ctx = Context(e.teacher, copy.deepcopy(e.teacher), e.spec, e.device, cfg=e.cfg)
    dead = SYNTHESIZERS.build(method, ctx, **e.cfg.synth).generator_loss(x, None)[1]["adv"]
    return x, live, dead


def engine_for(method: str, out, **over):
    """An Engine for a tiny digits run of ``method``, set up (teacher, student, synthesizer, distiller built)."""
    from datafree.engine import Engine

    e = Engine(tiny(method, out, **over))
    e.setup()
    return e


def run_killed(cfg, monkeypatch, after: int = 1) -> None:
    """Run ``cfg``, killed (KeyboardInterrupt) right after its ``after``-th checkpoint was saved."""
    from datafree.engine import Engine, run

    real = Engine.save_checkpoint
    saves = {"n": 0}

    def save_then_die(self, epoch):
        real(self, epoch)
        saves["n"] += 1
        if saves["n"] == after:
            raise KeyboardInterrupt("simulated kill")

    with monkeypatch.context() as m:
        m.setattr(Engine, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)


def assert_same_results(a, b) -> None:
    """The runs in directories ``a`` and ``b`` ended with the same student weights and the same accuracies."""
    from datafree.results import read_jsonl

    sa = torch.load(os.path.join(a, "student.pt"), weights_only=True)["state_dict"]
    sb = torch.load(os.path.join(b, "student.pt"), weights_only=True)["state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"student tensor {k} differs after the resume"
    accs = lambda d: [r["acc"] for r in read_jsonl(os.path.join(d, "metrics.jsonl"))]  # noqa: E731
    assert accs(a) == accs(b)


def interrupted_then_resumed(make_cfg, tmp_path, monkeypatch):
    """Run ``make_cfg(dir)`` to the end in ``full``; run it in ``cut`` killed right after its first checkpoint,
    then resume it. Asserts that both end with the same student weights and the same accuracies, and
    returns (full summary, resumed summary)."""
    from datafree.engine import run

    full = run(make_cfg(tmp_path / "full"))
    run_killed(make_cfg(tmp_path / "cut"), monkeypatch)
    resumed = run(make_cfg(tmp_path / "cut"), resume=True)
    assert_same_results(tmp_path / "full", tmp_path / "cut")
    return full, resumed
