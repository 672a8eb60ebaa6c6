"""MB-DFKD: the adversarial generator and the memory buffer replayed to the student."""

import pytest
import torch
from torch import nn

from conftest import (
    assert_same_results,
    assert_term_moves_only_the_generator,
    changed_params,
    engine_for,
    round_trains_only,
    run_killed,
    snapshot,
    tiny,
    unchanged,
)
from datafree.engine import run
from datafree.synthesis import losses

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16, "push_every": 1, "memory_capacity": 2}


def _engine(tmp_path, **synth):
    return engine_for("mbdfkd", tmp_path / "r", synth={**SYNTH, **synth})


def test_round_moves_the_generator_only_and_the_student_learns(zoo, tmp_path):
    e = _engine(tmp_path)
    assert e.cfg.distiller == "l1" and e.synth.cfg.spectral_norm
    teacher, student = snapshot(e.teacher), snapshot(e.student)
    logs = round_trains_only(e, e.synth.generator)
    assert set(logs) >= {"oh", "ie", "act", "adv", "loss_g"}
    x = e.synth.sample(16)
    assert x.shape == (16, *e.spec.shape) and e.synth.last_mix == (16, 0)  # nothing stored yet
    e.synth.on_epoch_start(1)  # after epoch 0: the first push
    x = e.synth.sample(16)
    assert x.shape == (18, *e.spec.shape) and e.synth.last_mix == (16, 2)
    assert unchanged(e.student, student)
    e.trainer.step(x)
    assert not unchanged(e.student, student) and unchanged(e.teacher, teacher)


@pytest.mark.parametrize("term", ["oh", "ie", "act", "adv"])
def test_each_term_alone_is_finite_and_moves_the_generator(zoo, tmp_path, term):
    weights = {"oh": 0.0, "ie": 0.0, "act": 0.0, "adv": 0.0, term: 1.0}
    e = _engine(tmp_path, **weights)
    assert_term_moves_only_the_generator(e)


def test_student_batches_replay_earlier_epochs_and_the_buffer_stays_bounded(zoo, tmp_path):
    e = _engine(tmp_path)
    s = e.synth
    push = s.push_size
    assert push == 2 and s.memory.capacity == 2 * push
    for epoch in range(6):
        s.on_epoch_start(epoch)  # pushes after epochs 0..4
        s.synthesize()
        assert len(s.memory) <= s.memory.capacity
        if epoch >= 1:
            x = s.sample(16)
            assert x.shape[0] == 16 + push
            assert (s.last_replay_tags < epoch).all()  # replayed images come from earlier epochs
    stored, tags = s.memory.all()
    assert len(s.memory) == s.memory.capacity and s.memory.total_added == 5 * push
    assert sorted(set(tags.tolist())) == [3, 4]  # the ring kept the latest two pushes only
    # the replayed rows of a student batch are images of the buffer, as the student first saw them
    x = s.sample(16)
    replayed, novel = x[16:], x[:16]
    bank = s.from_unit(stored)
    d = torch.cdist(replayed.flatten(1), bank.flatten(1))
    assert (d.min(1).values < 1e-4).all()
    assert (torch.cdist(novel.flatten(1), bank.flatten(1)).min(1).values > 1e-3).all()


def test_buffer_round_trips_generator_images(zoo, tmp_path):
    e = _engine(tmp_path)
    x = e.synth.generate(e.synth.latent(8)).detach()
    assert e.synth.generator.normalized_output  # DAFL's tanh + BN: outside [0, 1] after denormalising
    assert torch.allclose(e.synth.from_unit(e.synth.to_unit(x)), x, atol=1e-4)


def test_buffer_is_part_of_the_resumable_state(zoo, tmp_path):
    e = _engine(tmp_path)
    e.synth.on_epoch_start(1)
    e.synth.on_epoch_start(2)
    state = e.synth.state_dict()
    other = _engine(tmp_path / "other").synth
    assert len(other.memory) == 0
    other.load_state_dict(state)
    a, ta = e.synth.memory.all()
    b, tb = other.memory.all()
    assert torch.equal(a, b) and torch.equal(ta, tb)


def test_engine_runs_and_resumes(zoo, tmp_path, monkeypatch):
    cfg = lambda d: tiny("mbdfkd", tmp_path / d, synth=SYNTH, epochs=3, kd_steps=1)  # noqa: E731
    full = run(cfg("full"))
    run_killed(cfg("cut"), monkeypatch, after=2)  # after epoch index 1: the buffer holds a push to restore
    resumed = run(cfg("cut"), resume=True)
    assert_same_results(tmp_path / "full", tmp_path / "cut")
    # epochs 2 and 3 replay: 16 novel + 2 replayed images per student step
    assert full["images_seen"] == resumed["images_seen"] == 3 * 16 + 2 * 3 * 18


@pytest.mark.parametrize(
    "method, kind, log, eps", [("mbdfkd", "released", "10", 0.8), ("mbdfkd:fixed", "js", "e", 1e-5)]
)
def test_plain_name_runs_the_released_terms_and_the_preset_the_fixed_ones(zoo, tmp_path, method, kind, log, eps):
    """mbdfkd: the released code's adversarial term (utils/aux.py:70-85), log10 class balance
    (distillation.py:58) and BatchNorm2d(C, 0.8) (networks/generator.py:17,22); mbdfkd:fixed: the true JS,
    the natural log and PyTorch's eps. The terms are pinned on fixed tensors in tests/test_losses.py; here
    the generator loss is checked to be made of them."""
    e = engine_for(method, tmp_path / "r", synth=SYNTH)
    s = e.synth
    assert (s.cfg.adv_kind, s.cfg.ie_log, s.cfg.adv_T) == (kind, log, 3.0)
    assert s.cfg.student_mode == ("train" if kind == "released" else "eval")
    bns = [m for m in s.generator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m.eps for m in bns] == [1e-5, eps, eps, 1e-5]  # the first and the output BN keep PyTorch's eps
    torch.manual_seed(0)
    x = s.generate(s.latent(16))
    loss, logs = s.generator_loss(x, None)
    with torch.no_grad():
        t = e.teacher(x)
        st = e.student(x)
    adv = (
        losses.adversarial_elementmean(st, t, T=3.0)
        if kind == "released"
        else losses.adversarial(st, t, kind="js", T=3.0)
    )
    ie = losses.class_balance(t, log=log)
    # the same float32 operations on the same tensors: equal up to summation order
    assert torch.allclose(logs["adv"], adv, atol=1e-6, rtol=0) and torch.allclose(logs["ie"], ie, atol=1e-6, rtol=0)
    c = s.cfg
    total = c.oh * logs["oh"] + c.ie * logs["ie"] + c.act * logs["act"] + c.adv * logs["adv"]
    assert torch.allclose(loss, total, atol=1e-6, rtol=0)
    if kind == "released":
        assert 0.0 <= float(logs["adv"].detach()) <= 1.0  # 1 - clamp(D, 0, 1)


def _bn_student(channels: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_student_mode_train_lets_generator_batches_move_the_students_bn_statistics(zoo, tmp_path, mode):
    """The released loop leaves the student in train mode during the generator step (main.py:91,
    distillation.py:34), so its BN uses batch statistics and updates its running ones; student_mode=eval
    freezes it. Either way its weights get no gradient and its mode is restored."""
    from datafree.registry import SYNTHESIZERS
    from datafree.synthesis.base import Context

    e = _engine(tmp_path)
    student = _bn_student(e.spec.channels).eval()
    ctx = Context(e.teacher, student, e.spec, e.device, cfg=e.cfg)
    s = SYNTHESIZERS.build("mbdfkd", ctx, **{**e.cfg.synth, "student_mode": mode})
    before = snapshot(student)
    torch.manual_seed(0)
    x = s.generate(s.latent(16))
    loss, logs = s.generator_loss(x, None)
    loss.backward()
    assert not changed_params(student, before) and all(p.grad is None for p in student.parameters())
    assert unchanged(student, before) == (mode == "eval")  # the BN running statistics moved in train mode
    assert not student.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.generator.parameters())
    # the adversarial term saw the student's train-mode (batch-statistics) outputs, or its eval-mode ones
    probe = _bn_student(e.spec.channels).train(mode == "train")
    with torch.no_grad():
        expected = losses.adversarial_elementmean(probe(x), e.teacher(x), T=3.0)
    assert torch.allclose(logs["adv"], expected, atol=1e-6, rtol=0)


def test_unknown_adversarial_kind_log_or_student_mode_is_refused(zoo, tmp_path):
    from datafree.methods import resolve

    base = {"method": "mbdfkd", "dataset": "cifar100", "teacher": "resnet34", "student": "resnet18"}
    for key, bad in (("adv_kind", "jsd"), ("ie_log", "2"), ("student_mode", "frozen")):
        with pytest.raises(Exception, match=key):
            resolve({**base, "synth": {key: bad}})
