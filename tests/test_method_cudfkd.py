"""CuDFKD: the adversarial curriculum on the data side, self-paced per-sample KD on the student side."""

import copy
import math

import pytest
import torch

from conftest import changed_params, engine_for, interrupted_then_resumed, snapshot, tiny, unchanged
from datafree.config import RunConfig
from datafree.data import get_source
from datafree.distill.cudfkd import SelfPacedKD, self_paced_lambda, self_paced_weights
from datafree.models import create_model
from datafree.results import read_jsonl
from datafree.synthesis.base import Context
from datafree.synthesis.cudfkd import CuDFKD, curriculum_adv_weight
from datafree.synthesis.losses import kl_div

pytestmark = pytest.mark.filterwarnings("ignore:.*no BatchNorm layers")

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16}
# the digits/mnist section rescales the schedules to the run's length; most tests want the reference's form
REFERENCE_SCHEDULES = {"synth": {"adv_final": None}, "distill": {"lambda_final": None}}


def _engine(tmp_path, **over):
    over["synth"] = {**SYNTH, **REFERENCE_SCHEDULES["synth"], **over.get("synth", {})}
    over["distill"] = {**REFERENCE_SCHEDULES["distill"], **over.get("distill", {})}
    return engine_for("cudfkd", tmp_path / "r", **over)


# --------------------------------------------------------------------------- self-paced weights


def test_easy_samples_weigh_more_than_hard_ones_early():
    losses = torch.tensor([0.0, 0.1, 1.0, 3.0, 10.0])
    for lam in (1.0, 2.0):  # lambda0 of the reference's scripts, at iteration 0
        v = self_paced_weights(losses, lam)
        assert torch.allclose(v[0], torch.tensor(1.0))  # a sample with zero loss has weight 1
        assert (v[:-1] > v[1:]).all()  # strictly decreasing in the loss: easy before hard
        assert v[1] > 0.9 and v[-1] < 1e-3
        expected = (1 + math.exp(-lam)) / (1 + torch.exp(losses - lam))
        assert torch.allclose(v, expected)
    assert torch.isfinite(self_paced_weights(torch.tensor([1e4]), 2.0)).all()  # no overflow


def test_weights_follow_the_lambda_schedule(zoo, tmp_path):
    e = _engine(tmp_path, distill={"lambda0": 2.0, "alpha": 1e-4})
    d = e.distiller
    assert isinstance(d, SelfPacedKD)
    lams = []
    for step in (0, 1000, 10_000, 100_000):
        e.ctx.step = step
        lams.append(d.lam)
    assert lams == pytest.approx([2.0, 2.1, 3.0, 12.0])  # lambda0 + alpha * student iteration
    assert self_paced_lambda(2.0, 1e-4, 10_000, cap=1000) == pytest.approx(2.1)
    d.cfg.lambda_final = 12.0  # alpha derived from the run's length: lambda reaches 12 at the last step
    e.ctx.total_steps, e.ctx.step = 1000, 1000
    assert d.alpha == pytest.approx(0.01) and d.lam == pytest.approx(12.0)
    hard = torch.tensor([6.0])
    v = [float(self_paced_weights(hard, lam)) for lam in lams]
    assert v == sorted(v) and v[0] < 0.05 and v[-1] > 0.99  # hard samples' weights rise towards 1


# --------------------------------------------------------------------------- student objective


def test_per_sample_weighting_differs_from_the_reference_per_batch_weight(zoo, tmp_path):
    d = _engine(tmp_path).distiller
    assert d.cfg.per_sample is False  # cudfkd runs the reference's per-batch weight; cudfkd:fixed weighs samples
    d.cfg.per_sample = True
    mixed = torch.tensor([0.05, 0.2, 4.0, 9.0], requires_grad=True)
    loss, v = d.weighted(mixed, 2.0)
    assert v.std() > 0.3  # easy and hard samples weighted differently
    loss.backward()
    # v is a constant weight: d loss / d l_i = v_i / B (normalised by the batch size)
    assert torch.allclose(mixed.grad, v / 4)
    assert torch.allclose(loss, (v * mixed).mean())

    d.cfg.per_sample = False  # the reference: one v from the batch-mean loss
    batch_loss, vb = d.weighted(mixed.detach(), 2.0)
    assert torch.allclose(vb, vb[0].expand(4))
    assert torch.allclose(batch_loss, self_paced_weights(mixed.detach().mean(), 2.0) * mixed.detach().mean())
    assert not torch.allclose(batch_loss, loss.detach(), rtol=0.05)
    same = torch.full((4,), 1.5)  # with equal losses the two agree
    per_batch = d.weighted(same, 2.0)[0]
    d.cfg.per_sample = True
    assert torch.allclose(d.weighted(same, 2.0)[0], per_batch)

    d.cfg.normalize = "weights"
    wl, wv = d.weighted(mixed.detach(), 2.0)
    assert torch.allclose(wl, (wv * mixed.detach()).sum() / wv.sum())


def test_student_loss_uses_the_configured_temperature(zoo, tmp_path):
    e = _engine(tmp_path, distill={"T": 7.0, "lambda0": 1000.0})  # lambda huge: every v is 1
    d = e.distiller
    x = e.synth.sample(16)
    # with logits of spread << T, T^2 KL(T) is about half the variance of their difference at every T (a fresh clone
    # measured 0.277-0.286 from T = 1 to 20), and no temperature could be told from another: widen both nets' logits
    with torch.no_grad():
        for net in (e.student, e.teacher):
            last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.mul_(30.0)
            last.bias.mul_(30.0)
        loss, logs = d.loss(x, None)
        s, t = e.student(x), e.teacher(x)
    assert torch.allclose(loss, kl_div(s, t, T=7.0), rtol=1e-4)
    assert torch.allclose(logs["kd"], kl_div(s, t, T=7.0), rtol=1e-4)
    # and follow cfg.T through the temperatures whose values differ on this batch: a T-blind loss fails
    temps = [1.0, 2.0, 4.0, 7.0, 20.0]
    ref = {T: kl_div(s, t, T=T) for T in temps}
    apart = [T for T in temps[1:] if not torch.allclose(ref[T], ref[1.0], rtol=0.05)]
    assert apart, {T: float(v) for T, v in ref.items()}
    for T in [1.0] + apart:
        d.cfg.T = T
        with torch.no_grad():
            assert torch.allclose(d.loss(x, None)[0], ref[T], rtol=1e-4), T
    d.cfg.T = 7.0
    d.cfg.loss = "l1"
    with torch.no_grad():
        l1, _ = d.loss(x, None)
    assert torch.allclose(l1, (s - t).abs().mean(), rtol=1e-4)


def test_student_step_moves_only_the_student(zoo, tmp_path):
    e = _engine(tmp_path)
    teacher, student, gen = snapshot(e.teacher), snapshot(e.student), snapshot(e.synth.generator)
    x = e.synth.sample(16)
    logs = e.trainer.step(x)
    for k in ("loss", "kd", "v", "difficulty"):
        assert torch.isfinite(torch.as_tensor(logs[k])), k
    assert 0 < float(logs["v"]) <= 1 + math.exp(-2.0)
    assert changed_params(e.student, student)
    assert unchanged(e.teacher, teacher) and unchanged(e.synth.generator, gen)


# --------------------------------------------------------------------------- adversarial curriculum


def test_adversarial_weight_ramps_linearly_inside_the_middle_fraction():
    E, start, grad = 20, 0.0, 0.5
    w = [curriculum_adv_weight(e, E, start, grad, 0.25, 0.75) for e in range(E)]
    s, f = 5, 15  # floor(20 * 0.25), floor(20 * 0.75)
    assert all(v == 0.0 for v in w[: s + 2])  # zero before the ramp (the first increment lands after epoch s+1)
    inside = w[s + 1 : f + 1]
    assert all(b - a == pytest.approx(grad) for a, b in zip(inside, inside[1:]))  # linear, +grad per epoch
    assert all(v == pytest.approx(grad * (f - s - 1)) for v in w[f:])  # constant at the final value after
    # the reference's loop: adv += grad after each epoch e with s < e < f
    ref, adv = [], start
    for e in range(E):
        ref.append(adv)
        if s < e < f:
            adv += grad
    assert w == pytest.approx(ref)
    assert curriculum_adv_weight(3, 20, 0.5, 0.05, 0.25, 0.75) == 0.5  # a non-zero start (wrn scripts)


def test_adv_final_keeps_the_published_end_weight_on_a_shorter_run(zoo, tmp_path):
    e = _engine(tmp_path, epochs=40, synth={"adv": 0.0, "adv_final": 62.0})
    assert e.synth.adv_increment == pytest.approx(62.0 / 19)  # floor(30) - floor(10) - 1 ramp epochs
    e.ctx.epoch = 39
    assert e.synth.adv_weight == pytest.approx(62.0)
    e.ctx.epoch = 10
    assert e.synth.adv_weight == 0.0


def test_synthesizer_follows_the_curriculum(zoo, tmp_path, monkeypatch):
    e = _engine(tmp_path, epochs=8, synth={"adv": 0.0, "grad_adv": 0.5, "begin_fraction": 0.25, "end_fraction": 0.75})
    calls = []
    real = CuDFKD.student_logits
    monkeypatch.setattr(CuDFKD, "student_logits", lambda self, x: calls.append(1) or real(self, x))
    weights = []
    for epoch in range(8):
        e.ctx.epoch = epoch
        logs = e.synth.synthesize()
        weights.append(float(logs["adv_w"]))
        assert all(torch.isfinite(v) for v in logs.values())
    assert weights == pytest.approx([0, 0, 0, 0, 0.5, 1.0, 1.5, 1.5])  # s = 2, f = 6
    assert len(calls) == 4  # the student is run only when the adversarial weight is non-zero


# --------------------------------------------------------------------------- synthesis round and loss terms


def test_synthesis_round_moves_only_the_generator(zoo, tmp_path):
    e = _engine(tmp_path, synth={"adv": 1.0})
    teacher, student, gen = snapshot(e.teacher), snapshot(e.student), snapshot(e.synth.generator)
    student_mode = e.student.training
    logs = e.synth.synthesize()
    for k in ("ent", "oh", "adv", "bn", "loss_g"):
        assert torch.isfinite(logs[k]), k
    assert changed_params(e.synth.generator, gen)  # its parameters, not only its BatchNorm statistics
    assert unchanged(e.teacher, teacher) and unchanged(e.student, student)
    assert e.student.training == student_mode and all(p.requires_grad for p in e.student.parameters())
    assert e.synth.images_synthesized == 16


def _bn_context():
    """A context with a BatchNorm teacher (random) and a student that mostly agrees with it."""
    torch.manual_seed(0)
    spec = get_source("digits").spec
    teacher = create_model("resnet8", 10, 1, spec.size).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Context(teacher, student.train(), spec, "cpu", cfg=RunConfig(epochs=4))


@pytest.mark.parametrize("term", ["ent_w", "oh", "adv", "bn"])
def test_each_generator_term_moves_only_the_generator(term):
    ctx = _bn_context()
    weights = {"ent_w": 0.0, "oh": 0.0, "adv": 0.0, "bn": 0.0, "grad_adv": 0.0}
    weights[term] = -20.0 if term == "ent_w" else 1.0
    synth = CuDFKD(ctx, **dict(SYNTH, synthesis_batch_size=32, **weights))
    x = synth.generate(synth.latent(32))
    loss, logs = synth.generator_loss(x, None)
    name = {"ent_w": "ent", "oh": "oh", "adv": "adv", "bn": "bn"}[term]
    assert torch.isfinite(logs[name]) and float(logs[name].detach().abs()) > 0
    loss.backward()
    grads = [p.grad for p in synth.generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in ctx.teacher.parameters())
    assert all(p.grad is None for p in ctx.student.parameters())
    synth.close()


def test_generator_starts_from_the_dcgan_initialisation(zoo, tmp_path):
    g = _engine(tmp_path, synth={"ngf": 32, "nz": 64}).synth.generator
    w = g.project.weight
    assert abs(float(w.detach().std()) - 0.02) < 0.003 and float(g.project.bias.detach().abs().max()) == 0


# --------------------------------------------------------------------------- end to end


def test_engine_run_and_resume(zoo, tmp_path, monkeypatch):
    over = {
        "epochs": 3,
        "synth": dict(SYNTH, adv=0.0, grad_adv=0.5, adv_final=None),
        "distill": {"lambda_final": None},
    }  # the ramp (25-75 % of 3 epochs) opens in the last epoch
    full, resumed = interrupted_then_resumed(lambda d: tiny("cudfkd", d, **over), tmp_path, monkeypatch)
    assert resumed["last_acc"] == full["last_acc"] and full["evaluations"] == 3
    m = read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
    assert [r["synth"]["adv_w"] for r in m] == pytest.approx([0.0, 0.0, 0.5])
    assert m[-1]["distill"]["lambda"] > m[0]["distill"]["lambda"]  # lambda grows with the student steps


def test_fixed_preset_weighs_each_sample():
    from datafree.methods import resolve

    assert resolve({"method": "cudfkd", "dataset": "cifar10"}).distill["per_sample"] is False
    fixed = resolve({"method": "cudfkd:fixed", "dataset": "cifar100", "teacher": "resnet34", "student": "resnet18"})
    assert fixed.distill["per_sample"] is True and fixed.distill["loss"] == "l1"  # the pair's script otherwise
