"""ZSKT: adversarial KL generator, KD + attention-transfer student (kd_at)."""
import copy
import math

import pytest
import torch

from conftest import (
    adversarial_live_and_trap, engine_for, interrupted_then_resumed, round_trains_only, snapshot, tiny, unchanged,
)
from datafree.distill.zskt import KDAttention, attention_loss, attention_map, pair_by_size
from datafree.models import create_model
from datafree.synthesis.base import Context
from datafree.synthesis.losses import kl_div

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16}


def _engine(tmp_path, synth=None, **over):
    return engine_for("zskt", tmp_path / "r", synth={**SYNTH, **(synth or {})}, kd_steps=3, **over)


def test_defaults_are_the_papers(zoo):
    from datafree.config import resolve

    cfg = resolve({"method": "zskt", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"})
    assert cfg.synthesizer == "zskt" and cfg.distiller == "kd_at"
    assert cfg.distill["beta"] == 250 and cfg.distill["T"] == 1 and cfg.kd_steps == 10
    assert cfg.optim.name == "adam" and cfg.optim.lr == 2e-3
    c10 = resolve({"method": "zskt", "dataset": "cifar10", "teacher": "wrn40_2", "student": "wrn16_1"})
    assert c10.batch_size == 128 and c10.synth["nz"] == 100 and c10.synth["output"] == "bn"
    assert c10.epochs * c10.ep_steps // c10.kd_steps == 80_000  # the paper's 80k pseudo batches


def test_synthesis_trains_the_generator_only(zoo, tmp_path):
    e = _engine(tmp_path)
    logs = round_trains_only(e, e.synth.generator)
    assert logs["adv"] < 0  # -KL(T || S): non-zero because the student is not the teacher
    assert all(p.grad is None for p in e.student.parameters())


def test_adversarial_term_is_zero_only_when_the_student_is_the_teacher(zoo, tmp_path):
    """The reference trap: passing the teacher as the student silences the generator's loss."""
    e = _engine(tmp_path)
    _, live, dead = adversarial_live_and_trap(e, "zskt")
    assert live.abs() > 1e-4 and dead.abs() < 1e-6


def test_student_steps_share_one_pseudo_batch_and_one_teacher_pass(zoo, tmp_path):
    e = _engine(tmp_path)
    calls = {"n": 0}
    e.teacher.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    e.synth.synthesize()
    x1, x2 = e.synth.sample(16), e.synth.sample(16)
    assert x1 is x2  # n_s student steps on the same images, as the reference's loader repeats its batch
    calls["n"] = 0
    for _ in range(3):
        e.distiller.step(e.synth.sample(16))
    assert calls["n"] == 1  # the teacher's logits and maps are reused for the repeated batch
    e.synth.synthesize()
    assert not torch.equal(e.synth.sample(16), x1)  # a new round, a new pseudo batch


def test_student_step_moves_the_student_only(zoo, tmp_path):
    e = _engine(tmp_path)
    e.synth.synthesize()
    x = e.synth.sample(16)
    teacher, gen, student = snapshot(e.teacher), snapshot(e.synth.generator), snapshot(e.student)
    logs = e.distiller.step(x)
    for k in ("kd", "at", "loss"):
        assert torch.isfinite(logs[k]), k
    assert logs["kd"] > 0 and logs["at"] > 0
    assert unchanged(e.teacher, teacher) and unchanged(e.synth.generator, gen)
    assert not unchanged(e.student, student)


def test_attention_term_is_zero_for_identical_maps_and_positive_otherwise():
    torch.manual_seed(0)
    a = torch.randn(4, 8, 6, 6)
    assert attention_loss(attention_map(a), attention_map(a)) == 0
    assert attention_loss(attention_map(3 * a), attention_map(a)) < 1e-12  # normalised maps: scale-free
    assert attention_loss(attention_map(torch.randn(4, 5, 6, 6)), attention_map(a)) > 0  # channels may differ
    m = attention_map(a)
    assert m.shape == (4, 6, 6) and torch.allclose(m, a.pow(2).mean(1))
    # the form of the reference: mean over batch and positions of the squared difference of unit vectors
    b = torch.randn(4, 8, 6, 6)
    u = torch.nn.functional.normalize(a.pow(2).mean(1).flatten(1), dim=1)
    v = torch.nn.functional.normalize(b.pow(2).mean(1).flatten(1), dim=1)
    assert torch.allclose(attention_loss(attention_map(a), attention_map(b)), ((u - v) ** 2).sum(1).mean() / 36)


def test_attention_term_is_zero_between_identical_networks(zoo, tmp_path):
    e = _engine(tmp_path)
    ctx = Context(e.teacher, copy.deepcopy(e.teacher).requires_grad_(True), e.spec, e.device, cfg=e.cfg)
    d = KDAttention(ctx, T=1.0, beta=250.0)
    x = torch.randn(8, *e.spec.shape)
    _, logs = d.loss(x, None)
    assert logs["at"] < 1e-10 and logs["kd"] < 1e-6
    assert len(d._pairs[1]) == 3  # LeNet on 8x8 digits: 4x4, 2x2 and 1x1 stages on both sides


def test_stages_are_paired_by_spatial_size():
    # VGG-11 blocks (32, 16, 8, 4, 4) against ResNet-18 layers (32, 16, 8, 4): the last block of each size
    assert pair_by_size([(32, 32), (16, 16), (8, 8), (4, 4), (4, 4)], [(32, 32), (16, 16), (8, 8), (4, 4)]) == [
        (0, 0), (1, 1), (2, 2), (4, 3)]
    assert pair_by_size([(8, 8), (4, 4)], [(16, 16), (8, 8), None]) == [(0, 1)]
    assert pair_by_size([(8, 8)], [(3, 3)]) == []


def test_vgg_teacher_resnet_student_pairs_four_stages():
    from datafree.data import get_source

    torch.manual_seed(0)
    spec = get_source("cifar10").spec
    teacher = create_model("vgg11", 10, 3, 32).eval().requires_grad_(False)
    student = create_model("resnet18", 10, 3, 32)
    d = KDAttention(Context(teacher, student, spec, "cpu"), beta=250.0)
    loss, logs = d.loss(torch.randn(2, 3, 32, 32), None)
    assert torch.isfinite(loss) and logs["at"] > 0
    assert d._pairs[1] == [(0, 0), (1, 1), (2, 2), (4, 3)]


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_temperature_is_the_configured_one(zoo, tmp_path, T):
    e = _engine(tmp_path)
    ctx = Context(e.teacher, e.student, e.spec, e.device, cfg=e.cfg)
    d = KDAttention(ctx, T=T, beta=0.0)
    x = torch.randn(8, *e.spec.shape)
    loss, logs = d.loss(x, None)
    with torch.no_grad():
        s, t = e.student(x), e.teacher(x)
    assert torch.allclose(loss, kl_div(s, t, T=T), atol=1e-6)
    other = 4.0 if T == 1.0 else 1.0
    assert not torch.allclose(loss, kl_div(s, t, T=other), atol=1e-6)
    mean = KDAttention(ctx, T=T, beta=0.0, kl_reduction="mean").loss(x, None)[0]
    assert torch.allclose(mean, loss / 10, atol=1e-7)  # the reference's F.kl_div(reduction='mean') scale


def test_student_gradients_are_clipped(zoo, tmp_path):
    e = _engine(tmp_path, distill={"clip_grad": 1e-3})
    e.synth.synthesize()
    e.distiller.step(e.synth.sample(16))
    norm = torch.norm(torch.stack([p.grad.norm() for p in e.student.parameters() if p.grad is not None]))
    assert norm <= 1e-3 * (1 + 1e-4)


def test_generator_learning_rate_is_cosine_annealed(zoo, tmp_path):
    e = _engine(tmp_path, epochs=4)
    lr = e.synth.cfg.lr_g
    e.synth.on_epoch_start(0)
    assert e.synth.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    e.synth.on_epoch_start(2)
    assert e.synth.optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 2)))


def test_end_to_end_runs_and_resumes(zoo, tmp_path, monkeypatch):
    over = {"synth": SYNTH, "kd_steps": 3, "ep_steps": 6, "epochs": 2}
    full, _ = interrupted_then_resumed(lambda d: tiny("zskt", d, **over), tmp_path, monkeypatch)
    assert full["evaluations"] == 2 and full["images_synthesized"] == 2 * 2 * 16
