"""HiDFD (Tang et al., AAAI 2025): the GAN's loss terms and what each one trains, the class weights of the
frequency smoothing, ADC-GAN's 2K-way classifier, the synthetic set and data inflation, classifier-sharing
feature alignment, the deployed student, and end-to-end runs that train the GAN in warm-up and resume."""

import json
import math

import torch
from torch.nn import functional as F

from conftest import assert_same_results, changed_params, engine_for, run_killed, snapshot, tiny, unchanged
from datafree.distill.feature_align import load_deployed
from datafree.engine import Engine, run
from datafree.synthesis import losses
from datafree.synthesis.hidfd import FrequencySmoother

SYNTH = {
    "g_ch": 2,
    "d_ch": 2,
    "feature_hidden": 16,
    "gan_batch_size": 8,
    "gan_steps": 4,
    "pool_size": 40,
    "synthetic_size": 24,
    "repeat": 2,
    "rho": 0.05,
}


def _engine(tmp_path, name="r", **synth):
    return engine_for("hidfd", tmp_path / name, synth={**SYNTH, **synth}, warmup=1, epochs=2, ep_steps=None)


def _grads(module):
    return {k: (None if p.grad is None else p.grad.detach().clone()) for k, p in module.named_parameters()}


def test_feature_integration_trains_the_discriminator_and_its_head(zoo, tmp_path):
    with_fi, without = _engine(tmp_path, "a"), _engine(tmp_path, "b")
    without.synth.cfg.feat = 0.0
    grads = []
    for e in (with_fi, without):
        g_before, t_before = snapshot(e.synth.generator), snapshot(e.teacher)
        torch.manual_seed(1)
        logs = e.synth.discriminator_step()
        assert all(torch.isfinite(v) for v in logs.values())
        grads.append(_grads(e.synth.discriminator))
        assert not changed_params(e.synth.generator, g_before)  # fakes detached (spectral-norm buffers do move)
        assert all(p.grad is None for p in e.synth.generator.parameters())
        assert unchanged(e.teacher, t_before)
    a, b = grads
    head = [k for k in a if k.startswith("feature_head")]
    assert head and all(a[k] is not None and a[k].abs().sum() > 0 for k in head)  # the head learns
    assert all(b[k] is None or b[k].abs().sum() == 0 for k in head)  # ... only from this term
    body = [k for k in a if k.startswith("blocks")]
    assert any(not torch.allclose(a[k], b[k]) for k in body)  # and its gradient reaches D's body


def test_frequency_smoothing_trains_the_generator_only(zoo, tmp_path):
    with_fs, without = _engine(tmp_path, "a"), _engine(tmp_path, "b")
    without.synth.cfg.freq = 0.0
    grads = []
    for e in (with_fs, without):
        d_before = snapshot(e.synth.discriminator)
        torch.manual_seed(2)
        logs = e.synth.generator_step()
        assert all(torch.isfinite(v) for v in logs.values())
        grads.append(_grads(e.synth.generator))
        assert not changed_params(e.synth.discriminator, d_before)  # its parameters (spectral-norm buffers move)
        assert all(p.requires_grad for p in e.synth.discriminator.parameters())  # toggled back
    a, b = grads
    assert any(not torch.allclose(a[k], b[k]) for k in a)
    assert with_fs.synth.smoother.pending.sum() == SYNTH["gan_batch_size"]  # teacher classes were counted


def test_synthesis_never_changes_the_student_or_the_teacher(zoo, tmp_path):
    e = _engine(tmp_path)
    s_before, t_before = snapshot(e.student), snapshot(e.teacher)
    logs = e.synth.synthesize()
    for k in ("loss_d", "loss_g", "d_adv", "d_adc", "d_feat", "g_adv", "g_adc", "g_freq"):
        assert torch.isfinite(logs[k]), k
    assert e.synth.gan_steps_done == 4 and e.synth.mix is None  # warm-up: GAN only
    assert unchanged(e.student, s_before) and unchanged(e.teacher, t_before)


def test_class_weights_favour_rarely_generated_classes():
    sm = FrequencySmoother(4, beta=0.99, init=50, decay=0.5)
    assert torch.allclose(sm.weights, torch.ones(4))
    logits = torch.zeros(300, 4)
    logits[:270, 0] = 5.0  # 270 images of class 0, 10 of each other class
    logits[270:280, 1] = logits[280:290, 2] = logits[290:, 3] = 5.0
    sm.observe(logits)
    sm.update()
    assert torch.allclose(sm.counts_ema, torch.tensor([160.0, 30.0, 30.0, 30.0]))  # 0.5 * 50 + 0.5 * n
    assert sm.weights[0] < sm.weights[1] and torch.allclose(sm.weights[1:], sm.weights[1].expand(3))
    assert torch.isclose(sm.weights.sum(), torch.tensor(4.0))
    beta = 0.99
    w = (1 - beta) / (1 - beta ** torch.tensor([160.0, 30.0, 30.0, 30.0], dtype=torch.float64))
    assert torch.allclose(sm.weights.double(), w / w.sum() * 4, atol=1e-6)
    sm.update()  # nothing generated since: counts decay, floored at 1
    assert torch.allclose(sm.counts_ema, torch.tensor([80.0, 15.0, 15.0, 15.0]))
    sm.counts_ema.fill_(0.2)
    sm.update()
    assert (sm.counts_ema == 1).all()


def test_class_weights_are_updated_during_gan_training(zoo, tmp_path):
    e = _engine(tmp_path, freq_update_every=1)
    e.synth.synthesize()
    sm = e.synth.smoother
    assert not torch.allclose(sm.counts_ema, torch.full_like(sm.counts_ema, 50.0))  # the released code never moved
    assert sm.pending.sum() == 0


def test_adc_classifier_has_2k_outputs_and_the_papers_losses(zoo, tmp_path):
    e = _engine(tmp_path)
    k = e.spec.num_classes
    out, aux, head = e.synth.discriminator(torch.randn(5, *e.spec.shape))
    assert out.shape == (5,) and aux.shape == (5, 2 * k) and head.shape == (5, e.synth.feature_dim)
    torch.manual_seed(0)
    a_r, a_f = torch.randn(6, 2 * k), torch.randn(6, 2 * k)
    y_r, y_f = torch.randint(0, k, (6,)), torch.randint(0, k, (6,))
    d = losses.adc_discriminator(a_r, y_r, a_f, y_f)
    assert torch.isclose(d, F.cross_entropy(a_r, 2 * y_r) + F.cross_entropy(a_f, 2 * y_f + 1))
    g = losses.adc_generator(a_f, y_f)
    assert torch.isclose(g, F.cross_entropy(a_f, 2 * y_f) - F.cross_entropy(a_f, 2 * y_f + 1))
    assert torch.isclose(
        losses.hinge_discriminator(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])), torch.tensor(0.5 + 0.75)
    )


def test_feature_integration_is_the_four_distances():
    t_r, t_f, h_r, h_f = (torch.randn(3, 5) for _ in range(4))
    d = lambda a, b: (a - b).norm(dim=1).mean()  # noqa: E731
    expected = d(t_r, h_r) + d(t_r, h_f) + d(t_f, h_f) + d(t_f, h_r)
    assert torch.isclose(losses.feature_integration(t_r, t_f, h_r, h_f), expected)


def test_synthetic_set_and_inflation_of_dc(zoo, tmp_path):
    e = _engine(tmp_path, gan_steps=1, pool_size=40, synthetic_size=20)
    syn = e.synth.build_synthetic()
    assert syn.images.shape == (20, *e.spec.shape) and syn.images.dtype == torch.uint8
    assert syn.labels.min() >= 0 and syn.labels.max() < e.spec.num_classes
    assert e.synth.epoch_length == 2 * len(e.synth.collected) + 20
    e.synth.synthesize()  # finishes the GAN; the set is built only after warm-up
    assert e.synth.mix is None
    e.ctx.epoch = 1
    e.synth.synthesize()
    mix = e.synth.mix
    assert len(mix) == e.synth.epoch_length and mix.n_synthetic == 20
    _, _, is_real = mix.sample(len(mix))
    assert int(is_real.sum()) == 2 * len(e.synth.collected)
    x, y = e.synth.sample(16)
    assert x.shape == (16, *e.spec.shape) and y.shape == (16,)


def test_predictions_use_the_teachers_classifier(zoo, tmp_path):
    e = _engine(tmp_path)
    d = e.distiller
    x = torch.randn(6, *e.spec.shape)
    d.eval()
    pred = d.predict(x)
    t = e.teacher
    manual = t.head(t.pool(d.projector(e.student.forward_features(x))))
    assert torch.allclose(pred, manual, atol=1e-5)
    with torch.no_grad():
        t.head[-1].weight.mul_(-1.0)  # change only the teacher's classifier
    assert not torch.allclose(d.predict(x), pred)


def test_feature_alignment_step_trains_student_and_projector(zoo, tmp_path):
    e = _engine(tmp_path)
    d = e.distiller
    s_before, p_before, t_before = snapshot(e.student), snapshot(d.projector), snapshot(e.teacher)
    logs = e.trainer.step(torch.randn(8, *e.spec.shape), None)  # labels unused
    assert torch.isfinite(logs["align"]) and set(logs) == {"align", "loss"}
    assert changed_params(e.student, s_before) and changed_params(d.projector, p_before)
    assert unchanged(e.teacher, t_before)
    assert "projector" in d.extra_modules()


def test_end_to_end_gan_warmup_then_student_and_the_deployed_model(zoo, tmp_path):
    s = run(tiny("hidfd", tmp_path / "r", synth=SYNTH, warmup=1, epochs=2, ep_steps=None))
    d = tmp_path / "r"
    assert s["evaluations"] == 1 and s["gan_steps"] == 4 and s["synthetic_images"] == 24
    assert 0 <= s["synthetic_label_agreement"] <= 1
    assert s["uses_real_data"].startswith("digits train, 72 images") and "teacher labels" in s["uses_real_data"]
    n_real = s["real_images"]
    assert s["images_seen"] == math.ceil((2 * n_real + 24) / 16) * 16  # one pass over Dc x 2 + synthetic
    rec = json.loads((d / "collected.json").read_text())
    assert len(rec["indices"]) == n_real == len(rec["teacher_labels"])
    ckpt = torch.load(d / "student.pt", weights_only=True)
    assert "projector" in ckpt["extra_modules"] and "shared_head" in ckpt and ckpt["feature_align"]["teacher_arch"]
    deployed = load_deployed(str(d / "student.pt"))
    e = Engine(tiny("hidfd", d, synth=SYNTH, warmup=1, epochs=2, ep_steps=None), resume=True)
    e.setup()
    x = torch.randn(5, *e.spec.shape)
    e.distiller.eval()
    assert torch.allclose(deployed(x), e.distiller.predict(x), atol=1e-5)


def test_resume_in_the_middle_of_gan_training(zoo, tmp_path, monkeypatch):
    synth = dict(SYNTH, gan_steps=6)  # 3 GAN steps in each of the 2 warm-up epochs
    cfg = lambda name: tiny("hidfd", tmp_path / name, synth=synth, warmup=2, epochs=3, ep_steps=None)  # noqa: E731
    full = run(cfg("full"))
    run_killed(cfg("cut"), monkeypatch)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["synthesizer"]["extra"]["gan_steps_done"] == 3  # killed half-way through the GAN
    resumed = run(cfg("cut"), resume=True)
    assert_same_results(tmp_path / "full", tmp_path / "cut")
    a = torch.load(tmp_path / "full" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "student.pt", weights_only=True)
    for k in a["extra_modules"]["projector"]:
        assert torch.equal(a["extra_modules"]["projector"][k], b["extra_modules"]["projector"][k]), k
    assert resumed["last_acc"] == full["last_acc"] and resumed["gan_steps"] == 6
    assert resumed["images_synthesized"] == full["images_synthesized"]


def test_released_preset_and_mnist_section_resolve():
    from datafree.methods import resolve

    cfg = resolve({"method": "hidfd:released", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"})
    assert cfg.synth["lr_g"] == cfg.synth["lr_d"] == 2e-4 and cfg.synth["gan_epochs"] == 400
    # generate_images (utils.py:1292-1326): the non-EMA G in eval mode, per-image min-max; the student's inputs
    # normalised with ImageNet32's statistics (imagenet32_mix.py:52-53)
    assert not cfg.synth["ema"] and cfg.synth["sample_mode"] == "eval" and cfg.synth["synthetic_range"] == "minmax"
    assert cfg.distiller == "feature_align" and cfg.optim.milestones == [150, 180, 210]
    paper = resolve({"method": "hidfd", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"})
    assert paper.synth["lr_g"] == 1e-4 and paper.synth["lr_d"] == 4e-4 and paper.epochs - paper.warmup == 240
    assert paper.synth["sample_mode"] == "train" and paper.synth["synthetic_range"] == "clamp"
    assert paper.synth.get("train_mean") is None
    mnist = resolve({"method": "hidfd", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"})
    assert mnist.synth["rho"] == 0.01 and mnist.warmup > 0


def _released_stats(mean, std, grey=False):
    """The training-input normalisation that gives a teacher normalised with (mean, std) the pixels the released
    teacher saw: p' = a p + b with a = s_t / s_in, b = m_t - a m_in (ImageNet32's m_in, s_in in imagenet32_mix.py,
    the teacher's m_t, s_t in cifar10.py); normalised with mean (m - b) / a and std s / a."""
    m_in, s_in = (0.480, 0.457, 0.409), (0.275, 0.271, 0.281)
    m_t, s_t = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    a = [t / i for t, i in zip(s_t, s_in)]
    b = [mt - ac * mi for mt, ac, mi in zip(m_t, a, m_in)]
    if grey:  # a grey pixel through adapt_images' weights
        w = (0.299, 0.587, 0.114)
        a, b = [sum(x * y for x, y in zip(w, a))], [sum(x * y for x, y in zip(w, b))]
    return ([round((m - bb) / aa, 4) for m, aa, bb in zip(mean, a, b)], [round(s / aa, 4) for s, aa in zip(std, a)])


def test_released_student_normalisation_keeps_the_released_change_of_pixels():
    from datafree.methods import resolve
    from datafree.data.datasets import get_spec

    for ds, teacher, student in (
        ("cifar10", "resnet34", "resnet18"),
        ("cifar100", "resnet34", "resnet18"),
        ("mnist", "lenet5", "lenet5_half"),
        ("digits", "lenet5", "lenet5_half"),
    ):
        cfg = resolve({"method": "hidfd:released", "dataset": ds, "teacher": teacher, "student": student})
        spec = get_spec(ds)
        want = _released_stats(spec.mean, spec.std, grey=spec.channels == 1)
        assert (cfg.synth["train_mean"], cfg.synth["train_std"]) == want, ds
    # CIFAR-100's teacher is normalised as the released one: ImageNet32's constants themselves
    assert _released_stats((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)) == (
        [0.480, 0.457, 0.409],
        [0.275, 0.271, 0.281],
    )


def test_minmax_pixels_are_torchvisions_save_image_normalize():
    from datafree.synthesis.hidfd import clamped_uint8, minmax_uint8

    # one 1x2x2 image: min -0.5, max 0.7, so v = (x + 0.5) / 1.2; uint8 = floor(255 v + 0.5)
    x = torch.tensor([[[[-0.5, 0.1], [0.7, 0.4]]]])
    # v = 0, 0.5, 1, 0.75 -> 255 v + 0.5 = 0.5, 128.0, 255.5, 191.75 -> 0, 128, 255, 191
    assert minmax_uint8(x).view(-1).tolist() == [0, 128, 255, 191]
    # the default: (x + 1) / 2 clipped to [0, 1], times 255, rounded: -0.1 -> 0, 63.75 -> 64, 140.25 -> 140,
    # 242.25 -> 242, 1.15 -> 255
    c = torch.tensor([[[[-1.2, -0.5, 0.1, 0.9, 1.3]]]])
    assert clamped_uint8(c).view(-1).tolist() == [0, 64, 140, 242, 255]
    flat = torch.full((1, 1, 2, 2), 0.3)  # a constant image: max - min floored at 1e-5, all zeros
    assert minmax_uint8(flat).view(-1).tolist() == [0, 0, 0, 0]
    # the same bytes as the released path, one image at a time (save_image -> make_grid(normalize=True), to uint8)
    from torchvision.utils import make_grid

    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(64, 3, 8, 8, generator=g) * 2 - 1) * torch.rand(64, 1, 1, 1, generator=g)
    want = torch.stack([make_grid(i, normalize=True).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8) for i in imgs])
    assert torch.equal(minmax_uint8(imgs), want)


def test_released_synthetic_set_comes_from_the_non_ema_generator_in_eval_mode(zoo, tmp_path):
    e = _engine(tmp_path, gan_steps=2, sample_mode="eval", synthetic_range="minmax", ema=False)
    e.synth.synthesize()  # the GAN steps move G's BN running statistics
    g = e.synth.generator
    modes = []
    hook = g.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    before = snapshot(g)
    syn = e.synth.build_synthetic()
    hook.remove()
    assert modes and not any(modes)  # eval: BN with running statistics
    assert unchanged(g, before)  # so generating moved no statistics
    assert g.training  # back to train mode for anything after
    flat = syn.images.flatten(1)
    assert (flat.amin(1) == 0).all() and (flat.amax(1) == 255).all()  # every image min-max scaled
    z, y = torch.randn(3, e.synth.cfg.nz), torch.tensor([0, 1, 2])
    g.eval()
    with torch.no_grad():
        one = torch.cat([g(z[i : i + 1], y[i : i + 1]) for i in range(3)])
        assert torch.allclose(g(z, y), one, atol=1e-5)  # eval mode: an image does not depend on its batch
    g.train()


def test_student_inputs_use_the_given_normalisation(zoo, tmp_path):
    import pytest

    from datafree.errors import ConfigError

    e = _engine(tmp_path, augment="none", train_mean=[0.5], train_std=[0.25])
    e.synth.synthesize()
    e.ctx.epoch = 1
    e.synth.synthesize()
    mix = e.synth.mix
    mix.sample(1)  # draws the pass's permutation, which the state then holds
    state = mix.order.state_dict()
    raw, _, _ = mix.sample(16)
    mix.order.load_state_dict(state)
    x, _ = e.synth.sample(16)
    assert torch.equal(x, (raw.float() / 255 - 0.5) / 0.25)  # the same float32 operations
    # evaluation and the GAN keep the dataset's normalisation
    assert torch.equal(e.ctx.normalizer.mean.view(-1), torch.tensor(e.spec.mean))
    assert e.synth.normalizer is e.ctx.normalizer and e.synth.input_normalizer is not e.ctx.normalizer
    with pytest.raises(ConfigError, match="need 1 value"):
        _engine(tmp_path, "b", train_mean=[0.48, 0.46, 0.41], train_std=[0.28, 0.27, 0.28])
    with pytest.raises(ConfigError, match="go together"):
        _engine(tmp_path, "c", train_mean=[0.5])
