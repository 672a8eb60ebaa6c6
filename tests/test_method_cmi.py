"""CMI (Fang et al., IJCAI 2021): one round, each term's reach, the kept batches, the generator reset,
the contrastive head and memory bank, the masked adversarial term, and an end-to-end run that resumes."""

import pytest
import torch
from torch import nn

from conftest import assert_same_results, changed_params, engine_for, run_killed, snapshot, tiny, unchanged
from datafree.engine import run
from datafree.synthesis import losses
from datafree.synthesis.cmi import FeatureBank, dcgan_init

# the digits lenet5 teacher has no BatchNorm: the BN term is zero there, and the run says so
pytestmark = pytest.mark.filterwarnings("ignore:.*no BatchNorm layers")

SYNTH = {
    "synthesis_batch_size": 8,
    "ngf": 8,
    "nz": 16,
    "g_steps": 3,
    "bank_size": 20,
    "n_neg": 12,
    "head_dim": 16,
    "pool_dtype": "float32",
}


def _engine(tmp_path, **synth):
    return engine_for("cmi", tmp_path / "r", synth={**SYNTH, **synth})


class _Tempered(nn.Module):
    """A 'student' that predicts the teacher's class with a flatter distribution (the teacher is not a submodule)."""

    def __init__(self, teacher):
        super().__init__()
        self._teacher = [teacher]
        self.scale = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return self._teacher[0](x) * self.scale


def test_one_round_and_one_student_step(zoo, tmp_path):
    e = _engine(tmp_path)
    synth = e.synth
    teacher, student, head = snapshot(e.teacher), snapshot(e.student), snapshot(synth.head)
    logs = synth.synthesize()
    for k in ("bn", "oh", "adv", "cr", "loss_g", "best_loss"):
        assert torch.isfinite(torch.as_tensor(logs[k])).all(), k
    assert float(logs["cr"]) > 0
    assert unchanged(e.teacher, teacher) and unchanged(e.student, student)
    assert not unchanged(synth.head, head)
    assert not e.teacher.training and all(not p.requires_grad for p in e.teacher.parameters())
    assert len(synth.pool) == 8 and len(synth.bank) == 8 and synth.images_synthesized == 8
    x = synth.sample(16)
    assert x.shape == (16, *e.spec.shape)
    before = snapshot(e.student)
    e.trainer.step(x)
    assert changed_params(e.student, before)


@pytest.mark.parametrize("term", ["oh", "adv", "cr"])
def test_each_term_reaches_generator_and_z_only(zoo, tmp_path, term):
    """Each term alone: gradients reach the generator and z (and, for cr only, the head); never the models."""
    weights = {"bn": 0.0, "oh": 0.0, "adv": 0.0, "cr": 0.0, term: 1.0}
    e = _engine(tmp_path, **weights)
    synth = e.synth
    synth.bank.add(torch.randn(8, synth.bank.dim))  # so the bank half of the term is live
    if term == "adv":
        e.ctx.student = _Tempered(e.teacher)  # agrees everywhere, differs in distribution: the mask is all ones
    z = torch.randn(8, synth.cfg.nz, requires_grad=True)
    y = torch.randint(0, e.spec.num_classes, (8,))
    loss, logs, _ = synth.objective(synth.images(z), y)
    assert torch.isfinite(loss) and float(logs[term].detach()) != 0
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in synth.generator.parameters())
    head_grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in synth.head.parameters()]
    assert all(head_grads) if term == "cr" else not any(head_grads)
    assert all(p.grad is None for p in e.teacher.parameters())
    assert all(p.grad is None for p in e.ctx.student.parameters())


def test_kept_batch_is_the_best_step_and_never_changes(zoo, tmp_path):
    e = _engine(tmp_path, g_steps=4)
    synth = e.synth
    seen = []
    real = synth.objective

    def recording(x, y):
        loss, logs, feats = real(x, y)
        seen.append((x.detach().clone(), float(loss.detach()), feats.detach().clone()))
        return loss, logs, feats

    synth.objective = recording
    synth.synthesize()
    first = synth.pool.all()[0].clone()
    best = min(range(len(seen)), key=lambda i: seen[i][1])
    assert torch.allclose(first, seen[best][0], atol=1e-6)  # the lowest-loss step's images, not the last step's
    assert torch.allclose(synth.bank.data[:8], seen[best][2])  # and its features went to the bank
    synth.synthesize()
    synth.synthesize()
    assert torch.equal(synth.pool.all()[0][:8], first)
    assert len(synth.pool) == 24


def test_generator_is_reinitialised_every_round(zoo, tmp_path):
    e = _engine(tmp_path)
    synth = e.synth
    starts = []
    real = synth.reset_generator

    def recording():
        real()
        starts.append(snapshot(synth.generator))

    synth.reset_generator = recording
    synth.synthesize()
    end_of_first = snapshot(synth.generator)
    synth.synthesize()
    assert len(starts) == 2
    assert any(
        not torch.equal(starts[1][k], end_of_first[k]) for k in end_of_first if end_of_first[k].is_floating_point()
    )
    # a reset is a fresh DCGAN draw: the same as initialising a brand-new generator from the same random state
    torch.manual_seed(5)
    synth.reset_generator()
    reset = snapshot(synth.generator)
    fresh = type(synth.generator)(nz=16, ngf=8, img_size=e.spec.size, nc=e.spec.channels)
    torch.manual_seed(5)
    dcgan_init(fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, reset[k]), k
    assert float(reset["body.0.running_var"].mean()) == 1.0  # running statistics reset too


def test_contrastive_term_and_head(zoo, tmp_path):
    q, k = torch.randn(8, 16), torch.randn(8, 16)
    plain = losses.cross_view_info_nce(q, k, T=0.1)
    assert torch.isfinite(plain) and plain > 0
    assert losses.cross_view_info_nce(q, q, T=0.1) < plain  # matching views are easy positives
    with_bank = losses.cross_view_info_nce(torch.cat([q, q[:4]]), torch.cat([k, k[:4]]), T=0.1, n_current=8)
    logits = (
        torch.nn.functional.normalize(torch.cat([q, q[:4]]), dim=1)
        @ torch.nn.functional.normalize(torch.cat([k, k[:4]]), dim=1).t()
        / 0.1
    )
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(12), reduction="none")
    assert torch.allclose(with_bank, rows[:8].mean() + rows[8:].mean())

    e = _engine(tmp_path, bn=0.0, oh=0.0, adv=0.0)
    head = snapshot(e.synth.head)
    logs = e.synth.synthesize()
    assert torch.isfinite(logs["cr"]) and float(logs["cr"]) > 0
    assert not unchanged(e.synth.head, head)


def test_memory_bank_fills_and_never_exceeds_its_size(zoo, tmp_path):
    e = _engine(tmp_path, bank_size=20, n_neg=12)
    bank = e.synth.bank
    assert len(bank) == 0 and bank.sample(12).shape == (0, bank.dim)
    sizes = []
    for _ in range(4):
        e.synth.synthesize()
        sizes.append(len(bank))
        assert bank.data.shape[0] == 20
    assert sizes == [8, 16, 20, 20] and bank.total_added == 32
    s = bank.sample(12)
    assert s.shape == (12, bank.dim) and torch.isfinite(s).all()
    assert len({tuple(r.tolist()) for r in s}) == 12  # distinct rows
    small = FeatureBank(4, 3, "cpu")
    small.add(torch.arange(18.0).view(6, 3))
    assert len(small) == 4 and small.sample(10).shape == (4, 3)


def test_masked_adversarial_term(zoo, tmp_path):
    t = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    disagree = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])
    agree_flat = t * 0.2
    assert losses.adversarial(disagree, t, kind="kl", masked=True) == 0
    assert losses.adversarial(agree_flat, t, kind="kl", masked=True) < 0
    assert losses.adversarial(t, t, kind="kl", masked=True).abs() < 1e-6  # identical predictions: nothing to gain

    e = _engine(tmp_path, g_steps=1)
    e.ctx.student = _Tempered(e.teacher)
    assert float(e.synth.synthesize()["adv"]) < 0


def test_end_to_end_run_and_resume(zoo, tmp_path, monkeypatch):
    synth = dict(SYNTH)
    full = run(tiny("cmi", tmp_path / "full", synth=synth))  # 2 epochs
    assert full["evaluations"] == 2 and full["images_synthesized"] == 2 * 8
    run_killed(tiny("cmi", tmp_path / "cut", synth=synth), monkeypatch)  # right after epoch 1's checkpoint
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["synthesizer"]
    for key in ("pool", "bank", "head", "head_optimizer"):
        assert ckpt[key] is not None, key
    assert ckpt["bank"]["len"] == 8
    resumed = run(tiny("cmi", tmp_path / "cut", synth=synth), resume=True)
    assert resumed["images_synthesized"] == full["images_synthesized"]
    assert_same_results(tmp_path / "full", tmp_path / "cut")
    sa = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["synthesizer"]
    sb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["synthesizer"]
    assert all(torch.equal(sa["head"][k], sb["head"][k]) for k in sa["head"])  # the head resumed exactly
    assert torch.equal(sa["bank"]["data"], sb["bank"]["data"]) and torch.equal(
        sa["pool"]["images"], sb["pool"]["images"]
    )


@pytest.mark.parametrize("bug", [True, False])
def test_exactly_full_bank_keeps_first_steps_from_then_on_as_the_reference(zoo, tmp_path, monkeypatch, bug):
    """contrastive.py:154-166 samples range(ptr) once n_updates == max_size (ptr wrapped to 0): no negatives,
    loss_cr[N:].mean() is NaN (:324), the head turns NaN and every later round keeps its first step's batch.
    With bank 16 = 2 batches of 8, rounds 1-2 optimise; from round 3 on, `cmi` keeps step 1 (`cmi:fixed` never)."""
    from datafree.methods import resolve

    for pair in (("wrn40_2", "wrn16_1"), ("resnet34", "resnet18")):
        for ds in ("cifar10", "cifar100"):
            cell = {"dataset": ds, "teacher": pair[0], "student": pair[1]}
            assert resolve({"method": "cmi", **cell}).synth["bank_full_nan"] is True  # the compared cells
            assert resolve({"method": "cmi:fixed", **cell}).synth["bank_full_nan"] is False
            assert resolve({"method": "cmi:fixed", **cell}).synth["feature_layers"] == (
                "stages" if pair[0] == "resnet34" else "bn"
            )
    # anywhere else the bug would only waste rounds: off
    assert resolve({"method": "cmi", "dataset": "mnist"}).synth["bank_full_nan"] is False
    assert (
        resolve({"method": "cmi", "dataset": "cifar10", "teacher": "resnet20", "student": "resnet8"}).synth[
            "bank_full_nan"
        ]
        is False
    )
    e = _engine(tmp_path, bank_size=16, bank_full_nan=bug)
    calls = []
    original = type(e.synth).objective
    monkeypatch.setattr(type(e.synth), "objective", lambda self, x, y: calls.append(1) or original(self, x, y))
    per_round = []
    for _ in range(4):
        before = len(calls)
        logs = e.synth.synthesize()
        per_round.append((len(calls) - before, "head_nan" in logs))
    steps = SYNTH["g_steps"]
    if bug:
        assert per_round == [(steps, False), (steps, False), (1, True), (1, True)]
    else:
        assert per_round == [(steps, False)] * 4
    assert len(e.synth.pool) == 32 and len(e.synth.bank) == 16
