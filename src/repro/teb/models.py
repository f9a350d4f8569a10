"""Networks of the TEB study: target-only model, TEB from context, TEB_0 and the baselines.

One network class (``TEBNet``) covers every variant, so the TE estimate compares models that differ
only in how the source enters:

* ``target``        z = c_mu(y): the target-only model d_Y(y'|c)
* ``teb``           TEB from context: c_mu and the encoder of the trained target model are frozen;
                    z ~ e(z|x,c) = N(c_mu + mu_x, sigma_x^2), prior q(z|c) = N(c_mu, sigma_c^2)
* ``teb0``          TEB_0: the same, trained jointly from scratch (prior learned with everything)
* ``deterministic`` the TEB_0 network with z = c_mu + mu_x: no bottleneck, no KL term
* ``joint``         a target model whose input is the target history with the source concatenated

The decoder predicts a mean and a log-variance per output element (Gaussian), so log-likelihoods
and their differences are in nats.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("target", "teb", "teb0", "deterministic", "joint")
STOCHASTIC = ("teb", "teb0")
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

    The pooled features hand global properties (a ball's colour, a one-pixel label) straight to the
    latent; a CNN alone needs many more epochs than a CPU run has to route them through its layers.
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

    def forward(self, t):
        t = t.flatten(1, 2)
        pooled = torch.cat([t.amax(dim=(2, 3)), t.mean(dim=(2, 3))], dim=1)
        return self.out(torch.cat([self.conv(t).flatten(1), pooled], dim=1))


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


class Decoder(nn.Module):
    def __init__(self, d: int, hidden: int, out_shape: tuple[int, ...], min_logvar: float):
        super().__init__()
        self.out_shape = tuple(out_shape)
        n_out = math.prod(self.out_shape)
        self.min_logvar = min_logvar
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * hidden), nn.ReLU(),
                                 nn.Linear(2 * hidden, 2 * n_out))

    def forward(self, z):
        mean, raw = self.net(z).chunk(2, dim=-1)
        logvar = self.min_logvar + F.softplus(raw - self.min_logvar)  # a soft floor, smooth for Adam
        return mean.view(-1, *self.out_shape), logvar.view(-1, *self.out_shape)


class BroadcastDecoder(nn.Module):
    """Spatial broadcast decoder for frame targets: z tiled over the image with pixel coordinates.

    A per-pixel network of (z, position) draws objects at positions read from z far more easily than
    an MLP emitting every pixel, which matters for the few epochs a CPU run affords.
    """

    def __init__(self, d: int, channels: int, out_shape: tuple[int, ...], min_logvar: float):
        super().__init__()
        self.out_shape = tuple(out_shape)  # (H, C, S, S)
        H, C, S, _ = self.out_shape
        self.min_logvar = min_logvar
        lin = torch.linspace(-1, 1, S)
        self.register_buffer("coords", torch.stack(torch.meshgrid(lin, lin, indexing="ij"))[None], persistent=False)
        self.net = nn.Sequential(
            nn.Conv2d(d + 2, 2 * channels, 1), nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 1), nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * H * C, 1),
        )

    def forward(self, z):
        B, S = z.shape[0], self.out_shape[-1]
        grid = torch.cat([z[:, :, None, None].expand(B, z.shape[1], S, S), self.coords.expand(B, 2, S, S)], 1)
        mean, raw = self.net(grid).chunk(2, dim=1)
        logvar = self.min_logvar + F.softplus(raw - self.min_logvar)
        return mean.reshape(B, *self.out_shape), logvar.reshape(B, *self.out_shape)


def gaussian_loglik(target, mean, logvar) -> torch.Tensor:
    """Log-density per example, summed over output elements (nats)."""
    ll = -0.5 * (LOG_2PI + logvar + (target - mean) ** 2 / logvar.exp())
    return ll.flatten(1).sum(1)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per example, summed over latent dimensions."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


class TEBNet(nn.Module):
    def __init__(self, variant: str, y_example, x_example, target_example, mcfg: dict, n_classes: int = 10):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown TEB variant {variant!r} (known: {', '.join(VARIANTS)})")
        self.variant = variant
        self.frozen_context = variant == "teb"
        d, hidden = mcfg["latent_dim"], mcfg["hidden"]
        self.n_classes = n_classes
        if variant == "joint":
            self.enc_y = make_encoder(joint_input(y_example, x_example, n_classes), mcfg, n_classes)
        else:
            self.enc_y = make_encoder(y_example, mcfg, n_classes)
        self.ctx = nn.Linear(hidden, d)
        if target_example.dim() == 5:
            self.decoder = BroadcastDecoder(d, mcfg["channels"], tuple(target_example.shape[1:]), mcfg["min_logvar"])
        else:
            self.decoder = Decoder(d, hidden, tuple(target_example.shape[1:]), mcfg["min_logvar"])
        if variant in ("target", "joint"):
            return
        self.enc_x = make_encoder(x_example, mcfg, n_classes)
        self.prior_logvar = nn.Linear(hidden, d)
        nn.init.zeros_(self.prior_logvar.weight)
        nn.init.zeros_(self.prior_logvar.bias)
        if variant != "teb":
            self.cond = nn.Linear(hidden, d)  # TEB_0's conditioning vector (the third d of the target head)
        self.post = nn.Sequential(nn.Linear(hidden + d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d))
        last = self.post[-1]
        # No information flows from the source at the start: zero offset, (near-)zero variance.
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

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "frozen_context", False):
            self.enc_y.eval()  # the target model stays in eval mode, as in the authors' second stage
        return self

    def encode(self, y, x):
        """Context mean, and for source models the posterior and prior parameters."""
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
        out.update(mu_x=mu_x, logvar_x=logvar_x, prior_logvar=self.prior_logvar(h))
        return out

    def kl(self, enc) -> torch.Tensor:
        mu_q = enc["c_mu"] + enc["mu_x"]
        return gaussian_kl(mu_q, enc["logvar_x"], enc["c_mu"], enc["prior_logvar"])

    def sample_z(self, enc, sample: bool = True):
        if self.variant in ("target", "joint"):
            return enc["c_mu"]
        z = enc["c_mu"] + enc["mu_x"]
        if sample and self.variant in STOCHASTIC:
            z = z + torch.randn_like(z) * (0.5 * enc["logvar_x"]).exp()
        return z

    def loss(self, y, x, target, beta: float | None) -> tuple[torch.Tensor, dict]:
        """The minimised objective: beta * E[-log d(y'|z)] + KL for TEB/TEB_0, the NLL otherwise."""
        enc = self.encode(y, x)
        mean, logvar = self.decoder(self.sample_z(enc))
        nll = -gaussian_loglik(target, mean, logvar)
        if self.variant in STOCHASTIC:
            kl = self.kl(enc)
            return (beta * nll + kl).mean(), {"nll": nll.mean().item(), "kl": kl.mean().item()}
        return nll.mean(), {"nll": nll.mean().item(), "kl": float("nan")}

    @torch.no_grad()
    def predictive_loglik(self, y, x, target, samples: int = 8) -> dict[str, torch.Tensor]:
        """log p(y'|inputs) per example: for TEB the mixture over e(z|x,c) by log-mean-exp of samples."""
        enc = self.encode(y, x)
        point_mean, _ = self.decoder(self.sample_z(enc, sample=False))
        out = {"point_mean": point_mean}
        if self.variant in STOCHASTIC:
            lls = torch.stack([gaussian_loglik(target, *self.decoder(self.sample_z(enc))) for _ in range(samples)])
            out["loglik"] = torch.logsumexp(lls, 0) - math.log(samples)
            out["kl"] = self.kl(enc)
        else:
            out["loglik"] = gaussian_loglik(target, *self.decoder(self.sample_z(enc, sample=False)))
        return out
