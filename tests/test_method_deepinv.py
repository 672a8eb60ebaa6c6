import torch

from conftest import changed_params, engine_for, round_trains_only, snapshot

SYNTH = {"iterations": 3, "synthesis_batch_size": 8, "pool_dtype": "float32"}


def _engine(tmp_path, **synth):
    return engine_for("deepinv", tmp_path / "r", synth={**SYNTH, **synth})


def test_best_batch_is_a_copy_not_a_view(zoo, tmp_path):
    """With one iteration the best batch is the starting noise, not the pixels after the step."""
    e = _engine(tmp_path, iterations=1, adv=0.0, tv=0.0, keep_best=True)
    torch.manual_seed(123)
    x0 = torch.randn(8, *e.spec.shape)  # the first draw synthesize() makes
    torch.manual_seed(123)
    e.synth.synthesize()
    kept = e.synth.pool.all()[0]
    expected = e.ctx.normalizer.denormalize(x0).clamp(0, 1)
    assert torch.allclose(kept, expected, atol=1e-6)


def test_kept_batches_do_not_change_when_synthesis_continues(zoo, tmp_path):
    e = _engine(tmp_path)
    e.synth.synthesize()
    first = e.synth.pool.all()[0].clone()
    e.synth.synthesize()
    e.synth.synthesize()
    assert torch.equal(e.synth.pool.all()[0][:8], first)
    assert len(e.synth.pool) == 24


def test_synthesis_moves_pixels_not_models(zoo, tmp_path):
    e = _engine(tmp_path, iterations=5)
    logs = round_trains_only(e)
    assert logs["adv"] != 0  # the student is the student, not the teacher: the JS term is live
    x = e.synth.sample(16)
    assert x.shape == (16, *e.spec.shape)
    before = snapshot(e.student)
    e.trainer.step(x)
    assert changed_params(e.student, before)


def test_plain_deepinv_keeps_the_last_iterate_as_the_reference_view_does(zoo, tmp_path):
    """deepinversion.py:83/:100 keep inputs.data, a view that the in-place Adam step and clip go on changing:
    the pool gets the final pixels. deepinv:fixed keeps the lowest-loss step (a copy)."""
    from datafree.methods import resolve

    assert resolve({"method": "deepinv", "dataset": "cifar10"}).synth["keep_best"] is False
    assert resolve({"method": "deepinv:fixed", "dataset": "cifar10"}).synth["keep_best"] is True
    e = _engine(tmp_path, iterations=1, adv=0.0, tv=0.0, keep_best=False)
    torch.manual_seed(123)
    x0 = torch.randn(8, *e.spec.shape)
    torch.manual_seed(123)
    e.synth.synthesize()
    kept = e.synth.pool.all()[0]
    start = e.ctx.normalizer.denormalize(x0).clamp(0, 1)
    # one Adam step at lr 0.1 moves every pixel by about lr (normalised units): the kept batch is not the start
    assert (kept - start).abs().mean() > 0.01


def test_flip_defaults_to_the_dataset_and_an_explicit_value_is_honoured(zoo, tmp_path, monkeypatch):
    """flip null: as the dataset's standard augmentation (digits: no flips); flip true flips on any dataset, as the
    reference's jitter_and_flip does (deepinversion.py:85): the parity budget's synth.flip=true was dropped before."""
    import datafree.synthesis.deepinv as di

    assert _engine(tmp_path / "a").synth.flip is False  # digits' augmentation does not flip
    forced = _engine(tmp_path / "b", flip=True)
    assert forced.synth.flip is True
    assert _engine(tmp_path / "c", flip=False).synth.flip is False
    monkeypatch.setattr(di.random, "randint", lambda a, b: 0)  # no roll
    monkeypatch.setattr(di.random, "random", lambda: 0.0)  # the flip branch
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    assert torch.equal(di.jitter_flip(x, 0.125, forced.synth.flip), torch.flip(x, dims=(3,)))
    assert torch.equal(di.jitter_flip(x, 0.125, False), x)
