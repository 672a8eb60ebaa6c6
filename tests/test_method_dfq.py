"""DFQ: the generator's terms, the adversarial term against a real student, the BN term on a BN teacher."""
import copy
import warnings

import pytest
import torch

from conftest import (
    assert_term_moves_only_the_generator, engine_for, grad_norm, interrupted_then_resumed, round_trains_only,
    snapshot, tiny, unchanged,
)
from datafree.data import get_source
from datafree.models import create_model
from datafree.registry import SYNTHESIZERS
from datafree.synthesis.base import Context

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16}


def _engine(tmp_path, **synth):
    return engine_for("dfq", tmp_path / "r", synth={**SYNTH, **synth})


def test_round_moves_the_generator_only_and_the_student_learns(zoo, tmp_path):
    e = _engine(tmp_path)
    teacher = snapshot(e.teacher)
    logs = round_trains_only(e, e.synth.generator)
    assert set(logs) >= {"adv", "bn", "oh", "balance", "loss_g"}
    x = e.synth.sample(16)
    assert x.shape == (16, *e.spec.shape)
    before = snapshot(e.student)
    e.distiller.step(x)
    assert not unchanged(e.student, before) and unchanged(e.teacher, teacher)


@pytest.mark.parametrize("term", ["adv", "oh", "balance"])
def test_each_term_alone_is_finite_and_moves_the_generator(zoo, tmp_path, term):
    weights = {"adv": 0.0, "oh": 0.0, "balance": 0.0, "bn": 0.0, term: 1.0}
    e = _engine(tmp_path, **weights)
    assert_term_moves_only_the_generator(e)


def test_adversarial_term_is_live_and_reaches_the_generator(zoo, tmp_path):
    e = _engine(tmp_path, oh=0.0, balance=0.0)
    x = e.synth.generate(e.synth.latent(16))
    _, logs = e.synth.generator_loss(x, None)
    assert logs["adv"] < 0  # -KL(T || S): the student differs from the teacher
    assert grad_norm(logs["adv"], e.synth.generator) > 0
    # the student passed to the synthesizer is the student (a reference trap passed the teacher): with the
    # teacher in the student's place the term vanishes
    e.synth.ctx.student = copy.deepcopy(e.teacher)
    _, logs = e.synth.generator_loss(e.synth.generate(e.synth.latent(16)), None)
    assert abs(float(logs["adv"].detach())) < 1e-6


def _bn_context(teacher_name):
    spec = get_source("digits").spec
    teacher = create_model(teacher_name, spec.num_classes, spec.channels, spec.size).eval().requires_grad_(False)
    student = create_model("lenet5_half", spec.num_classes, spec.channels, spec.size)
    return Context(teacher, student, spec, "cpu")


def test_bn_term_has_gradient_on_a_bn_teacher():
    torch.manual_seed(0)
    ctx = _bn_context("resnet8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synth = SYNTHESIZERS.build("dfq", ctx, **SYNTH, adv=0.0, oh=0.0, balance=0.0)
    assert not [w for w in caught if "BatchNorm" in str(w.message)]
    x = synth.generate(synth.latent(16))
    loss, logs = synth.generator_loss(x, None)
    assert logs["bn"] > 0 and torch.isfinite(logs["bn"])
    assert grad_norm(loss, synth.generator) > 0
    before = snapshot(synth.generator)
    synth.synthesize()
    assert not unchanged(synth.generator, before)
    assert synth.terms.bn is not None and not synth.terms.bn._handles  # hooks only while needed


def test_bn_term_warns_and_is_zero_without_bn():
    ctx = _bn_context("lenet5")
    with pytest.warns(UserWarning, match="BatchNorm"):
        synth = SYNTHESIZERS.build("dfq", ctx, **SYNTH)
    logs = synth.synthesize()
    assert float(logs["bn"]) == 0.0


def test_engine_runs_and_resumes(zoo, tmp_path, monkeypatch):
    cfg = lambda d: tiny("dfq", d, synth=SYNTH, kd_steps=1)  # noqa: E731
    full, resumed = interrupted_then_resumed(cfg, tmp_path, monkeypatch)
    assert resumed["images_synthesized"] == full["images_synthesized"] == 2 * 3 * 16
