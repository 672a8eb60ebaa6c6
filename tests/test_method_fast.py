"""Fast-DFKD: the meta-generator round, the meta update rules, warm-up, the one-time reset,
BN-statistics momentum, the presets, and end-to-end runs that resume."""

import json

import pytest
import torch
from torch import nn

from conftest import (
    changed_params,
    count_calls,
    engine_for,
    interrupted_then_resumed,
    run_killed,
    snapshot,
    tiny,
    unchanged,
)
from datafree.config import RunConfig
from datafree.methods import resolve
from datafree.data.datasets import get_spec
from datafree.engine import run
from datafree.models import create_model
from datafree.results import read_jsonl
from datafree.synthesis import fast as fast_mod
from datafree.synthesis.base import Context
from datafree.synthesis.fast import FastDFKD

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16, "g_steps": 3}


def _engine(tmp_path, warmup=0, **synth):
    return engine_for("fast", tmp_path / "r", synth={**SYNTH, **synth}, warmup=warmup, epochs=max(2, warmup + 1))


def _adder(acc):
    def hook(g):
        acc.add_(g)  # observe only: returning None leaves the gradient as it is

    return hook


def _record_clone(monkeypatch, synth):
    """Keep the round's fast generator and the sum of the gradients its parameters receive."""
    seen = {}
    real = synth.clone

    def clone():
        fast = real()
        seen["fast"] = fast
        seen["grads"] = [torch.zeros_like(p) for p in fast.parameters()]
        for acc, p in zip(seen["grads"], fast.parameters()):
            p.register_hook(_adder(acc))
        return fast

    monkeypatch.setattr(synth, "clone", clone)
    return seen


def test_round_moves_the_meta_generator_not_the_models(zoo, tmp_path):
    e = _engine(tmp_path)
    s = e.synth
    teacher, student, gen = snapshot(e.teacher), snapshot(e.student), snapshot(s.generator)
    logs = s.synthesize()
    for k, v in logs.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), k
    assert set(logs) >= {"bn", "oh", "adv", "loss_g"}
    assert float(logs["adv"]) != 0  # the adversarial term is live after the warm-up
    assert unchanged(e.teacher, teacher) and unchanged(e.student, student)
    assert changed_params(s.generator, gen) == {k for k, _ in s.generator.named_parameters()}  # every one moved
    assert len(s.pool) == 16 and s.images_synthesized == 16
    x = s.sample(8)
    assert x.shape == (8, *e.spec.shape) and x.device == e.device
    gen = snapshot(s.generator)
    before = snapshot(e.student)
    e.trainer.step(x)
    assert changed_params(e.student, before)
    assert unchanged(s.generator, gen)  # the student step leaves G alone


def test_meta_optimizer_is_adam_at_lr_g_times_g_steps(zoo, tmp_path):
    s = _engine(tmp_path, g_steps=4, lr_g=5e-3).synth
    group = s.optimizer.param_groups[0]
    assert isinstance(s.optimizer, torch.optim.Adam)
    assert group["lr"] == pytest.approx(2e-2) and tuple(group["betas"]) == (0.5, 0.999)
    assert _engine(tmp_path / "b", meta_lr=1e-4).synth.optimizer.param_groups[0]["lr"] == 1e-4


def test_fomaml_meta_gradient_is_the_sum_of_the_clone_gradients(zoo, tmp_path, monkeypatch):
    s = _engine(tmp_path, meta="fomaml").synth
    s.optimizer = torch.optim.SGD(s.generator.parameters(), lr=1.0)  # theta_new = theta - meta_grad
    seen = _record_clone(monkeypatch, s)
    theta = snapshot(s.generator)
    s.synthesize()
    fast = seen["fast"]
    assert fast is not s.generator
    for (k, new), g in zip(s.generator.named_parameters(), seen["grads"]):
        assert g.abs().sum() > 0
        assert torch.allclose(new.detach(), theta[k] - g, atol=1e-6)
    # the clone is discarded: nothing keeps it, and the meta-generator did not copy its inner steps
    assert all(v is not fast for v in vars(s).values())
    assert any(not torch.equal(q, p) for q, p in zip(fast.parameters(), s.generator.parameters()))


def test_reptile_moves_theta_towards_the_adapted_clone(zoo, tmp_path, monkeypatch):
    s = _engine(tmp_path, meta="reptile").synth
    eps = 0.5
    s.optimizer = torch.optim.SGD(s.generator.parameters(), lr=eps)  # theta + eps * (theta' - theta)
    seen = _record_clone(monkeypatch, s)
    theta = snapshot(s.generator)
    s.synthesize()
    for (k, new), adapted in zip(s.generator.named_parameters(), seen["fast"].parameters()):
        assert torch.allclose(new.detach(), theta[k] + eps * (adapted.detach() - theta[k]), atol=1e-6)
    assert changed_params(s.generator, theta)


def test_meta_none_trains_the_generator_in_place(zoo, tmp_path, monkeypatch):
    s = _engine(tmp_path, meta="none").synth
    seen = _record_clone(monkeypatch, s)
    theta = snapshot(s.generator)
    s.synthesize()
    assert seen["fast"] is s.generator
    assert changed_params(s.generator, theta)
    with pytest.raises(ValueError, match="meta"):
        _engine(tmp_path / "bad", meta="maml")


def test_no_adversarial_term_during_warmup(zoo, tmp_path, monkeypatch):
    e = _engine(tmp_path, warmup=2)
    calls = count_calls(monkeypatch, e.synth, "student_logits")
    for epoch in (0, 1):
        e.ctx.epoch = epoch
        assert float(e.synth.synthesize()["adv"]) == 0.0
    assert calls["n"] == 0  # the student is not even run
    e.ctx.epoch = 2
    assert float(e.synth.synthesize()["adv"]) != 0.0
    assert calls["n"] == 3  # once per inner step


def test_first_layer_reset_happens_once_at_the_chosen_epoch(zoo, tmp_path):
    e = _engine(tmp_path, warmup=2, reset_after=0)
    s = e.synth
    before = snapshot(s.generator)
    s.on_epoch_start(0)
    s.on_epoch_start(1)
    assert unchanged(s.generator, before)
    s.on_epoch_start(2)  # first post-warm-up epoch
    assert s.reset_done
    changed = {k for k, v in s.generator.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"project.weight", "project.bias", "body.0.weight"}  # body.0.bias starts at 0
    assert torch.count_nonzero(s.generator.project.bias) == 0 and torch.count_nonzero(s.generator.body[0].bias) == 0
    assert s.generator.project.weight.std().item() == pytest.approx(0.02, rel=0.3)
    after = snapshot(s.generator)
    s.on_epoch_start(3)
    assert unchanged(s.generator, after)
    # the flag travels with the checkpoint: a resumed synthesizer does not reset again
    fresh = _engine(tmp_path / "b", warmup=2, reset_after=0).synth
    fresh.load_state_dict(s.state_dict())
    assert fresh.reset_done
    fresh.on_epoch_start(4)
    assert unchanged(fresh.generator, after)


def test_reset_is_not_repeated_by_a_resume(zoo, tmp_path, monkeypatch):
    calls = []
    real_reset = fast_mod.reset_first_layers
    monkeypatch.setattr(
        fast_mod, "reset_first_layers", lambda g, *a, **k: (calls.append(type(g).__name__), real_reset(g, *a, **k))
    )
    cfg = dict(synth=dict(SYNTH, reset_after=0), warmup=1, epochs=4)
    run_killed(tiny("fast", tmp_path / "r", **cfg), monkeypatch, after=2)  # after epoch index 1, the reset epoch
    assert len(calls) == 1  # at the start of epoch index 1 = warmup + reset_after
    run(tiny("fast", tmp_path / "r", **cfg), resume=True)
    assert len(calls) == 1  # the resumed run (epochs 2, 3) does not reset again


class _BNTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x, return_features=False):
        f = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        out = self.fc(f)
        return (out, f) if return_features else out


def test_bn_momentum_targets_are_updated_after_each_round():
    torch.manual_seed(0)
    spec = get_spec("digits")
    teacher = _BNTeacher().eval().requires_grad_(False)
    ctx = Context(teacher, create_model("lenet5_half", 10, 1, spec.size), spec, "cpu", cfg=RunConfig(warmup=0))
    s = FastDFKD(ctx, **dict(SYNTH, bn=1.0, bn_momentum=0.9))
    bn = s.terms.bn
    assert bn is not None and bn.momentum == 0.9 and bn.ema == [None]
    logs = s.synthesize()
    assert float(logs["bn"]) > 0
    first = tuple(t.clone() for t in bn.ema[0])
    assert all(torch.equal(a, b) for a, b in zip(first, bn._last[0]))  # the last inner step's statistics
    s.synthesize()
    last = bn._last[0]
    for ema, old, new in zip(bn.ema[0], first, last):
        assert torch.allclose(ema, 0.9 * old + 0.1 * new.detach())
    assert s.state_dict()["terms"]["ema"][0] is not None  # resumable


@pytest.mark.parametrize(
    "preset,g_steps,lr_z,lr_g",
    [
        ("fast", 10, 0.01, 2e-3),
        ("fast1", 1, 0.015, 5e-3),
        ("fast2", 2, 0.015, 5e-3),
        ("fast5", 5, 0.01, 3e-3),
        ("fast10", 10, 0.01, 2e-3),
    ],
)
def test_presets_resolve(preset, g_steps, lr_z, lr_g):
    for dataset, teacher, student, adv, oh in [
        ("cifar10", "wrn40_2", "wrn16_1", 1.1, 0.4),
        ("cifar100", "resnet34", "resnet18", 1.33, 0.5),
        ("cifar10", "vgg11", "resnet18", 1.0, 0.5),
        ("mnist", "lenet5", "lenet5_half", 1.1, 0.4),
    ]:
        cfg = resolve({"method": preset, "dataset": dataset, "teacher": teacher, "student": student})
        assert cfg.synthesizer == "fast" and cfg.distiller == "kd" and cfg.distill["T"] == 20
        assert (cfg.synth["g_steps"], cfg.synth["lr_z"], cfg.synth["lr_g"]) == (g_steps, lr_z, lr_g)
        assert (cfg.synth["adv"], cfg.synth["oh"], cfg.synth["bn"], cfg.synth["bn_momentum"]) == (adv, oh, 10, 0.9)
        assert cfg.synth["meta"] == "fomaml"
        if dataset.startswith("cifar"):
            assert (cfg.epochs, cfg.warmup, cfg.ep_steps, cfg.kd_steps, cfg.batch_size) == (220, 20, 400, 400, 256)
            assert (cfg.optim.lr, cfg.optim.lr_min, cfg.optim.schedule) == (0.2, 2e-4, "cosine")
            assert cfg.synth["reset_after"] == 120
    over = resolve({"method": preset, "dataset": "cifar10"}, {"synth": {"g_steps": 3}})
    assert over.synth["g_steps"] == 3


def test_run_records_synthesis_time_apart_and_resumes(zoo, tmp_path, monkeypatch):
    cfg = dict(synth=SYNTH, warmup=1, epochs=3)
    full, resumed = interrupted_then_resumed(lambda d: tiny("fast", d, **cfg), tmp_path, monkeypatch)
    s = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s["synthesis_seconds"] > 0 and s["distill_seconds"] > 0
    assert s["images_seen"] == 2 * 3 * 16  # no student steps in the warm-up epoch
    assert s["images_synthesized"] == 3 * 16  # one round per epoch (kd_steps null)
    assert [r["epoch"] for r in read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))] == [2, 3]
    assert resumed["last_acc"] == full["last_acc"]
    assert resumed["images_synthesized"] == full["images_synthesized"]
