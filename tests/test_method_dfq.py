"""DFQ: the generator's terms, the adversarial term against a real student, the BN term on a BN teacher."""

import copy
import warnings

import pytest
import torch

from conftest import (
    assert_term_moves_only_the_generator,
    engine_for,
    grad_norm,
    interrupted_then_resumed,
    round_trains_only,
    snapshot,
    tiny,
    unchanged,
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
    e.trainer.step(x)
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


def test_plain_dfq_runs_the_cmi_criterion_at_t1_and_the_fixed_preset_the_scripts_t():
    """zju-vipa/CMI datafree_kd.py:259 replaces the criterion by KLDiv() (T = 1) for --method dfq, and :341/:384
    train the student with it: the CMI table's DFQ cells come from T = 1, whatever the script's --T."""
    from datafree.methods import resolve

    for ds, t, s, lr in (
        ("cifar10", "wrn40_2", "wrn16_1", 0.1),
        ("cifar10", "resnet34", "resnet18", 0.1),
        ("cifar100", "resnet34", "resnet18", 0.05),
        ("cifar100", "wrn40_2", "wrn16_2", 0.05),
    ):
        plain = resolve({"method": "dfq", "dataset": ds, "teacher": t, "student": s})
        assert plain.distill["T"] == 1 and plain.synth["adv_T"] == 1 and plain.synth["adv_masked"] is False
        assert plain.optim.lr == lr and plain.kd_steps == 10 and plain.batch_size == 256
        fixed = resolve({"method": "dfq:fixed", "dataset": ds, "teacher": t, "student": s})
        # --T 20 in dfq_cifar10_wrn402_wrn161.sh, --T 1 in dfq_cifar10_res34_res18.sh (a CIFAR-100 script)
        assert fixed.distill["T"] == (20 if ds == "cifar10" else 1) and fixed.synth["adv_T"] == 1
    assert (
        resolve({"method": "dfq", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"}).distill["T"] == 1
    )


# Fixed logits: batch 2, K = 3; student s, teacher t (the same as tests/test_method_zskt.py).
S_LOGITS = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
T_LOGITS = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])


class _Fixed(torch.nn.Module):
    """A network whose logits are a fixed (batch-2) tensor, whatever the input."""

    def __init__(self, logits, trainable=False):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone()) if trainable else logits.clone()

    def forward(self, x, return_features=False):
        out = self.logits + 0 * x.sum()  # keeps the graph to x
        return (out, None) if return_features else out


def _fixed_context():
    spec = get_source("digits").spec
    return Context(_Fixed(T_LOGITS).eval(), _Fixed(S_LOGITS, trainable=True), spec, "cpu")


def test_generator_loss_is_the_cmi_generative_form():
    """generative.py:61-72 with adv 1, oh 1, balance 20 (bn 0 here: the fixed teacher has no BN), criterion KLDiv():
    -KL(t||s) batchmean = -0.415348; CE(t, argmax t) = 0.395495; sum_k p_k ln p_k of the batch-mean softmax =
    -1.006199; total -0.415348 + 0.395495 + 20 x -1.006199 = -20.143839 (float64, from the formulas)."""
    synth = SYNTHESIZERS.build("dfq", _fixed_context(), **SYNTH, bn=0.0)
    x = torch.zeros(2, *synth.ctx.spec.shape, requires_grad=True)
    loss, logs = synth.generator_loss(x, None)
    # float32 softmax / log over 3 classes: a few ulps of each term (~1e-7); 20 x the balance term: ~2e-6
    assert logs["adv"].item() == pytest.approx(-0.415348, abs=1e-6)
    assert logs["oh"].item() == pytest.approx(0.395495, abs=1e-6)
    assert logs["balance"].item() == pytest.approx(-1.006199, abs=1e-6)
    assert loss.item() == pytest.approx(-20.143839, abs=1e-5)


@pytest.mark.parametrize("method, expected", [("dfq", 0.415348), ("dfq:fixed", 0.435605)])
def test_student_kd_is_the_cmi_criterion_at_the_configured_t(method, expected):
    """dfq: KLDiv() at T = 1, batchmean (criterions.py:4-7) = 0.415348; dfq:fixed: KLDiv(T=20) on the CIFAR-10
    script's --T 20 = 400 x KL(softmax(t/20) || softmax(s/20)) = 0.435605 (float64, from the formula)."""
    from datafree.methods import resolve
    from datafree.registry import DISTILLERS

    cfg = resolve({"method": method, "dataset": "cifar10", "teacher": "wrn40_2", "student": "wrn16_1"})
    d = DISTILLERS.build(cfg.distiller, _fixed_context(), **cfg.distill)
    loss, logs = d.loss(torch.zeros(2, 1, 1, 1), None)
    # float32: a few ulps of 0.4 at T = 1; at T = 20 each log-probability (~ -1.1) carries ~1.2e-7 of rounding and
    # the per-sample KL is their p-weighted difference, times T^2 = 400: up to ~1e-4
    assert loss.item() == pytest.approx(expected, abs=1e-6 if method == "dfq" else 1e-4)
