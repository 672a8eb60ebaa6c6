"""DFAD: generator maximising the logits' L1 distance, student minimising it (l1 distiller)."""

import pytest
import torch

from conftest import (
    adversarial_live_and_trap,
    engine_for,
    interrupted_then_resumed,
    round_trains_only,
    snapshot,
    tiny,
    unchanged,
)
from datafree.methods import resolve
from datafree.synthesis.losses import l1_logits

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16}


def _engine(tmp_path, synth=None, **over):
    return engine_for("dfad", tmp_path / "r", synth={**SYNTH, **(synth or {})}, kd_steps=5, **over)


def test_defaults_are_the_reference_scripts():
    c10 = resolve({"method": "dfad", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"})
    assert (c10.synthesizer, c10.distiller, c10.kd_steps, c10.batch_size) == ("dfad", "l1", 5, 256)
    assert c10.epochs == 500 and c10.ep_steps == 250 and c10.optim.lr == 0.1 and c10.optim.weight_decay == 5e-4
    assert c10.optim.milestones == [100, 200] and c10.synth["g_milestones"] == [100, 200]
    mn = resolve({"method": "dfad", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"})
    assert mn.batch_size == 512 and mn.optim.lr == 0.01 and mn.synth["nz"] == 100 and mn.epochs == 40
    # CIFAR-100: README.md:92 runs DFAD_cifar.py --dataset cifar100 with the script's defaults, the CIFAR-10 values
    for pair in (("resnet34", "resnet18"), ("wrn40_2", "wrn16_1")):
        c100 = resolve({"method": "dfad", "dataset": "cifar100", "teacher": pair[0], "student": pair[1]})
        assert (c100.epochs, c100.ep_steps, c100.kd_steps, c100.batch_size) == (500, 250, 5, 256)
        assert (c100.optim.name, c100.optim.lr, c100.optim.momentum, c100.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
        assert c100.optim.milestones == [100, 200] and c100.synth["g_milestones"] == [100, 200]
        assert (c100.synth["nz"], c100.synth["lr_g"], c100.synth["output"]) == (256, 1e-3, "tanh_bn")


def test_l1_is_the_reference_form_on_fixed_logits():
    """DFAD_cifar.py:30 (student) and :43 (generator): F.l1_loss(s, t), the mean over batch x classes. On student
    logits (1, 0, -1), (0.5, 0.5, 0) and teacher logits (0, 2, 0), (1, 0, 0): |d| = (1, 2, 1), (0.5, 0.5, 0), mean
    5/6 = 0.833333; the generator's loss is its negative."""
    from datafree.synthesis.losses import adversarial

    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    # sums of exact binary fractions, one division by 6 (and by 3, then 2): within an ulp of 5/6
    assert l1_logits(s, t).item() == pytest.approx(5 / 6, abs=1e-7)
    assert adversarial(s, t, kind="l1").item() == pytest.approx(-5 / 6, abs=1e-7)
    assert torch.allclose(l1_logits(s, t), torch.nn.functional.l1_loss(s, t))


def test_first_round_is_student_first_then_generator_steps_train_the_generator_only(zoo, tmp_path):
    e = _engine(tmp_path)
    gen = snapshot(e.synth.generator)
    assert e.synth.synthesize() == {}  # round 0: the reference starts with 5 student steps
    assert unchanged(e.synth.generator, gen) and e.synth.images_synthesized == 0
    e.ctx.round = 1
    logs = round_trains_only(e, e.synth.generator)
    assert logs["adv"] < 0  # -L1(S, T): non-zero because the student is not the teacher
    assert all(p.grad is None for p in e.student.parameters())


def test_adversarial_term_is_zero_only_when_the_student_is_the_teacher(zoo, tmp_path):
    """The reference trap: passing the teacher as the student silences the generator's loss."""
    e = _engine(tmp_path)
    x, live, dead = adversarial_live_and_trap(e, "dfad")
    assert live.abs() > 1e-4 and dead.abs() < 1e-6
    with torch.no_grad():
        assert torch.allclose(live, -l1_logits(e.student(x), e.teacher(x)), atol=1e-5)


def test_student_samples_are_fresh_every_step(zoo, tmp_path):
    e = _engine(tmp_path)
    assert not torch.equal(e.synth.sample(16), e.synth.sample(16))


def test_student_l1_decreases_on_a_fixed_batch(zoo, tmp_path):
    # Adam, so that ten steps show it clearly (the L1 of a mean over classes has small SGD gradients)
    e = _engine(tmp_path, optim={"name": "adam", "lr": 0.01, "weight_decay": 0})
    torch.manual_seed(0)
    x = e.synth.sample(16)
    teacher, gen = snapshot(e.teacher), snapshot(e.synth.generator)
    seen = [e.trainer.step(x)["l1"] for _ in range(11)]  # each value is the loss before that step
    assert all(torch.isfinite(v) for v in seen) and seen[0] > 0
    assert seen[-1] < 0.95 * seen[0] and seen[-1] < min(seen[:-1])
    assert unchanged(e.teacher, teacher) and unchanged(e.synth.generator, gen)


def test_generator_learning_rate_follows_the_milestones(zoo, tmp_path):
    e = _engine(tmp_path, epochs=10, synth={"g_schedule": "multistep", "g_milestones": [4, 0.8]})
    rates = []
    for epoch in (0, 3, 4, 7, 8, 9):
        e.synth.on_epoch_start(epoch)
        rates.append(e.synth.optimizer.param_groups[0]["lr"] / e.synth.cfg.lr_g)
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_end_to_end_runs_and_resumes(zoo, tmp_path, monkeypatch):
    over = {"synth": SYNTH, "kd_steps": 5, "ep_steps": 10, "epochs": 2, "batch_size": 16}
    full, resumed = interrupted_then_resumed(lambda d: tiny("dfad", d, **over), tmp_path, monkeypatch)
    assert full["evaluations"] == 2 and full["images_seen"] == 2 * 10 * 16
    assert full["images_synthesized"] == (2 * 2 - 1) * 16  # no generator step before the first student steps
    assert resumed["images_synthesized"] == full["images_synthesized"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_student_runs_in_train_mode_in_the_generator_loss_as_the_reference(zoo, tmp_path, mode):
    """DFAD_cifar.py:19 sets student.train() for the whole iteration: the generator's loss sees the student's
    batch-statistics outputs and moves its BN running statistics (never its weights); eval freezes it."""
    from torch import nn

    from conftest import changed_params
    from datafree.registry import SYNTHESIZERS
    from datafree.synthesis.base import Context

    e = _engine(tmp_path)
    assert e.synth.cfg.student_mode == "train"
    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(e.spec.channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, e.spec.num_classes),
    ).eval()
    s = SYNTHESIZERS.build(
        "dfad", Context(e.teacher, student, e.spec, e.device, cfg=e.cfg), **{**e.cfg.synth, "student_mode": mode}
    )
    before = snapshot(student)
    x = s.generate(s.latent(16))
    loss, _ = s.generator_loss(x, None)
    loss.backward()
    assert not changed_params(student, before) and all(p.grad is None for p in student.parameters())
    assert unchanged(student, before) == (mode == "eval") and not student.training
