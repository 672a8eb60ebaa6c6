"""PRE-DFKD: the adversarial generator, the VAE and its pseudo replay (no stored images)."""

import pytest
import torch
from torch import nn

from conftest import engine_for, interrupted_then_resumed, snapshot, tiny, unchanged
from datafree.synthesis import losses

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
    e.trainer.step(x)
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


def _eps(module):
    return [m.eps for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("method", ["predfkd", "predfkd:fixed"])
def test_plain_name_runs_the_released_vae_and_the_preset_the_fixed_one(zoo, tmp_path, monkeypatch, method):
    """predfkd: BatchNorm2d(C, 0.8) in the generator, the decoder and the encoder's first two BNs
    (networks/generator.py:17,22,64,69,104,109), the encoder's height-axis L2 normalisation (:129), log10 in
    latent tuning (distillation.py:25,110) and the tuning gradient in the VAE update; predfkd:fixed: none."""
    released = method == "predfkd"
    e = engine_for(method, tmp_path / "r", synth=SYNTH)
    s = e.synth
    eps = 0.8 if released else 1e-5
    assert _eps(s.generator) == _eps(s.vae.decoder) == [1e-5, eps, eps, 1e-5]
    assert _eps(s.vae.encoder) == [eps, eps, 1e-5]
    assert s.vae.encoder.l2norm == s.cfg.vae_tuning_grad == released
    assert (s.cfg.adv_kind, s.cfg.ie_log, s.cfg.student_mode) == (
        ("released", "10", "train") if released else ("js", "e", "eval")
    )
    seen = []
    real = losses.class_balance
    monkeypatch.setattr(losses, "class_balance", lambda t, **kw: seen.append(kw.get("log")) or real(t, **kw))
    s.infer_memory(4, train=False)
    assert seen == ["10" if released else "e"]


def test_encoder_input_is_l2_normalised_along_the_height_axis(zoo, tmp_path):
    """F.normalize(img, p=2, dim=2) on N x C x H x W (networks/generator.py:129): each column of each channel
    becomes a unit vector, so a column (3, 4, 0, ...) enters the first convolution as (0.6, 0.8, 0, ...)."""
    from datafree.synthesis.predfkd import ConvEncoder

    enc = ConvEncoder(1, 32, 8, width=4, bn_eps=0.8, l2norm=True).eval()
    seen = {}
    enc.body[0].register_forward_pre_hook(lambda m, inp: seen.update(x=inp[0].detach().clone()))
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 0, 5], x[0, 0, 1, 5] = 3.0, 4.0
    x[0, 0, :, 7] = 2.0  # 32 equal entries: 1 / sqrt(32) each
    enc(x)
    # exact in float32 up to one rounding of the norm: 5 and 2 * sqrt(32) are computed to < 1 ulp
    assert torch.allclose(seen["x"][0, 0, :3, 5], torch.tensor([0.6, 0.8, 0.0]), atol=1e-7, rtol=0)
    assert torch.allclose(seen["x"][0, 0, :, 7], torch.full((32,), 32**-0.5), atol=1e-7, rtol=0)
    # a positive scale per column (n, c, w) does not change what the encoder computes
    torch.manual_seed(0)
    y = torch.randn(2, 1, 32, 32)
    scale = torch.rand(2, 1, 1, 32) + 0.5
    mu_a, lv_a = enc(y)
    mu_b, lv_b = enc(y * scale)
    # float32: normalising y and y * scale differ by ~1 ulp per entry; through two convolutions and a linear
    # map of O(1) weights that stays below 1e-5
    assert torch.allclose(mu_a, mu_b, atol=1e-5, rtol=0) and torch.allclose(lv_a, lv_b, atol=1e-5, rtol=0)


def _vae_grads(s, seed, tuning_grad, state):
    s.generator.load_state_dict(state["generator"])
    s.vae.load_state_dict(state["vae"])
    s.cfg.vae_tuning_grad = tuning_grad
    real_step = s.vae_optimizer.step
    s.vae_optimizer.step = lambda *a, **k: None  # keep the gradients, change no weight
    try:
        torch.manual_seed(seed)
        s.vae_step()
    finally:
        s.vae_optimizer.step = real_step
    enc = [p.grad.clone() for p in s.vae.encoder.parameters()]
    dec = [p.grad.clone() for p in s.vae.decoder.parameters()]
    return enc, dec


def test_vae_update_carries_the_latent_tuning_gradient_as_the_released_code(zoo, tmp_path):
    """distillation.py:75 zeroes the VAE's gradients, :114 back-propagates the latent-tuning loss
    oh * CE + ie * sum p log10 p + |var z - 1|^2 + |mean z|^2 (also into the decoder), :143 the VAE loss,
    then both optimisers step: the decoder's update is the VAE gradient plus the tuning gradient at the
    memory codes' starting point; the encoder's is the VAE gradient alone."""
    from torch.nn import functional as F

    e = _engine(tmp_path, z_steps=1)
    s = e.synth
    s.synthesize()  # one round: the next VAE update infers memory samples
    state = {"generator": snapshot(s.generator), "vae": snapshot(s.vae)}
    enc_on, dec_on = _vae_grads(s, 5, True, state)
    enc_off, dec_off = _vae_grads(s, 5, False, state)
    for a, b in zip(enc_on, enc_off):
        assert torch.equal(a, b)
    # the tuning gradient, from its formula, at the same codes (drawn right after the novel batch's latents)
    s.generator.load_state_dict(state["generator"])
    s.vae.load_state_dict(state["vae"])
    c, decoder = s.cfg, s.vae.decoder
    torch.manual_seed(5)
    n = c.synthesis_batch_size
    s.latent(n)
    z = torch.randn(int(n * c.replay_ratio), c.nz)
    decoder.train()
    t = e.teacher(decoder(z))
    p = F.softmax(t, dim=1).mean(0)
    tune = (
        c.oh * F.cross_entropy(t, t.argmax(1))
        + c.ie * (p * torch.log10(p)).sum()
        + F.mse_loss(z.var(0), torch.ones(c.nz))
        + F.mse_loss(z.mean(0), torch.zeros(c.nz))
    )
    expected = torch.autograd.grad(tune, list(decoder.parameters()), allow_unused=True)
    expected = [torch.zeros_like(on) if g is None else g for on, g in zip(dec_on, expected)]
    # float32: each gradient element is a sum of terms on the scale of the decoder's gradients, summed in another
    # order here than in the run (and on/off add the VAE's gradient), so an element's error is a few ulps of that
    # scale, whatever its own size: a bias just before a train-mode BatchNorm has a true gradient of 0 and gets
    # pure rounding noise (measured up to 1.3e-6 against a scale of ~5). 64 ulps of the decoder-wide scale:
    ulp = torch.finfo(torch.float32).eps
    scale = max(float(t.abs().max()) for t in (*dec_on, *dec_off, *expected))
    tol = 1e-6 + 64 * ulp * scale
    moved = 0
    for on, off, g in zip(dec_on, dec_off, expected):
        err = float((on - off - g).abs().max())
        assert err <= tol, (tuple(on.shape), err, tol)
        moved += int(float(g.abs().max()) > 1000 * tol)  # a gradient far above the noise: the check has teeth
    assert moved > 0
