import pytest
import torch
from torch import nn

from datafree.synthesis import losses


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    )


def test_bn_statistics_zero_when_batch_matches_running_stats():
    net = _bn_net()
    x = torch.randn(64, 3, 8, 8)
    net.train()
    for bn in (net[1], net[4]):
        bn.momentum = 1.0  # running stats := this batch's stats (unbiased var, see below)
    with torch.no_grad():
        net(x)
    # BN keeps the unbiased variance as running_var; the term uses the biased one: set it exactly
    with torch.no_grad():
        h1 = net[0](x)
        net[1].running_var.copy_(h1.var(dim=(0, 2, 3), unbiased=False))
        h2 = net[3](net[2](net[1].eval()(h1)))
        net[4].running_mean.copy_(h2.mean(dim=(0, 2, 3)))
        net[4].running_var.copy_(h2.var(dim=(0, 2, 3), unbiased=False))
    net.eval()
    term = losses.BNStatistics(net)
    with term:
        net(x)
    assert term.loss().item() < 1e-5


def test_bn_statistics_positive_with_gradient_otherwise():
    net = _bn_net().eval()
    x = (torch.randn(16, 3, 8, 8) * 3 + 1).requires_grad_(True)
    term = losses.BNStatistics(net)
    with term:
        net(x)
    loss = term.loss()
    assert loss.item() > 0.1
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # hooks are gone after the block: a forward pass records nothing
    net(x)
    with pytest.raises(RuntimeError):
        term.loss()


def test_bn_statistics_momentum_moves_the_target():
    net = _bn_net().eval()
    x = torch.randn(16, 3, 8, 8) * 2
    term = losses.BNStatistics(net, momentum=0.9)
    with term:
        net(x)
    first = term.loss().item()
    term.update_momentum()
    with term:
        net(x)
    # with the EMA equal to this batch's stats the mixed target equals them too: same loss
    assert abs(term.loss().item() - first) < 1e-4
    with term:
        net(torch.zeros(16, 3, 8, 8))
    mixed = term.loss().item()
    no_mmt = losses.BNStatistics(net)
    with no_mmt:
        net(torch.zeros(16, 3, 8, 8))
    assert mixed != pytest.approx(no_mmt.loss().item())


def test_kl_uses_the_temperature():
    """kl_div against the formula in float64. The tolerance is float32's: each log-softmax entry is off by a
    few ulps of its magnitude, the sum over classes adds up to one ulp per term, and T^2 scales the result,
    so at T = 20 the absolute error is about 400 x eps x (|log p| + |log q|); 1e-5 relative is not reachable
    there (the values shrink like 1/T^2 before the T^2 factor: the bits lost are the leading ones)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    eps = torch.finfo(torch.float32).eps
    for T in (1.0, 4.0, 20.0):
        log_p = torch.log_softmax(t.double() / T, 1)
        log_q = torch.log_softmax(s.double() / T, 1)
        ref = (log_p.exp() * (log_p - log_q)).sum(1).mean() * T * T
        tol = 16 * eps * T * T * float((log_p.abs() + log_q.abs()).max() + 1)
        assert abs(losses.kl_div(s, t, T=T).item() - ref.item()) <= tol, T
        assert tol < 0.05 * ref.item()  # still a test: the error allowed is far below the value
    assert losses.kl_div(s, t, T=1.0) != pytest.approx(losses.kl_div(s, t, T=20.0).item())


def test_adversarial_terms_nonzero_when_models_differ_and_masked_by_agreement():
    t = torch.randn(32, 10)
    s = t + torch.randn(32, 10)
    for kind in ("kl", "js", "l1"):
        assert losses.adversarial(s, t, kind=kind).item() < 0
        assert losses.adversarial(t, t, kind=kind).item() == pytest.approx(0.0, abs=1e-6)
    # masked: samples whose predicted classes differ do not count
    s_disagree = -t * 5
    assert losses.adversarial(s_disagree, t, kind="kl", masked=True).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.adversarial(s_disagree, t, kind="kl").item() < 0


def test_class_balance_and_activation():
    uniform = torch.zeros(4, 10)
    peaked = torch.zeros(4, 10)
    peaked[:, 0] = 10
    assert losses.class_balance(uniform).item() == pytest.approx(-torch.log(torch.tensor(10.0)).item(), rel=1e-5)
    assert losses.class_balance(peaked) > losses.class_balance(uniform)
    f = torch.tensor([[1.0, -3.0]])
    assert losses.activation(f).item() == pytest.approx(-2.0)
    assert losses.one_hot(peaked).item() < 1e-3


def test_class_balance_log10_is_dafl_code_form():
    # DAFL-train.py:178-179 (huawei-noah/Efficient-Computing): p = softmax(t).mean(0); (p * log10(p)).sum().
    # Fixed logits, two samples, three classes: p = mean of softmax([2, 0, 0]) and softmax([0, 1, 0]).
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # softmax([2,0,0]) = [0.786986, 0.106507, 0.106507]; softmax([0,1,0]) = [0.211942, 0.576117, 0.211942]
    # p = [0.499464, 0.341312, 0.159224]; sum p log10 p = -0.150586 - 0.159341 - 0.127059 = -0.436987
    # (float32 of a three-term sum of values < 1: error ~1e-7; the figures are written to 1e-6)
    assert losses.class_balance(t, log="10").item() == pytest.approx(-0.436987, abs=2e-6)
    assert losses.class_balance(t, log="e").item() == pytest.approx(-0.436987 * 2.302585, abs=5e-6)
    with pytest.raises(ValueError, match="log base"):
        losses.class_balance(t, log="2")
    from datafree.config import METHOD_CHOICES

    assert set(METHOD_CHOICES["ie_log"]) == set(losses.LOG_BASES)  # the config check accepts exactly these


def test_image_priors_and_info_nce():
    flat = torch.ones(2, 3, 8, 8)
    assert losses.total_variation(flat).item() == 0
    assert losses.total_variation(torch.randn(2, 3, 8, 8)).item() > 0
    q = torch.randn(8, 16)
    easy = losses.info_nce(q, q, torch.randn(64, 16), T=0.1)
    hard = losses.info_nce(q, torch.randn(8, 16), torch.randn(64, 16), T=0.1)
    assert easy < hard


def test_js_clamped_is_the_reference_competition_term():
    """zju-vipa/CMI criterions.py jsdiv (and NVlabs' DeepInversion): P = softmax(s/T), Q = softmax(t/T),
    M = (P + Q)/2, P, Q, M clamped to [0.01, 0.99], then 0.5 F.kl_div(log P, M) + 0.5 F.kl_div(log Q, M),
    i.e. 0.5 KL(M||P) + 0.5 KL(M||Q), per sample summed over classes."""
    from datafree.synthesis.losses import DIVERGENCES, js_clamped, js_div

    s = torch.tensor([[2.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [0.0, 10.0, 0.0]])
    # row 1, no clamp active: P = (e^2, 1, 1)/(e^2 + 2) = (0.786986, 0.106507, 0.106507), Q its mirror,
    #   M = (0.446747, 0.446747, 0.106507): KL(M||P) = KL(M||Q) = 0.387580, so 0.5 + 0.5 of it = 0.387580
    # row 2, clamps active: P -> (0.99, 0.01, 0.01), Q -> (0.01, 0.99, 0.01), M = (0.499977, 0.499977, 4.54e-5)
    #   -> (0.499977, 0.499977, 0.01): M0 ln(M0/0.99) + M0 ln(M0/0.01) + 0 = 1.614344
    expected = torch.tensor([0.387580, 1.614344])
    got = js_clamped(s, t, reduction="none")
    # float32 softmax/log over 3 classes: relative error a few ulps; 1e-5 absolute covers the 6-digit literals
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert torch.allclose(js_clamped(s, t), expected.mean(), atol=1e-5, rtol=0)  # batchmean
    true_js = js_div(s, t, reduction="none")  # not the same quantity: the true JS is 0.292899, 0.692616
    assert torch.allclose(true_js, torch.tensor([0.292899, 0.692616]), atol=1e-5, rtol=0)
    assert DIVERGENCES["js_clamped"] is js_clamped


def test_deepinv_runs_the_scripts_protocol_and_the_paper_preset_the_papers():
    from datafree.methods import resolve

    base = {"dataset": "cifar10", "teacher": "wrn40_2", "student": "wrn16_1"}
    plain = resolve({**base, "method": "deepinv"})
    paper = resolve({**base, "method": "deepinv:paper"})
    assert (plain.synth["iterations"], plain.synth["adv_kind"]) == (1000, "js_clamped")  # --g_steps 1000
    assert (paper.synth["iterations"], paper.synth["adv_kind"]) == (2000, "js_clamped")
    with pytest.raises(Exception, match="adv_kind"):
        resolve({**base, "method": "deepinv", "synth": {"adv_kind": "jsd"}})


def test_adversarial_elementmean_is_the_released_mb_pre_dfkd_term():
    """kuluhan/PRE-DFKD utils/aux.py:70-85 JS_divergence(student, teacher) at T = 3: P, Q = softmax(t/3),
    softmax(s/3), M = (P + Q)/2, all three clamped to [0.01, 0.99], D = 0.5 KLDivLoss()(log P, M)
    + 0.5 KLDivLoss()(log Q, M) with the default 'mean' (over batch x classes), returned as 1 - clamp(D, 0, 1).
    The expected numbers were computed in float64 with that code's own operations (nn.KLDivLoss())."""
    from datafree.synthesis.losses import adversarial_elementmean, js_clamped

    s = torch.tensor([[12.0, 0.0, -3.0, 1.0], [0.5, -1.0, 2.0, 0.0], [-2.0, 9.0, 0.0, 1.5]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 10.0, -2.0], [1.0, 0.5, -0.5, 3.0], [-2.0, 9.0, 0.5, 1.0]])
    # softmax(s[0]/3)[2] = 0.006413 < 0.01: a clamp is active in row 0
    got = adversarial_elementmean(s, t, T=3.0)
    # float32 over 12 elements, each softmax/log within a few ulps (~3e-7 relative) of float64, |D| < 1:
    # their sum is within ~4e-6 of the float64 value, and 1e-5 bounds it
    assert abs(float(got.detach()) - 0.8926408679235711) < 1e-5
    # the same as js_clamped's batch mean divided by the class count
    assert abs(float(got.detach()) - (1 - float(js_clamped(s.detach(), t, T=3.0)) / 4)) < 1e-6
    (g,) = torch.autograd.grad(got, s)
    expected = torch.tensor(
        [
            [-8.47801735859886e-04, 5.16995929696848e-04, -9.94636906910652e-05, 4.30269496854106e-04],
            [1.23623884447429e-04, 4.37196820579453e-04, -2.20133821238606e-03, 1.64051750735918e-03],
            [5.94897140844152e-07, 2.32731399966494e-05, 5.33528313768154e-05, -7.72208685143090e-05],
        ]
    )
    # float32 backward through 4-class softmaxes: errors ~1e-7 relative to the largest entry (2.2e-3), i.e.
    # ~3e-10 absolute; 1e-8 leaves a 30x margin and still separates every entry from its neighbours
    assert torch.allclose(g, expected, atol=1e-8, rtol=0)


def test_adversarial_elementmean_is_silent_on_near_uniform_100_class_outputs():
    """With 100 classes most probabilities at T = 3 sit near 0.01, so the clamps lift them and D < 0; the
    batch clamp to [0, 1] then makes the term a constant 1 with no gradient, although the student
    disagrees with the teacher (the true JS has a gradient)."""
    from datafree.synthesis.losses import adversarial, adversarial_elementmean, js_clamped

    s = torch.linspace(-1.5, 1.5, 100).repeat(2, 1).requires_grad_(True)
    t = torch.linspace(-1.5, 1.5, 100).flip(0).repeat(2, 1)
    # float64, with the released code's operations: D = -9.284701645856626e-4, i.e. -0.0928470 per sample
    # (float32 over 100 classes: ~1e-6 relative per term, 1e-5 absolute bounds the sum)
    assert abs(float(js_clamped(s.detach(), t, T=3.0)) - (-0.09284701645856626)) < 1e-5
    got = adversarial_elementmean(s, t, T=3.0)
    assert float(got.detach()) == 1.0
    (g,) = torch.autograd.grad(got, s)
    assert torch.count_nonzero(g) == 0
    (g_js,) = torch.autograd.grad(adversarial(s, t, kind="js", T=3.0), s)
    assert g_js.abs().max() > 1e-4


def _kl_autograd(s, t, T):
    """The chain kl_div ran on dense logits before _DenseKL: the reference for its values and gradients."""
    log_q = torch.log_softmax(s / T, 1)
    log_p = torch.log_softmax(t / T, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1) * (T * T)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dense_kl_matches_autograd_in_value_and_both_gradients(T):
    # float64, so the two orders of the same arithmetic agree to ~1e-15 relative; 1e-10 leaves room for any CPU
    torch.manual_seed(0)
    s0, t0 = torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3, torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3
    w = torch.rand(3, 4, 6, dtype=torch.float64)  # a non-uniform upstream gradient, as a masked mean gives
    results = []
    for fn in (_kl_autograd, losses._DenseKL.apply):
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        per = fn(s, t, T)
        (per * w).sum().backward()
        results.append((per.detach(), s.grad, t.grad))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_kl_div_takes_the_dense_form_for_pixel_logits_and_keeps_class_logits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 11, 8, 8, requires_grad=True), torch.randn(2, 11, 8, 8)
    loss = losses.kl_div(s, t, T=2.0)
    assert type(loss.grad_fn).__name__ == "MeanBackward0"
    assert "DenseKL" in type(loss.grad_fn.next_functions[0][0]).__name__
    # float32 against float64, with test_kl_uses_the_temperature's bound: a few ulps of each log-softmax entry,
    # summed over the classes, times T^2
    log_p, log_q = torch.log_softmax(t.double() / 2, 1), torch.log_softmax(s.detach().double() / 2, 1)
    tol = 16 * torch.finfo(torch.float32).eps * 4 * float((log_p.abs() + log_q.abs()).max() + 1)
    assert abs(loss.item() - _kl_autograd(s.detach().double(), t.double(), 2.0).mean().item()) <= tol
    assert losses.kl_div(s, t, reduction="none").shape == (2, 8, 8)
    c = torch.randn(4, 10, requires_grad=True)
    assert "DenseKL" not in str(losses.kl_div(c, torch.randn(4, 10)).grad_fn.next_functions)
