"""ZSKT: adversarial KL generator, KD + attention-transfer student (kd_at)."""

import copy
import math

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
from datafree.distill.zskt import KDAttention, attention_loss, attention_map, pair_by_size
from datafree.models import create_model
from datafree.synthesis.base import Context
from datafree.synthesis.losses import kl_div

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16}


def _engine(tmp_path, synth=None, **over):
    return engine_for("zskt", tmp_path / "r", synth={**SYNTH, **(synth or {})}, kd_steps=3, **over)


def test_plain_zskt_runs_the_cmi_protocol_and_the_paper_preset_the_authors(zoo):
    """zskt: the CMI table's protocol (zju-vipa/CMI scripts/zskt/zskt_cifar10_wrn402_wrn161.sh via datafree_kd.py);
    zskt:paper: polo5/ZeroShotKnowledgeTransfer scripts/ZeroShot/main2.sh with solver.py's F.kl_div mean."""
    from datafree.methods import resolve

    for ds, t, s in (("cifar10", "wrn40_2", "wrn16_1"), ("cifar100", "resnet34", "resnet18")):
        c = resolve({"method": "zskt", "dataset": ds, "teacher": t, "student": s})
        assert (c.synthesizer, c.distiller, c.batch_size, c.kd_steps, c.ep_steps, c.epochs) == (
            "zskt",
            "kd_at",
            256,
            5,
            400,
            200,
        )
        assert (c.synth["generator"], c.synth["nz"], c.synth["output"], c.synth["conv_bias"]) == (
            "dcgan_large",
            256,
            "sigmoid",
            False,
        )
        assert c.synth["betas"] == [0.5, 0.999] and c.synth["synthesis_batch_size"] == 256
        assert (c.synth["sample_mode"], c.synth["reuse_batch"], c.synth["clip_grad"]) == ("eval", False, 0)
        assert (c.synth["T"], c.synth["kl_reduction"]) == (1, "batchmean")  # KLDiv(): T = 1, batchmean
        assert c.distill == {"T": 1, "beta": 0, "clip_grad": 0, "kl_reduction": "batchmean"}  # no AT, T = 1
        assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.schedule) == (
            "sgd",
            0.1,
            0.9,
            1e-4,
            "cosine",
        )
        p = resolve({"method": "zskt:paper", "dataset": ds, "teacher": t, "student": s})
        assert (p.batch_size, p.kd_steps, p.synth["nz"], p.synth["output"], p.synth["generator"]) == (
            128,
            10,
            100,
            "bn",
            "dcgan",
        )
        assert p.epochs * p.ep_steps // p.kd_steps == 80_000  # --total_n_pseudo_batches 8e4
        assert (p.synth["kl_reduction"], p.synth["clip_grad"], p.synth["reuse_batch"]) == ("mean", 5, True)
        assert p.distill == {"T": 1, "beta": 250, "clip_grad": 5, "kl_reduction": "mean"}
        assert (p.optim.name, p.optim.lr, p.optim.weight_decay) == ("adam", 2e-3, 0)
    # MNIST: no compared number; both run the authors' protocol, shorter
    for m in ("zskt", "zskt:paper"):
        cfg = resolve({"method": m, "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"})
        assert cfg.distill == {"T": 1, "beta": 250, "clip_grad": 5, "kl_reduction": "mean"} and cfg.kd_steps == 10
        assert cfg.synth["kl_reduction"] == "mean" and cfg.synth["reuse_batch"] is True
        assert cfg.optim.name == "adam" and cfg.optim.lr == 2e-3 and cfg.batch_size == 128


# Fixed logits for the loss-form tests: batch 2, K = 3 classes; student s, teacher t.
S_LOGITS = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
T_LOGITS = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
# KL(softmax(t) || softmax(s)) per sample (float64, from the formula): 0.742033, 0.088663.
#   batch mean (CMI criterions.py:4-7 kldiv, reduction 'batchmean'):          0.415348
#   F.kl_div's default 'mean' over the 2 x 3 elements (polo5 solver.py:218):   0.138449 (= 0.415348 / 3)
KL_BATCHMEAN, KL_ELEMENT_MEAN = 0.415348, 0.138449
# One stage of shape (2, 2, 2, 2) whose channel-mean squares are the maps (1, 2, 2, 1) (student) and (2, 0, 0, 2)
# (teacher) for both samples: unit vectors (1, 2, 2, 1)/sqrt(10) and (1, 0, 0, 1)/sqrt(2); polo5's attention_diff
# (solver.py:200-214), the mean over the 4 positions of the squared difference: (2 - 2 * 2/sqrt(5)) / 4 = 0.276393.
S_ACT = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]).expand(2, 2, 2, 2)
T_ACT = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]).expand(2, 2, 2, 2)
AT_VALUE = (1 - 1 / math.sqrt(5)) / 2  # 0.2763932


class _Fixed(torch.nn.Module):
    """A network whose logits and single stage's activation are fixed tensors, whatever the (batch-2) input."""

    def __init__(self, logits, act, trainable=False):
        super().__init__()
        self.stage = torch.nn.Identity()
        make = torch.nn.Parameter if trainable else (lambda v: v)
        self.logits, self.act = make(logits.clone()), make(act.clone())

    def stages(self):
        return [self.stage]

    def forward(self, x, return_features=False):
        zero = 0 * x.sum()  # keeps the graph to x, as a real network's output has
        self.stage(self.act + zero)
        out = self.logits + zero
        return (out, None) if return_features else out


def _fixed_context():
    from datafree.data import get_source

    spec = get_source("digits").spec
    return Context(_Fixed(T_LOGITS, T_ACT).eval(), _Fixed(S_LOGITS, S_ACT, trainable=True), spec, "cpu")


@pytest.mark.parametrize("reduction, expected", [("batchmean", KL_BATCHMEAN), ("mean", KL_ELEMENT_MEAN)])
def test_generator_loss_is_minus_the_reference_kl(reduction, expected):
    """zskt (CMI generative.py:67, -KLDiv()(s, t)): -0.415348; zskt:paper (polo5 solver.py:223-228, -F.kl_div
    mean): -0.138449."""
    from datafree.registry import SYNTHESIZERS

    ctx = _fixed_context()
    synth = SYNTHESIZERS.build("zskt", ctx, **SYNTH, kl_reduction=reduction)
    x = torch.zeros(2, *ctx.spec.shape, requires_grad=True)
    loss, logs = synth.generator_loss(x, None)
    # float32 softmax / log over 3 classes: a few ulps of 0.4 (~1e-7); 1e-6 covers the 6-digit literals
    assert loss.item() == pytest.approx(-expected, abs=1e-6) and logs["adv"].item() == pytest.approx(
        -expected, abs=1e-6
    )


@pytest.mark.parametrize(
    "beta, reduction, expected",
    [
        (0.0, "batchmean", KL_BATCHMEAN),  # zskt: the CMI criterion KLDiv() (T = 1, batchmean), no attention term
        (250.0, "mean", 69.236750),  # zskt:paper, solver.py:231-243: 0.138449 + 250 x 0.2763932
        (250.0, "batchmean", 69.513649),  # the paper's equation with beta 250: 0.415348 + 250 x 0.2763932
    ],
)
def test_student_loss_is_the_reference_form(beta, reduction, expected):
    d = KDAttention(_fixed_context(), T=1.0, beta=beta, clip_grad=0.0, kl_reduction=reduction)
    x = torch.zeros(2, 1, 1, 1)
    loss, logs = d.loss(x, None)
    kd = KL_BATCHMEAN if reduction == "batchmean" else KL_ELEMENT_MEAN
    assert logs["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert logs["at"].item() == pytest.approx(AT_VALUE if beta else 0.0, abs=1e-6)
    # 250 x a float32 attention term (a few ulps of 0.28, ~3e-8 each, so ~3e-5) and one ulp of 69 (7.6e-6): 5e-5
    assert loss.item() == pytest.approx(expected, abs=5e-5 if beta else 1e-6)


def test_cmi_protocol_draws_fresh_samples_with_the_generator_in_eval_mode(zoo, tmp_path):
    e = _engine(tmp_path, synth={"reuse_batch": False, "sample_mode": "eval"})
    e.synth.synthesize()
    modes = []
    e.synth.generator.register_forward_hook(lambda m, i, o: modes.append(m.training))
    x1, x2 = e.synth.sample(16), e.synth.sample(16)
    assert not torch.equal(x1, x2) and modes == [False, False]  # generative.py:79-80: eval(), fresh z each batch
    assert e.synth.generator.training  # back to train mode for the next generator step (generative.py:54)


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
        e.trainer.step(e.synth.sample(16))
    assert calls["n"] == 1  # the teacher's logits and maps are reused for the repeated batch
    e.synth.synthesize()
    assert not torch.equal(e.synth.sample(16), x1)  # a new round, a new pseudo batch


def test_student_step_moves_the_student_only(zoo, tmp_path):
    e = _engine(tmp_path)
    e.synth.synthesize()
    x = e.synth.sample(16)
    teacher, gen, student = snapshot(e.teacher), snapshot(e.synth.generator), snapshot(e.student)
    logs = e.trainer.step(x)
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
        (0, 0),
        (1, 1),
        (2, 2),
        (4, 3),
    ]
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
    e.trainer.step(e.synth.sample(16))
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


def test_the_cmi_protocol_runs_end_to_end(zoo, tmp_path):
    """The plain zskt's CIFAR values (LargeGenerator without conv bias, eval-mode fresh samples, no AT, no
    clipping, SGD), shrunk and on digits: each round is one generator step and kd_steps fresh student batches."""
    from datafree.engine import run
    from datafree.methods import method_entry

    top = method_entry("zskt")
    assert top["synth"]["generator"] == "dcgan_large" and top["distill"]["beta"] == 0
    cfg = tiny(
        "zskt",
        tmp_path / "r",
        synth={**top["synth"], **SYNTH},
        distill=top["distill"],
        optim=top["optim"],
        kd_steps=5,
        ep_steps=10,
        epochs=1,
    )
    summary = run(cfg)
    assert summary["evaluations"] == 1 and summary["images_synthesized"] == 2 * 16  # 10 // 5 rounds x 16
    assert summary["images_seen"] == 10 * 16
