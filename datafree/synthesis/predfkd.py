"""PRE-DFKD: Robust and Resource-Efficient Data-Free Knowledge Distillation by
Generative Pseudo Replay (Binici, Aggarwal, Pham, Leman and Mitra, AAAI 2022).

The adversarial generator of MB-DFKD plus a variational autoencoder (VAE)
that learns the distribution of the synthetic samples seen so far; the VAE's
decoder ("memory generator") produces the replayed samples, so no image is
stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import SYNTHESIZERS
from . import losses
from .mbdfkd import AdversarialReplaySynthesizer, uniform_init_


class ConvEncoder(nn.Module):
    """PRE-DFKD's encoder: two 3x3 conv-BN-LeakyReLU blocks (width, 2 x width), a x0.5
    resize, a stride-2 3x3 conv with BN, a x0.5 resize, then linear maps to mu and log-variance.

    ``bn_eps`` is the eps of the first two BNs (the released ``BatchNorm2d(C, 0.8)``,
    networks/generator.py:104,109; the third BN keeps PyTorch's). With ``l2norm`` the input is
    first L2-normalised along the height axis, as the released forward does
    (``F.normalize(img, p=2, dim=2)``, networks/generator.py:129)."""

    def __init__(self, channels: int, size: int, nz: int, width: int = 64, bn_eps: float = 1e-5, l2norm: bool = False):
        super().__init__()
        w2 = 2 * width
        self.l2norm = l2norm
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1),
            nn.BatchNorm2d(width, eps=bn_eps),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, w2, 3, 1, 1),
            nn.BatchNorm2d(w2, eps=bn_eps),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=0.5),
            nn.Conv2d(w2, w2, 3, 2, 1),
            nn.BatchNorm2d(w2),
            nn.Upsample(scale_factor=0.5),
        )
        self.body.eval()
        with torch.no_grad():
            flat = self.body(torch.zeros(1, channels, size, size)).numel()
        self.body.train()
        if flat == 0:
            raise ValueError(f"images of {size}x{size} are too small for the PRE-DFKD encoder")
        self.fc_mu = nn.Linear(flat, nz)
        self.fc_logvar = nn.Linear(flat, nz)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.l2norm:
            x = F.normalize(x, p=2, dim=2)
        h = torch.flatten(self.body(x), 1)
        return self.fc_mu(h), self.fc_logvar(h)


class PseudoReplayVAE(nn.Module):
    """Encoder + decoder (the "memory generator"): ``forward(x) -> (reconstruction, mu, logvar)``.

    The decoder is the novel generator's architecture without spectral
    normalisation; its output space (normalised or [0, 1]) is the
    generator's, and the synthesizer maps it to normalised images.
    """

    def __init__(self, encoder: ConvEncoder, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def normalized_output(self) -> bool:
        return getattr(self.decoder, "normalized_output", False)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encoder(x)
        return self.decoder(self.reparameterize(mu, logvar)), mu, logvar

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, I)): summed over latent dimensions, mean over the batch."""
        return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def latent_moments(z: torch.Tensor) -> torch.Tensor:
    """Squared distance of the batch mean and variance of ``z`` from those of N(0, I) (mean over dimensions)."""
    if z.shape[0] < 2:
        return z.new_zeros(())
    return F.mse_loss(z.var(0), torch.ones_like(z[0])) + F.mse_loss(z.mean(0), torch.zeros_like(z[0]))


@SYNTHESIZERS.register("predfkd")
class PREDFKD(AdversarialReplaySynthesizer):
    """PRE-DFKD (Binici et al., AAAI 2022): adversarial generator plus generative pseudo replay.

    Each round: ``g_steps`` steps of the novel generator (DAFL terms plus the
    adversarial term, see :class:`AdversarialReplaySynthesizer`), then
    ``vae_steps`` updates of the VAE. A VAE update takes the first
    ``vae_novel_fraction`` of a fresh novel batch of ``synthesis_batch_size``
    images plus ``int(synthesis_batch_size * replay_ratio)`` samples of the
    VAE's own decoder (after the first round; the decoder rehearses its own
    past), and minimises

        L_VAE = rec * |x_rec - x|_1 + rec_out * |T(x_rec) - T(x)|_1 + kld * KL(q(z|x) || N(0, I))

    (L1 means; the second term makes the reconstructions keep what the
    teacher sees in them). Memory samples are "inferred": z ~ N(0, I) is
    tuned by ``z_steps`` Adam steps (lr ``lr_z``) on
    ``oh * CE(T(D(z)), argmax) + ie * sum_k p_k log_b p_k + z_moment * (|var(z) - 1|^2 + |mean(z)|^2)``
    (the base b is ``ie_log``), then decoded. With ``vae_tuning_grad`` (the
    released code) the tuning loss's gradient with respect to the decoder's
    weights, taken while the VAE's memory samples are inferred, is added to
    that VAE update: the code zeroes the VAE's gradients, back-propagates
    the tuning loss (distillation.py:75, 114) and then the VAE loss
    (distillation.py:143) before its step. Each student batch is
    ``batch_size`` fresh samples plus ``int(batch_size * replay_ratio)``
    inferred memory samples (decoder in eval mode; no gradient reaches the
    decoder there), and the student minimises the L1 distance between its
    logits and the teacher's (the ``l1`` distiller). Only module and
    optimiser weights are kept: no image outlives the step that made it.

    Defaults and their source: the released code (github.com/kuluhan/PRE-DFKD,
    ``main.py``, ``distillation.py``, ``networks/generator.py``; its defaults
    are the CIFAR-100 resnet34 -> resnet18 run): batch 1024, nz 1000,
    generator Adam lr 0.02; VAE (encoder and decoder) Adam lr 0.02 / 40 =
    5e-4; 4 VAE updates per round (the first 4 of its 10 student steps), on
    512 novel + 128 memory samples; KL weight 1e-5; one latent-tuning step at
    lr 0.02; 128 memory samples per student batch of 1024; oh 1, ie 5 (log10),
    act 0.1, the released adversarial term at T = 3; BN eps 0.8 in the
    generator, the decoder and the encoder's first two BNs; the encoder's
    height-axis L2 normalisation (``encoder_l2norm``); 400 epochs x 36 rounds
    x 10 student steps; SGD lr 0.1, momentum 0.9, wd 5e-4, cosine over 400
    epochs. ``predfkd:fixed`` swaps in the true JS, the natural log, eps 1e-5,
    a frozen student, no input normalisation in the encoder and no tuning
    gradient in the VAE update (docs/methods/predfkd.md).

    Assumptions and deviations:

    * the code trains the VAE on the novel batches of the first 4 student
      steps of a round; ours are fresh batches drawn right after the
      generator step from the same generator (the same distribution), so the
      VAE is trained in :meth:`synthesize` and :meth:`sample` only samples;
    * latent tuning and the replay decoding run inside :meth:`sample`, so
      their time is counted as distillation time, as in the code's loop;
    * the teacher's logits are computed once per VAE update, without
      gradient, as targets (the code computes them with gradient and then
      detaches);
    * the student sees memory samples from the first round's trained VAE on
      (the code replays an untrained decoder in the very first student steps).
    """

    @dataclass
    class Config(AdversarialReplaySynthesizer.Config):
        vae_width: int = 64  # encoder widths (width, 2 x width); the decoder uses ngf
        vae_lr: float = 5e-4  # lr_g / 40 in the code
        vae_betas: Tuple[float, float] = (0.9, 0.999)
        vae_steps: int = 4  # VAE updates per round
        vae_novel_fraction: float = 0.5  # of synthesis_batch_size
        rec: float = 1.0
        rec_out: float = 1.0
        kld: float = 1e-5
        z_steps: int = 1
        lr_z: float = 0.02
        z_moment: float = 1.0
        encoder_l2norm: bool = True  # the released encoder's F.normalize(img, p=2, dim=2) on its input
        vae_tuning_grad: bool = True  # the latent-tuning loss's decoder gradient joins the VAE update (released)

    stateful = AdversarialReplaySynthesizer.stateful + ("vae", "vae_optimizer")

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        c, spec = self.cfg, ctx.spec
        if not 0 < c.vae_novel_fraction <= 1:
            raise ValueError("vae_novel_fraction must be in (0, 1]")
        encoder = ConvEncoder(spec.channels, spec.size, c.nz, c.vae_width, bn_eps=c.bn_eps, l2norm=c.encoder_l2norm)
        if c.init_range > 0:
            uniform_init_(encoder, c.init_range)
        self.vae = PseudoReplayVAE(encoder, self.build_decoder()).to(ctx.device)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=c.vae_lr, betas=tuple(c.vae_betas))
        self.vae_rounds = 0

    # -- memory samples
    def infer_memory(self, m: int, train: bool, decoder_grad: bool = False) -> torch.Tensor:
        """``m`` normalised memory samples: tuned latent codes through the decoder (train or eval mode).

        With ``decoder_grad`` each tuning step's gradient with respect to the decoder's weights is added to
        their ``.grad`` (the released VAE update's extra term); otherwise the decoder gets none."""
        c, decoder = self.cfg, self.vae.decoder
        was_training = decoder.training
        decoder.train(train)
        z = torch.randn(m, c.nz, device=self.device, requires_grad=True)
        params = [p for p in decoder.parameters() if p.requires_grad] if decoder_grad else []
        if c.z_steps > 0:
            opt = torch.optim.Adam([z], lr=c.lr_z)
            with torch.enable_grad():
                for _ in range(c.z_steps):
                    x = self.decode(decoder, z)
                    with self.ctx.amp.autocast():
                        t = self.teacher(x).float()
                    loss = (
                        c.oh * losses.one_hot(t)
                        + c.ie * losses.class_balance(t, log=c.ie_log)
                        + c.z_moment * latent_moments(z)
                    )
                    grads = torch.autograd.grad(loss, [z] + params)
                    z.grad = grads[0]
                    for p, g in zip(params, grads[1:]):
                        p.grad = g if p.grad is None else p.grad + g
                    opt.step()
        with torch.no_grad():
            x = self.decode(decoder, z.detach())
        decoder.train(was_training)
        return x

    def can_replay(self) -> bool:
        return self.vae_rounds > 0

    def replay(self, m: int) -> torch.Tensor:
        return self.infer_memory(m, train=False)

    # -- the VAE
    def vae_loss(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The VAE objective on a batch of normalised images ``x`` (teacher frozen, targets without gradient)."""
        c = self.cfg
        with torch.no_grad(), self.ctx.amp.autocast():
            t_x = self.teacher(x).float()
        with self.ctx.amp.autocast():
            rec, mu, logvar = self.vae(x)
        rec = rec.float()
        if not self.vae.normalized_output:
            rec = self.normalizer(rec)
        with self.ctx.amp.autocast():
            t_rec = self.teacher(rec).float()
        l_img = F.l1_loss(rec, x)
        l_out = F.l1_loss(t_rec, t_x)
        l_kld = PseudoReplayVAE.kl(mu.float(), logvar.float())
        loss = c.rec * l_img + c.rec_out * l_out + c.kld * l_kld
        return loss, {"vae_rec": l_img.detach(), "vae_out": l_out.detach(), "vae_kld": l_kld.detach()}

    def vae_step(self) -> Dict[str, torch.Tensor]:
        """One VAE update on part of a fresh novel batch plus (after the first round) the decoder's own samples."""
        c = self.cfg
        n = c.synthesis_batch_size
        self.vae_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            x = self.generate(self.latent(n))[: max(1, int(n * c.vae_novel_fraction))]
        m = self.replay_count(n)
        if self.vae_rounds > 0 and m > 0:
            x = torch.cat([x, self.infer_memory(m, train=True, decoder_grad=c.vae_tuning_grad)], dim=0)
        loss, logs = self.vae_loss(x)
        loss.backward()
        self.vae_optimizer.step()
        logs["vae"] = loss.detach()
        return logs

    def synthesize(self) -> Dict[str, torch.Tensor]:
        logs = super().synthesize()
        self.vae.train()
        vae_logs: Dict[str, torch.Tensor] = {}
        for _ in range(self.cfg.vae_steps):
            vae_logs = self.vae_step()
        self.vae_rounds += 1
        logs.update(vae_logs)
        return logs

    def extra_state(self) -> Dict[str, Any]:
        return {"vae_rounds": self.vae_rounds}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        self.vae_rounds = int(state.get("vae_rounds", 0))
