"""Networks of the TEB study: target-only model, TEB from context, TEB_0 and the baselines.

One network class (``TEBNet``) covers every variant. A context c_mu comes from the target history; the
source models add a source latent s (see ``TEBNet`` for how it reaches the decoder):

* ``target``        s = 0: the target-only model d(y'|c)
* ``teb``           TEB from context: the trained target model's encoder and context head are frozen,
                    its decoder is copied and trained on; s ~ e(s|x,c) = N(mu_x, sigma_x^2), prior
                    q(s|c) = N(m(c), sigma_q(c)^2)
* ``teb0``          TEB_0: the same, trained jointly from scratch (prior learned with everything)
* ``deterministic`` the TEB_0 network with s = mu_x: no bottleneck, no KL term
* ``joint``         a target model whose input is the target history with the source concatenated

The decoder predicts a Gaussian mean and log-variance per output element, so log-likelihoods and
their differences are in nats. ``TEBNet.te_terms`` is the same-network decoder gap (a TE estimate on the AR task only; see
repro.teb.evaluate), ``TEBNet.source_log_density`` the critic of the contrastive lower bound.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .runs import STOCHASTIC, VARIANTS  # one definition, in the torch-free run plan

LOG_2PI = math.log(2 * math.pi)


def modality(t: torch.Tensor) -> str:
    if t.dtype == torch.long:
        return "label"
    return "image" if t.dim() == 5 else "sequence"


def sequence_features(t: torch.Tensor) -> int:
    return 1 if t.dim() == 2 else int(t.shape[-1])


class MLPEncoder(nn.Module):
    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, t):
        return self.net(t.flatten(1))


class LSTMEncoder(nn.Module):
    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, batch_first=True)
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, t):
        if t.dim() == 2:
            t = t.unsqueeze(-1)
        _, (h, _) = self.lstm(t)
        return self.out(h[-1])


class FrameEncoder(nn.Module):
    """Frames [B, T, C, S, S] stacked as channels: a small strided CNN plus per-channel spatial max and mean.

    The pooled statistics (a ball's colour, a one-pixel label) also reach the output through a linear
    path. Through the ReLU layers alone they arrive as a weak, tangled signal that a reconstruction loss
    takes far more epochs than a CPU run has to pull into the latent (the balls' colour never did).
    """

    def __init__(self, in_channels: int, size: int, channels: int, hidden: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        side = math.ceil(math.ceil(size / 2) / 2)
        self.out = nn.Sequential(nn.Linear(2 * channels * side * side + 2 * in_channels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.skip = nn.Linear(2 * in_channels, hidden)

    def forward(self, t):
        t = t.flatten(1, 2)
        pooled = torch.cat([t.amax(dim=(2, 3)), t.mean(dim=(2, 3))], dim=1)
        return self.out(torch.cat([self.conv(t).flatten(1), pooled], dim=1)) + self.skip(pooled)


class LabelEncoder(nn.Module):
    def __init__(self, n_classes: int, steps: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(n_classes, hidden)
        self.mlp = MLPEncoder(steps * hidden, hidden)

    def forward(self, t):
        return self.mlp(self.embed(t))


def make_encoder(example: torch.Tensor, mcfg: dict, n_classes: int = 10) -> nn.Module:
    kind = modality(example)
    hidden = mcfg["hidden"]
    if kind == "label":
        return LabelEncoder(n_classes, int(example.shape[1]), hidden)
    if kind == "image":
        _, T, C, S, _ = example.shape
        return FrameEncoder(T * C, S, mcfg["channels"], hidden)
    if mcfg["sequence_encoder"] == "lstm":
        return LSTMEncoder(sequence_features(example), hidden)
    return MLPEncoder(int(example[0].numel()), hidden)


def joint_input(y: torch.Tensor, x: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """The source concatenated to the target input, in the target's own layout."""
    if y.dim() == 5:
        B, _, _, S, _ = y.shape
        if x.dtype == torch.long:
            # Labels become constant one-hot planes, one frame per label step.
            planes = F.one_hot(x, n_classes).float()[..., None, None].expand(B, x.shape[1], n_classes, S, S)
            return torch.cat([y.flatten(1, 2), planes.flatten(1, 2)], dim=1).unsqueeze(2)
        return torch.cat([y, x], dim=1) if x.shape[2:] == y.shape[2:] else torch.cat(
            [y.flatten(1, 2), x.flatten(1, 2)], dim=1).unsqueeze(2)
    yf = y.unsqueeze(-1) if y.dim() == 2 else y
    xf = x.float().unsqueeze(-1) if x.dim() == 2 else x.float()
    if xf.shape[1] <= yf.shape[1]:
        pad = yf.new_zeros(yf.shape[0], yf.shape[1] - xf.shape[1], xf.shape[2])
        return torch.cat([yf, torch.cat([pad, xf], dim=1)], dim=-1)  # aligned on the last step
    return torch.cat([yf.flatten(1), xf.flatten(1)], dim=1)


class OutputVariance(nn.Module):
    """Log-variance of the Gaussian decoder: per output element and z-dependent, or per element only.

    A z-dependent variance lets the network buy likelihood by declaring hard pixels noisy, which
    starves their means of gradient (the gradient of the mean is scaled by 1/variance); on the image
    tasks the means then never leave the average frame. A learned variance per output element that
    does not depend on z keeps every mean's gradient alive and the likelihood still in nats.
    """

    def __init__(self, mode: str, out_shape: tuple[int, ...], min_logvar: float):
        super().__init__()
        self.mode, self.min_logvar = mode, min_logvar
        if mode == "shared":
            self.raw = nn.Parameter(torch.zeros(out_shape))
        elif mode != "conditional":
            raise ValueError(f"unknown output_variance {mode!r} (known: conditional, shared)")

    @property
    def n_heads(self) -> int:
        return 2 if self.mode == "conditional" else 1

    def forward(self, mean, raw=None):
        raw = self.raw.expand_as(mean) if self.mode == "shared" else raw
        return self.min_logvar + F.softplus(raw - self.min_logvar)  # a soft floor, smooth for Adam

    @torch.no_grad()
    def start_at(self, targets: torch.Tensor) -> None:
        """Start the shared log-variance at the training targets' variance, what a constant mean leaves.

        From 0 (variance 1) Adam would need thousands of steps to reach pixel variances near 1e-3, and
        until then the likelihood term weighs far less against the KL term than it will at the end.
        """
        if self.mode != "shared":
            return
        logvar = targets.float().var(dim=0).clamp(min=1e-12).log()
        excess = (logvar - self.min_logvar).clamp(min=1e-3)
        self.raw.copy_(self.min_logvar + torch.log(torch.expm1(excess)))


class Decoder(nn.Module):
    def __init__(self, d: int, hidden: int, out_shape: tuple[int, ...], min_logvar: float,
                 output_variance: str = "conditional"):
        super().__init__()
        self.out_shape = tuple(out_shape)
        n_out = math.prod(self.out_shape)
        self.var = OutputVariance(output_variance, self.out_shape, min_logvar)
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * hidden), nn.ReLU(),
                                 nn.Linear(2 * hidden, self.var.n_heads * n_out))

    def forward(self, z):
        heads = [h.reshape(-1, *self.out_shape) for h in self.net(z).chunk(self.var.n_heads, dim=-1)]
        return heads[0], self.var(*heads)


class FrameDecoder(nn.Module):
    """Frame targets [H, C, S, S]: an MLP draws the frames, and a per-channel gain from z colours them.

    The gain makes a frame's colour three numbers that every lit pixel's error informs at once. Drawn
    pixel by pixel, colour is a small correction on each pixel of a blurry, uncertain blob, and the
    models never learned it within a CPU budget (every prediction came out grey). An MLP over all
    pixels is also several times faster per epoch than a per-pixel broadcast decoder and renders
    digit shapes that the 1x1 broadcast decoder could not.
    """

    def __init__(self, d: int, hidden: int, out_shape: tuple[int, ...], min_logvar: float,
                 output_variance: str = "conditional"):
        super().__init__()
        self.frames = Decoder(d, hidden, out_shape, min_logvar, output_variance)
        n_channels = out_shape[1]
        self.gain = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_channels))
        nn.init.zeros_(self.gain[-1].weight)  # starts as the plain MLP decoder
        nn.init.zeros_(self.gain[-1].bias)

    def forward(self, z):
        mean, logvar = self.frames(z)
        return mean * (1 + self.gain(z))[:, None, :, None, None], logvar


class BroadcastDecoder(nn.Module):
    """Spatial broadcast decoder for frame targets: z tiled over the image with pixel coordinates.

    Kept as an option (``model.frame_decoder: broadcast``); with 1x1 convolutions it learned neither
    digit shapes nor colours on the CPU budget, and is the slower of the two.
    """

    def __init__(self, d: int, channels: int, out_shape: tuple[int, ...], min_logvar: float,
                 output_variance: str = "conditional"):
        super().__init__()
        self.out_shape = tuple(out_shape)  # (H, C, S, S)
        H, C, S, _ = self.out_shape
        self.var = OutputVariance(output_variance, self.out_shape, min_logvar)
        lin = torch.linspace(-1, 1, S)
        self.register_buffer("coords", torch.stack(torch.meshgrid(lin, lin, indexing="ij"))[None], persistent=False)
        self.net = nn.Sequential(
            nn.Conv2d(d + 2, 2 * channels, 1), nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 1), nn.ReLU(),
            nn.Conv2d(2 * channels, self.var.n_heads * H * C, 1),
        )

    def forward(self, z):
        B, S = z.shape[0], self.out_shape[-1]
        grid = torch.cat([z[:, :, None, None].expand(B, z.shape[1], S, S), self.coords.expand(B, 2, S, S)], 1)
        heads = [h.reshape(B, *self.out_shape) for h in self.net(grid).chunk(self.var.n_heads, dim=1)]
        return heads[0], self.var(*heads)


def gaussian_loglik(target, mean, logvar) -> torch.Tensor:
    """Log-density per example, summed over output elements (nats)."""
    ll = -0.5 * (LOG_2PI + logvar + (target - mean) ** 2 / logvar.exp())
    return ll.flatten(1).sum(1)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per example, summed over latent dimensions."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


class TEBNet(nn.Module):
    """Every variant: a context c from the target history, a source latent s, a decoder d(y'|c, s).

    The source latent lives in its own space: e(s|x,c) = N(mu_x, sigma_x^2) and q(s|c) =
    N(m(c), sigma_q(c)^2), so the KL term is the same whichever way s reaches the decoder.
    ``model.latent: concat`` hands the decoder [c, s]; ``add`` hands it c + s (z = c_mu + offset,
    the authors' ``latent_type: add``). With ``add`` the posterior noise also lands on the context
    dimensions that the decoder must read to use the target history, so the TE estimate at zero
    coupling carries the estimator's Jensen gap (log E_q d above E_q log d) for as long as training
    has not shrunk that noise: -0.002 nats with a standard error of 2e-5 after a CPU budget. With
    ``concat`` the decoder can simply stop listening to s when s carries nothing. Models without a
    source latent (target-only, joint) use s = 0, so TEB from context starts from the target model's
    decoder with nothing changed.
    """

    def __init__(self, variant: str, y_example, x_example, target_example, mcfg: dict, n_classes: int = 10):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown TEB variant {variant!r} (known: {', '.join(VARIANTS)})")
        self.variant = variant
        self.frozen_context = variant == "teb"
        d, hidden = mcfg["latent_dim"], mcfg["hidden"]
        self.latent_dim = d
        self.n_classes = n_classes
        self.latent = mcfg.get("latent", "concat")
        if self.latent not in ("concat", "add"):
            raise ValueError(f"unknown model.latent {self.latent!r} (known: concat, add)")
        if variant == "joint":
            self.enc_y = make_encoder(joint_input(y_example, x_example, n_classes), mcfg, n_classes)
        else:
            self.enc_y = make_encoder(y_example, mcfg, n_classes)
        self.ctx = nn.Linear(hidden, d)
        out_shape, variance = tuple(target_example.shape[1:]), mcfg.get("output_variance", "auto")
        if variance == "auto":
            variance = "shared" if target_example.dim() == 5 else "conditional"
        d_in = 2 * d if self.latent == "concat" else d
        if target_example.dim() == 5 and mcfg.get("frame_decoder", "mlp") == "broadcast":
            self.decoder = BroadcastDecoder(d_in, mcfg["channels"], out_shape, mcfg["min_logvar"], variance)
        elif target_example.dim() == 5:
            self.decoder = FrameDecoder(d_in, hidden, out_shape, mcfg["min_logvar"], variance)
        else:
            self.decoder = Decoder(d_in, hidden, out_shape, mcfg["min_logvar"], variance)
        if variant in ("target", "joint"):
            return
        self.enc_x = make_encoder(x_example, mcfg, n_classes)
        # Prior q(s|c) = N(m(c), sigma_q(c)^2), learned. The mean m (zero at the start) lets the prior
        # follow the source code's mean given the context: the encoder codes x itself rather than what
        # the target history does not predict about it (corr. 0.99 with x on the AR task), and a prior
        # held at 0 is then too wide given c, which inflates the TE estimate (+0.08 nats at c = 0.3).
        self.prior_mean = nn.Linear(hidden, d)
        nn.init.zeros_(self.prior_mean.weight)
        nn.init.zeros_(self.prior_mean.bias)
        self.prior_logvar = nn.Linear(hidden, d)
        nn.init.zeros_(self.prior_logvar.weight)
        # The prior starts equal to the initial posterior (KL 0). From a unit variance Adam needs far
        # more steps than a CPU run has to bring it to the encoder's spread, and a too-wide prior
        # inflates both the KL term and the TE estimate.
        nn.init.constant_(self.prior_logvar.bias, math.log(mcfg["x_init_variance"]))
        if variant != "teb":
            self.cond = nn.Linear(hidden, d)  # TEB_0's conditioning vector (the third d of the target head)
        self.post = nn.Sequential(nn.Linear(hidden + d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d))
        last = self.post[-1]
        # No information flows from the source at the start: zero offset, small variance.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            last.bias[d:] = math.log(mcfg["x_init_variance"])

    @classmethod
    def from_target(cls, target: "TEBNet", variant: str, y_example, x_example, target_example, mcfg: dict,
                    n_classes: int = 10) -> "TEBNet":
        """TEB from context: reuse the trained target encoder, context head and decoder."""
        net = cls(variant, y_example, x_example, target_example, mcfg, n_classes)
        net.enc_y.load_state_dict(target.enc_y.state_dict())
        net.ctx.load_state_dict(target.ctx.state_dict())
        net.decoder.load_state_dict(copy.deepcopy(target.decoder.state_dict()))
        for p in (*net.enc_y.parameters(), *net.ctx.parameters()):
            p.requires_grad_(False)
        return net

    def start_output_variance(self, targets: torch.Tensor) -> None:
        for m in self.decoder.modules():
            if isinstance(m, OutputVariance):
                m.start_at(targets)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "frozen_context", False):
            self.enc_y.eval()  # the target model stays in eval mode, as in the authors' second stage
        return self

    def encode(self, y, x):
        """Context mean, and for source models the posterior e(s|x,c) and prior q(s|c) parameters."""
        if self.variant == "joint":
            h = self.enc_y(joint_input(y, x, self.n_classes))
            return {"c_mu": self.ctx(h)}
        if self.frozen_context:
            with torch.no_grad():
                h = self.enc_y(y)
                c_mu = self.ctx(h)
        else:
            h = self.enc_y(y)
            c_mu = self.ctx(h)
        out = {"c_mu": c_mu}
        if self.variant == "target":
            return out
        cond = c_mu if self.frozen_context else self.cond(h)
        mu_x, logvar_x = self.post(torch.cat([self.enc_x(x), cond], dim=-1)).chunk(2, dim=-1)
        out.update(mu_x=mu_x, logvar_x=logvar_x, prior_mu=self.prior_mean(h), prior_logvar=self.prior_logvar(h))
        return out

    def kl(self, enc) -> torch.Tensor:
        return gaussian_kl(enc["mu_x"], enc["logvar_x"], enc["prior_mu"], enc["prior_logvar"])

    def decoder_input(self, c_mu: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """What the decoder reads: [c, s] or c + s; s = None (no source latent) means s = 0."""
        if s is None:
            s = torch.zeros_like(c_mu)
        c_mu = c_mu.expand_as(s) if s.dim() > c_mu.dim() else c_mu
        return torch.cat([c_mu, s], dim=-1) if self.latent == "concat" else c_mu + s

    def sample_s(self, enc, sample: bool = True):
        if self.variant in ("target", "joint"):
            return None
        s = enc["mu_x"]
        if sample and self.variant in STOCHASTIC:
            s = s + torch.randn_like(s) * (0.5 * enc["logvar_x"]).exp()
        return s

    def sample_z(self, enc, sample: bool = True):
        return self.decoder_input(enc["c_mu"], self.sample_s(enc, sample))

    def loss(self, y, x, target, beta: float | None) -> tuple[torch.Tensor, dict]:
        """The minimised objective: beta * E[-log d(y'|z)] + KL for TEB/TEB_0, the NLL otherwise."""
        enc = self.encode(y, x)
        mean, logvar = self.decoder(self.sample_z(enc))
        nll = -gaussian_loglik(target, mean, logvar)
        if self.variant in STOCHASTIC:
            kl = self.kl(enc)
            return (beta * nll + kl).mean(), {"nll": nll.mean().item(), "kl": kl.mean().item()}
        return nll.mean(), {"nll": nll.mean().item(), "kl": float("nan")}

    def _loglik_of_samples(self, target, c_mu, s_draws: torch.Tensor, chunk_rows: int = 1 << 14) -> torch.Tensor:
        """log d(y'|c, s) for source-latent draws [S, B, d], as float64 [S, B] (decoded in slices).

        Slices stay small: intermediates above glibc's 32 MB mmap threshold are returned to the kernel
        when freed and faulted in again by the next slice, which made half of an evaluation system time.
        """
        S, B, _ = s_draws.shape
        n_out = max(1, target[0].numel())
        step = max(1, chunk_rows // (B * n_out))
        out = []
        for s in range(0, S, step):
            zs = self.decoder_input(c_mu, s_draws[s:s + step].to(c_mu.dtype))
            k = zs.shape[0]
            mean, logvar = self.decoder(zs.reshape(k * B, -1))
            t = target.unsqueeze(0).expand(k, *target.shape).reshape(k * B, *target.shape[1:])
            out.append(gaussian_loglik(t, mean, logvar).view(k, B).double())
        return torch.cat(out)

    @torch.no_grad()
    def te_terms(self, y, x, target, posterior_samples: int = 16, prior_samples: int = 256) -> dict[str, torch.Tensor]:
        """Per-example TE estimate of a stochastic model on its own network, and the KL term it cannot exceed.

        te = (1/S) sum_s log d(y'|z_s) - L,  z_s ~ e(z|x,c),   where L estimates log E_{z~q(z|c)} d(y'|z).

        Why te <= KL(e||q) for every example, exactly and not only in expectation: by Donsker-Varadhan
        (Gibbs' inequality), E_e[f] - log E_q[e^f] <= KL(e||q) for any f, here f = log d(y'|.). Its
        finite-sample version needs L to be at least (1/S) sum_s [log d(y'|z_s) - log e(z_s)/q(z_s)]:

        * The S posterior draws are moment-matched: eps is standardised per example and latent
          dimension to sample mean 0 and variance 1, so (1/S) sum_s log e(z_s)/q(z_s), a quadratic in
          eps per dimension, equals the analytic diagonal-Gaussian KL exactly.
        * L_is = log (1/S) sum_s d(y'|z_s) q(z_s)/e(z_s), importance sampling of E_q[d] on the same
          draws, is >= (1/S) sum_s [log d(y'|z_s) + log q(z_s)/e(z_s)] by Jensen, = mean log d - KL.
        * L_q = log (1/M) sum_m d(y'|z_m), z_m ~ q(z|c), the plain Monte Carlo estimate (log-mean-exp).
          It is the accurate one when e is narrow, but like every log-mean-exp it is biased low, and on
          its own nothing stops it from putting te above the KL term.
        * L = max(L_q, L_is). Both estimate the same quantity from below, so the larger is the better
          estimate, and L >= L_is gives te <= KL. ``bound_active`` marks examples where L_is won.

        The KL term bounds I(X;Z|C). te estimates I(Z;Y'|C) <= TE to the extent that the prior q(z|c)
        matches the encoder's aggregate posterior given c; where it does not, te can overshoot
        I(Z;Y'|C) (by at most how much worse q's predictive mixture models y' given c), never the KL.
        ``mc_se`` is the delta-method Monte Carlo standard error of L_q (nats).
        """
        if self.variant not in STOCHASTIC:
            raise ValueError(f"variant {self.variant!r} has no stochastic latent")
        if posterior_samples < 2 or prior_samples < 1:
            raise ValueError("te_terms needs >= 2 posterior samples (moment matching) and >= 1 prior sample")
        enc = self.encode(y, x)
        mu_e, lv_e = enc["mu_x"].double(), enc["logvar_x"].double()
        mu_q, lv_q = enc["prior_mu"].double(), enc["prior_logvar"].double()
        B, d = mu_e.shape
        S, M = posterior_samples, prior_samples
        eps = torch.randn(S, B, d, dtype=torch.float64)
        eps = (eps - eps.mean(0)) / eps.std(0, unbiased=False).clamp(min=1e-12)
        z_e = mu_e + (0.5 * lv_e).exp() * eps
        ll_e = self._loglik_of_samples(target, enc["c_mu"], z_e)
        # log q(z)/e(z) per draw; the log 2 pi terms cancel.
        log_ratio = 0.5 * (lv_e - lv_q + eps**2 - (z_e - mu_q) ** 2 / lv_q.exp()).sum(-1)
        post = ll_e.mean(0)
        l_is = torch.logsumexp(ll_e + log_ratio, 0) - math.log(S)
        z_q = mu_q + (0.5 * lv_q).exp() * torch.randn(M, B, d, dtype=torch.float64)
        ll_q = self._loglik_of_samples(target, enc["c_mu"], z_q)
        l_q = torch.logsumexp(ll_q, 0) - math.log(M)
        w = (ll_q - ll_q.max(0).values).exp()
        mc_se = w.std(0, unbiased=True) / (w.mean(0) * math.sqrt(M)) if M > 1 else torch.full_like(l_q, float("nan"))
        log_marginal = torch.maximum(l_q, l_is)
        return {
            "te": post - log_marginal,
            "kl": gaussian_kl(mu_e, lv_e, mu_q, lv_q),
            "post_loglik": post,
            "log_marginal": log_marginal,
            "log_marginal_prior": l_q,
            "mc_se": mc_se,
            "bound_active": l_is > l_q,
            # the model's predictive density p(y'|y,x), the mixture over e(z|x,c)
            "loglik": torch.logsumexp(ll_e, 0) - math.log(S),
        }

    @torch.no_grad()
    def source_log_density(self, y, xs, target) -> torch.Tensor:
        """log d(y'|c, s(x_k)) for K candidate source windows per example, float64 [B, K].

        The contrastive bound's critic: the decoder read at the posterior mean of s for each candidate
        x_k (xs: [B, K, *x.shape[1:]]), the target history encoded once. Any critic gives a valid
        bound; this one costs one decode per candidate.
        """
        B, K = xs.shape[:2]
        flat_x = xs.reshape(B * K, *xs.shape[2:])

        def rep(t):
            return t.unsqueeze(1).expand(B, K, *t.shape[1:]).reshape(B * K, *t.shape[1:])

        if self.variant == "target":
            raise ValueError("the target-only model reads no source")
        if self.variant == "joint":
            enc = self.encode(rep(y), flat_x)
            z = self.sample_z(enc, sample=False)
        else:
            h = self.enc_y(y)
            c_mu = self.ctx(h)
            cond = c_mu if self.frozen_context else self.cond(h)
            mu_x, _ = self.post(torch.cat([self.enc_x(flat_x), rep(cond)], dim=-1)).chunk(2, dim=-1)
            z = self.decoder_input(rep(c_mu), mu_x)
        mean, logvar = self.decoder(z)
        return gaussian_loglik(rep(target), mean, logvar).double().view(B, K)

    @torch.no_grad()
    def predictive(self, y, x, target, posterior_samples: int = 16, prior_samples: int = 256) -> dict[str, torch.Tensor]:
        """Point prediction and log p(y'|inputs) per example; for TEB / TEB_0 also the TE terms."""
        enc = self.encode(y, x)
        point_mean, _ = self.decoder(self.sample_z(enc, sample=False))
        out = {"point_mean": point_mean}
        if self.variant in STOCHASTIC:
            out.update(self.te_terms(y, x, target, posterior_samples, prior_samples))
        else:
            out["loglik"] = gaussian_loglik(target, *self.decoder(self.sample_z(enc, sample=False))).double()
        return out
