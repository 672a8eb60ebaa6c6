"""MB-DFKD: the adversarial generator and the memory buffer replayed to the student."""
import pytest
import torch

from conftest import (
    assert_same_results, assert_term_moves_only_the_generator, engine_for, round_trains_only, run_killed, snapshot,
    tiny, unchanged,
)
from datafree.engine import run

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
    e.distiller.step(x)
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
