"""The loss terms of data-free synthesis, each written once.

Methods compose these with their own coefficients. Conventions: every
function returns a scalar to *minimise*; ``s``/``t`` are student/teacher
logits; divergences with a temperature ``T`` follow Hinton's KD.

* :class:`BNStatistics`: DeepInversion's feature-distribution term, with
  Fast-DFKD's momentum targets as an option;
* :func:`one_hot`: cross-entropy against the teacher's argmax or given labels;
* :func:`adversarial`: minus a student-teacher divergence (KL, JS or L1),
  optionally masked to samples on which the two agree (CMI, Fast-DFKD, CuDFKD);
* :func:`adversarial_elementmean`: the MB-DFKD/PRE-DFKD released code's clamped, element-mean form;
* :func:`class_balance`: sum_k p_k log p_k of the batch-mean teacher softmax
  (minimising it maximises the class entropy: DAFL's information entropy);
* :func:`activation`: minus the mean absolute penultimate activation (DAFL);
* :func:`total_variation` and :func:`l2_prior`: image priors (DeepInversion);
* :func:`info_nce`: the contrastive term (CMI).
* :func:`cross_view_info_nce`: CMI's exact form (in-batch and memory-bank negatives).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------- divergences


class _DenseKL(torch.autograd.Function):
    """KL(softmax(t/T) || softmax(s/T)) * T^2 over dim 1, one value per position, with its gradients written out:
    d/ds = T (q - p), d/dt = T p (log p - log q - KL). On dense logits (a segmentation student's N x C x H x W)
    autograd's chain through log_softmax, exp, sub, mul and sum stores and revisits five tensors of the logits'
    size; this stores two (three when t needs a gradient), and its backward runs in place on them, so the
    graph supports one backward (a second raises autograd's in-place error, as for any freed graph)."""

    @staticmethod
    def forward(ctx, s, t, T):
        if T != 1:
            s, t = s / T, t / T
        with torch.autocast(s.device.type, enabled=False):  # in the inputs' precision (float32 from kl_div)
            log_q = torch.log_softmax(s, 1)
            log_p = torch.log_softmax(t, 1)
            p = log_p.exp()
            diff = log_p.sub_(log_q)
            per = torch.linalg.vecdot(p, diff, dim=1)
        ctx.T = T
        want_t = ctx.needs_input_grad[1]
        ctx.save_for_backward(log_q, p, diff if want_t else None, per if want_t else None)
        return per * (T * T)

    @staticmethod
    def backward(ctx, grad):
        log_q, p, diff, per = ctx.saved_tensors
        g = (grad * ctx.T).unsqueeze(1)
        gs = gt = None
        if ctx.needs_input_grad[1]:
            gt = diff.sub_(per.unsqueeze(1)).mul_(p).mul_(g)
        if ctx.needs_input_grad[0]:
            gs = log_q.exp_().sub_(p).mul_(g)
        return gs, gt, None


def kl_div(s: torch.Tensor, t: torch.Tensor, T: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 (Hinton et al. 2015).

    ``reduction='none'`` returns one value per sample (summed over classes), per pixel for dense logits
    (N x C x H x W: the mean is then over every pixel). Dense logits take :class:`_DenseKL`, the same value in
    fewer passes (docs/segmentation.md, "Speed"); class logits keep autograd's form, bit for bit the runs on record.
    """
    if s.dim() > 2:
        per_sample = _DenseKL.apply(s.float(), t.float(), float(T))
    else:
        log_q = F.log_softmax(s.float() / T, dim=1)
        log_p = F.log_softmax(t.float() / T, dim=1)
        per_sample = (log_p.exp() * (log_p - log_q)).sum(1) * (T * T)
    if reduction == "none":
        return per_sample
    if reduction in ("batchmean", "mean"):
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    raise ValueError(f"unknown reduction {reduction!r}")


def js_div(
    s: torch.Tensor, t: torch.Tensor, T: float = 1.0, reduction: str = "batchmean", eps: float = 1e-7
) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(s/T) and softmax(t/T), per sample summed over classes."""
    p = F.softmax(s.float() / T, dim=1)
    q = F.softmax(t.float() / T, dim=1)
    m = 0.5 * (p + q)
    log_m = m.clamp_min(eps).log()
    per_sample = 0.5 * (p * (p.clamp_min(eps).log() - log_m)).sum(1) + 0.5 * (q * (q.clamp_min(eps).log() - log_m)).sum(
        1
    )
    return (
        per_sample
        if reduction == "none"
        else per_sample.mean()
        if reduction in ("batchmean", "mean")
        else per_sample.sum()
    )


def js_clamped(
    s: torch.Tensor, t: torch.Tensor, T: float = 1.0, reduction: str = "batchmean", lo: float = 0.01, hi: float = 0.99
) -> torch.Tensor:
    """The competition term of the DeepInversion code (zju-vipa/CMI datafree/criterions.py ``jsdiv``, the form
    NVlabs/DeepInversion also uses): P = softmax(s/T), Q = softmax(t/T), M = (P + Q) / 2, then P, Q and M
    clamped to [0.01, 0.99], and 0.5 KL(M || P) + 0.5 KL(M || Q) in ``F.kl_div(log P, M)``'s argument order,
    per sample summed over classes. Not a Jensen-Shannon divergence (:func:`js_div` is): the clamps change
    its value and, on confident logits, its gradient."""
    p = F.softmax(s.float() / T, dim=1)
    q = F.softmax(t.float() / T, dim=1)
    m = (0.5 * (p + q)).clamp(lo, hi)
    p, q = p.clamp(lo, hi), q.clamp(lo, hi)
    per_sample = 0.5 * (m * (m.log() - p.log())).sum(1) + 0.5 * (m * (m.log() - q.log())).sum(1)
    return (
        per_sample
        if reduction == "none"
        else per_sample.mean()
        if reduction in ("batchmean", "mean")
        else per_sample.sum()
    )


def l1_logits(s: torch.Tensor, t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute difference of logits (DFAD); ``none`` gives one value per sample."""
    d = (s.float() - t.float()).abs().mean(1)
    return d if reduction == "none" else d.mean() if reduction == "mean" else d.sum()


DIVERGENCES = {
    "kl": kl_div,
    "js": js_div,
    "js_clamped": js_clamped,
    "l1": lambda s, t, T=1.0, reduction="mean": l1_logits(s, t, reduction),
}


def agreement_mask(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1.0 where the student's and the teacher's predicted classes agree."""
    return (s.argmax(1) == t.argmax(1)).float()


def adversarial(
    s: torch.Tensor, t: torch.Tensor, kind: str = "kl", T: float = 1.0, masked: bool = False
) -> torch.Tensor:
    """Minus the student-teacher divergence: minimising it makes samples the student gets wrong.

    With ``masked``, only samples on which student and teacher agree count
    (CMI's and Fast-DFKD's form), so the generator is not pushed towards
    samples the teacher itself finds ambiguous. The mean is over the whole batch.
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}: use one of {sorted(DIVERGENCES)}")
    per_sample = DIVERGENCES[kind](s, t, T=T, reduction="none")
    if masked:
        per_sample = per_sample * agreement_mask(s, t).detach()
    return -per_sample.mean()


def adversarial_elementmean(
    s: torch.Tensor, t: torch.Tensor, T: float = 3.0, lo: float = 0.01, hi: float = 0.99
) -> torch.Tensor:
    """The adversarial term of Binici et al.'s released code (kuluhan/PRE-DFKD utils/aux.py:70-85
    ``JS_divergence``, also MB-DFKD's in gaurav104/LRA src/graphs/losses/kd_losses.py:11-26), to minimise:

        1 - clamp(D, 0, 1),   D = 0.5 mean_{i,k} M (log M - log P) + 0.5 mean_{i,k} M (log M - log Q)

    with P, Q = softmax(t/T), softmax(s/T) and M = (P + Q) / 2, all three clamped to [lo, hi] (after M is
    formed), and ``nn.KLDivLoss()``'s default reduction: the mean over all batch x class elements, i.e.
    :func:`js_clamped`'s batch mean divided by the number of classes. The clamp to [0, 1] acts on the batch
    value. No T^2 factor. Per unit weight, its gradient is roughly 1 / num_classes of :func:`js_clamped`'s,
    and it vanishes on classes whose probabilities all sit below ``lo`` (near-uniform 100-class outputs)."""
    d = js_clamped(s, t, T=T, reduction="batchmean", lo=lo, hi=hi) / s.shape[1]
    return 1.0 - d.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- teacher-output priors


def one_hot(t: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of the teacher's logits against ``targets`` (default: its own argmax)."""
    if targets is None:
        targets = t.argmax(1)
    return F.cross_entropy(t.float(), targets)


def class_entropy(t: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Entropy H of the batch-mean teacher softmax at temperature T. Per pixel (logits (N, K, H, W)): of the
    softmax averaged over the batch and every pixel, the class frequencies of the batch's pixels."""
    p = F.softmax(t.float() / T, dim=1)
    p = p.mean(0) if p.dim() == 2 else p.transpose(0, 1).flatten(1).mean(1)
    return -(p * p.clamp_min(1e-12).log()).sum()


def class_balance(t: torch.Tensor, T: float = 1.0, log: str = "e") -> torch.Tensor:
    """sum_k p_k log p_k = -H(mean softmax): minimising it balances the classes (DAFL, DFQ).

    ``log="10"`` takes the base-10 logarithm, as DAFL's code does (``torch.log10`` in DAFL-train.py) and
    the MB-DFKD/PRE-DFKD code after it: the same term divided by ln 10, so its weight acts 2.3x smaller.
    """
    if log not in LOG_BASES:
        raise ValueError(f"class_balance: unknown log base {log!r}; choose one of {sorted(LOG_BASES)}")
    return -class_entropy(t, T) / LOG_BASES[log]


# the divisor that turns a natural logarithm into each base's
LOG_BASES = {"e": 1.0, "10": math.log(10.0)}


def activation(features: torch.Tensor) -> torch.Tensor:
    """-mean |features| of the teacher's penultimate layer (DAFL)."""
    return -features.float().abs().mean()


# --------------------------------------------------------------------------- image priors


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation over the four neighbour directions, mean per direction."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.abs().mean() + d2.abs().mean() + d3.abs().mean() + d4.abs().mean()


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of the image batch (DeepInversion's small pixel prior)."""
    return x.float().norm(2)


# --------------------------------------------------------------------------- BN statistics


class BNStatistics:
    """DeepInversion's feature-statistics term over the teacher's BatchNorm layers.

    For each BN layer, with the batch mean mu and (biased) variance var of its
    input: ``||running_var - var||_2 + ||running_mean - mu||_2``; the loss is
    the sum over layers. With ``momentum`` m > 0 (Fast-DFKD), the target mixes
    in an exponential moving average of past batches' statistics:
    ``||running - ((1 - m) * stat + m * ema)||_2``; call :meth:`update_momentum`
    after a synthesis round to fold the last batch into the average.

    Hooks exist only between :meth:`attach` and :meth:`detach` (or inside a
    ``with`` block), so the teacher costs nothing extra when the term is unused.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0, layers: Optional[Sequence[nn.Module]] = None):
        self.layers: List[nn.BatchNorm2d] = (
            list(layers) if layers is not None else [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        )
        if not self.layers:
            raise ValueError("the BN-statistics term needs a teacher with BatchNorm2d layers")
        self.momentum = momentum
        self._losses: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._last: List[Optional[tuple]] = [None] * len(self.layers)
        self.ema: List[Optional[tuple]] = [None] * len(self.layers)
        self._handles: list = []

    def _hook(self, i: int):
        def fn(module: nn.BatchNorm2d, inputs, output):
            x = inputs[0].float()
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            self._last[i] = (mean, var)
            if self.momentum > 0 and self.ema[i] is not None:
                m_mean, m_var = self.ema[i]
                mean = (1 - self.momentum) * mean + self.momentum * m_mean
                var = (1 - self.momentum) * var + self.momentum * m_var
            self._losses[i] = torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2)

        return fn

    def attach(self) -> "BNStatistics":
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "BNStatistics":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def loss(self) -> torch.Tensor:
        """The term for the last forward pass (sum over layers)."""
        if any(v is None for v in self._losses):
            raise RuntimeError("BNStatistics.loss() called before a forward pass with the hooks attached")
        total = torch.stack([v for v in self._losses]).sum()
        self._losses = [None] * len(self.layers)
        return total

    @torch.no_grad()
    def update_momentum(self) -> None:
        """Fold the last batch's statistics into the moving average (Fast-DFKD)."""
        for i, last in enumerate(self._last):
            if last is None:
                continue
            mean, var = last[0].detach(), last[1].detach()
            if self.ema[i] is None:
                self.ema[i] = (mean, var)
            else:
                m_mean, m_var = self.ema[i]
                self.ema[i] = (
                    self.momentum * m_mean + (1 - self.momentum) * mean,
                    self.momentum * m_var + (1 - self.momentum) * var,
                )

    def state_dict(self) -> dict:
        return {"ema": [None if e is None else [e[0].cpu(), e[1].cpu()] for e in self.ema]}

    def load_state_dict(self, state: dict) -> None:
        dev = self.layers[0].running_mean.device
        self.ema = [None if e is None else (e[0].to(dev), e[1].to(dev)) for e in state["ema"]]


# --------------------------------------------------------------------------- contrastive


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, T: float = 0.1) -> torch.Tensor:
    """InfoNCE: -log( exp(q.k+/T) / (exp(q.k+/T) + sum exp(q.k-/T)) ), all vectors L2-normalised.

    ``query``/``positive``: (B, D); ``negatives``: (N, D) shared by the batch.
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(positive.float(), dim=1)
    neg = F.normalize(negatives.float(), dim=1)
    pos_logit = (q * k).sum(1, keepdim=True)
    neg_logit = q @ neg.t()
    logits = torch.cat([pos_logit, neg_logit], dim=1) / T
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def cross_view_info_nce(
    query: torch.Tensor, key: torch.Tensor, T: float = 0.1, n_current: Optional[int] = None
) -> torch.Tensor:
    """InfoNCE across two views of the same rows, with in-batch and memory-bank negatives (CMI).

    Row i of ``key`` is the positive of row i of ``query``; every other row of
    ``key`` is one of its negatives: per row, ``CE(q_i . K^T / T, i)`` with all
    vectors L2-normalised. Rows from ``n_current`` on are memory-bank entries;
    the loss is then the mean over the first ``n_current`` rows plus the mean
    over the bank rows (CMI's split, so that a large bank does not shrink the
    current batch's gradient), otherwise the mean over all rows. Gradients reach
    both inputs: detach ``key`` for CMI's one-sided form.
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.float(), dim=1)
    logits = q @ k.t() / T
    per_row = F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device), reduction="none")
    if n_current is None or n_current >= q.shape[0]:
        return per_row.mean()
    return per_row[:n_current].mean() + per_row[n_current:].mean()


# --------------------------------------------------------------------------- conditional GAN terms (HiDFD)


def hinge_discriminator(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The hinge loss of a GAN discriminator: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return F.relu(1.0 - d_real.float()).mean() + F.relu(1.0 + d_fake.float()).mean()


def hinge_generator(d_fake: torch.Tensor) -> torch.Tensor:
    """The hinge loss of a GAN generator: -mean D(fake)."""
    return -d_fake.float().mean()


def adc_discriminator(
    aux_real: torch.Tensor, y_real: torch.Tensor, aux_fake: torch.Tensor, y_fake: torch.Tensor
) -> torch.Tensor:
    """ADC-GAN's classifier loss for D over 2K classes: CE(aux(real), 2y) + CE(aux(fake), 2y' + 1)."""
    return F.cross_entropy(aux_real.float(), 2 * y_real) + F.cross_entropy(aux_fake.float(), 2 * y_fake + 1)


def adc_generator(aux_fake: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
    """ADC-GAN's classifier loss for G: CE(aux(fake), 2y') - CE(aux(fake), 2y' + 1)."""
    return F.cross_entropy(aux_fake.float(), 2 * y_fake) - F.cross_entropy(aux_fake.float(), 2 * y_fake + 1)


def weighted_class_balance(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k p_k log p_k of the batch-mean teacher softmax p (class-balancing GAN; HiDFD's smoothing).

    With all weights 1 this is :func:`class_balance`; larger weights push harder
    towards classes that are generated less often.
    """
    p = F.softmax(t.float(), dim=1).mean(0)
    return (weights.to(p) * p * p.clamp_min(1e-12).log()).sum()


def feature_integration(
    t_real: torch.Tensor, t_fake: torch.Tensor, h_real: torch.Tensor, h_fake: torch.Tensor
) -> torch.Tensor:
    """HiDFD's feature integration: four mean L2 distances between the teacher's features ``t_*`` of real
    and generated images and a discriminator head's features ``h_*`` of the same batches:
    |t_real - h_real| + |t_real - h_fake| + |t_fake - h_fake| + |t_fake - h_real| (rows paired by index)."""

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.float() - b.float()).norm(2, dim=1).mean()

    return dist(t_real, h_real) + dist(t_real, h_fake) + dist(t_fake, h_fake) + dist(t_fake, h_real)
