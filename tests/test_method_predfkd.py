"""PRE-DFKD: the adversarial generator, the VAE and its pseudo replay (no stored images)."""
import pytest
import torch

from conftest import engine_for, interrupted_then_resumed, snapshot, tiny, unchanged

SYNTH = {"synthesis_batch_size": 16, "ngf": 8, "nz": 16, "vae_width": 8}


def _engine(tmp_path, **synth):
    return engine_for("predfkd", tmp_path / "r", synth={**SYNTH, **synth})


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_round_trains_generator_and_vae_only_and_the_student_learns(zoo, tmp_path):
    e = _engine(tmp_path)
    assert e.cfg.distiller == "l1"
    s = e.synth
    teacher, student = snapshot(e.teacher), snapshot(e.student)
    gen, vae = snapshot(s.generator), snapshot(s.vae)
    x = s.sample(16)
    assert x.shape == (16, *e.spec.shape) and s.last_mix == (16, 0)  # an untrained VAE is not replayed
    logs = s.synthesize()
    assert set(logs) >= {"oh", "ie", "act", "adv", "loss_g", "vae", "vae_rec", "vae_out", "vae_kld"}
    for k, v in logs.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), k
    assert unchanged(e.teacher, teacher) and unchanged(e.student, student)
    assert not unchanged(s.generator, gen) and not unchanged(s.vae, vae)
    vae = snapshot(s.vae)
    x = s.sample(16)
    assert x.shape == (18, *e.spec.shape) and s.last_mix == (16, 2)
    assert unchanged(s.vae, vae) and unchanged(e.student, student)  # sampling trains nothing
    e.distiller.step(x)
    assert not unchanged(e.student, student) and unchanged(e.teacher, teacher)


@pytest.mark.parametrize("term", ["rec", "rec_out", "kld"])
def test_each_vae_term_is_finite_and_reaches_the_vae_only(zoo, tmp_path, term):
    e = _engine(tmp_path, **{"rec": 0.0, "rec_out": 0.0, "kld": 0.0, term: 1.0})
    s = e.synth
    with torch.no_grad():
        x = s.generate(s.latent(16))
    loss, _ = s.vae_loss(x)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.vae.encoder.parameters())
    if term != "kld":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.vae.decoder.parameters())
    for m in (s.generator, e.student, e.teacher):
        assert all(p.grad is None for p in m.parameters())


def test_vae_reconstruction_improves_on_a_fixed_batch(zoo, tmp_path):
    torch.manual_seed(0)
    e = _engine(tmp_path, vae_lr=2e-3)
    s = e.synth
    with torch.no_grad():
        x = s.generate(s.latent(32))
    s.vae.train()
    recs = []
    for _ in range(40):
        loss, logs = s.vae_loss(x)
        s.vae_optimizer.zero_grad()
        loss.backward()
        s.vae_optimizer.step()
        recs.append(float(logs["vae_rec"]))
    assert sum(recs[-5:]) / 5 < 0.8 * sum(recs[:5]) / 5


def test_student_batches_hold_pseudo_replayed_samples(zoo, tmp_path, monkeypatch):
    e = _engine(tmp_path)
    s = e.synth
    s.synthesize()
    decoder = s.vae.decoder
    real_forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda z: real_forward(z) * 0 + 5.0)  # mark the decoder's images
    x = s.sample(16)
    assert s.last_mix == (16, 2)
    assert torch.all(x[16:] == 5.0)  # the last rows come from the VAE's decoder ...
    assert not torch.any((x[:16] == 5.0).flatten(1).all(1))  # ... the first ones from the generator


def test_latent_tuning_moves_the_codes_and_not_the_decoder(zoo, tmp_path):
    e = _engine(tmp_path, z_steps=3)
    s = e.synth
    s.synthesize()
    s.vae_optimizer.zero_grad(set_to_none=True)
    vae = snapshot(s.vae)
    torch.manual_seed(1)
    tuned = s.infer_memory(4, train=False)
    s.cfg.z_steps = 0
    torch.manual_seed(1)
    plain = s.infer_memory(4, train=False)
    assert not torch.allclose(tuned, plain) and unchanged(s.vae, vae)
    assert all(p.grad is None for p in s.vae.parameters())


def test_no_images_are_stored(zoo, tmp_path):
    e = _engine(tmp_path)
    s = e.synth
    for _ in range(3):
        s.synthesize()
        s.sample(16)
    image = tuple(e.spec.shape)
    state = s.state_dict()
    held = list(_tensors(state)) + [v for v in vars(s).values() if torch.is_tensor(v)]
    for t in held:
        assert not (t.dim() >= 3 and tuple(t.shape[-3:]) == image), tuple(t.shape)
    assert set(state) >= {"generator", "optimizer", "vae", "vae_optimizer"}
    assert state["extra"] == {"vae_rounds": 3}


def test_engine_runs_and_resumes(zoo, tmp_path, monkeypatch):
    synth = {**SYNTH, "vae_steps": 1}
    cfg = lambda d: tiny("predfkd", d, synth=synth, kd_steps=3)  # noqa: E731  one round per epoch
    full, resumed = interrupted_then_resumed(cfg, tmp_path, monkeypatch)
    assert full["images_seen"] == resumed["images_seen"] == 2 * 3 * 18  # 16 novel + 2 replayed per step
