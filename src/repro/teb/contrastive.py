"""Conditional contrastive (InfoNCE) lower bound on the transfer entropy, and its negative samplers.

For a held-out window (target history y, source x_0, target future f) and K - 1 negatives
x_1..x_{K-1} drawn independently from p(x | y) -- the source's law given the history, *not* given f --

    TE = I(X; F | Y) >= E[ log f(x_0) - log (1/K) sum_{k=0}^{K-1} f(x_k) ]        (critic f > 0)

with f(x) = f(x, y, f) any positive function, and every window's value is at most log K (the positive
is one of the K terms of the mean). With negatives from the marginal p(x) instead, the optimal critic's
value tends (K -> inf) to TE + E_y KL(p(f | y) || int p(f | y, x) p(x) dx), above the TE wherever the
history and the source are dependent: that is no bound (tests/test_teb_contrastive.py shows it).

The critic is a trained model's log-density of the future, tempered: log f = tau * log q(f | y, x).
Any tau >= 0 gives a valid critic; tau is chosen on validation windows only (choose_tau) so that the
test-split value stays a lower bound in expectation, and tau = 0 (f = 1) gives exactly 0.

The samplers return source windows shaped [N, n_neg, *x.shape[1:]] in split["x"]'s dtype. They hold
n_neg copies of every window's source: call them on slices of a split to bound memory (a needle window
of 6 frames of 3 x 16 x 16 bytes is 4.6 kB per negative).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .exact import (
    SINE_MULTIPLIERS,
    ar_window_cov,
    digits_next_label_probs,
    gaussian_conditional,
    needle_colour_prior,
)
from .tasks import PATCH_COLOURS, noisy_patches

# tau = 0 (the always-valid zero bound) and 1e-3 .. 1 log-spaced; 1 is the model's own density.
DEFAULT_TAUS = (0.0, *(float(t) for t in np.logspace(-3, 0, 13)))


class Bound(NamedTuple):
    values: torch.Tensor  # per-window bound [N], float64
    mean: float
    se: float  # standard error of the mean over windows (windows taken as independent)
    log_k: float  # the ceiling log K of every window's value


def _as_tensor(a) -> torch.Tensor:
    return a.double() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a), dtype=torch.float64)


def infonce_bound(log_f_pos, log_f_neg) -> Bound:
    """Per-window log f(x_0) - log((1/K) sum_{k<K} f(x_k)), the mean including the positive.

    ``log_f_pos`` [N], ``log_f_neg`` [N, K - 1] (log-critic values; -inf allowed for negatives).
    """
    pos, neg = _as_tensor(log_f_pos), _as_tensor(log_f_neg)
    if pos.ndim != 1 or neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"log_f_pos must be [N] and log_f_neg [N, K-1], got {tuple(pos.shape)} and {tuple(neg.shape)}")
    K = neg.shape[1] + 1
    log_k = math.log(K)
    values = pos - (torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - log_k)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return Bound(values, mean, se, log_k)


def temper(log_density_pos, log_density_neg, taus=DEFAULT_TAUS) -> dict[float, Bound]:
    """The bound with critic log f = tau * log q for each tau (tau = 0 is f = 1: exactly 0)."""
    pos, neg = _as_tensor(log_density_pos), _as_tensor(log_density_neg)
    out = {}
    for tau in taus:
        tau = float(tau)
        if tau < 0:
            raise ValueError(f"tau must be >= 0 (a negative tau rewards the wrong source), got {tau}")
        if tau == 0:
            # 0 * (-inf) would be nan; the constant critic is exactly 0 whatever the densities.
            out[tau] = infonce_bound(torch.zeros_like(pos), torch.zeros_like(neg))
        else:
            out[tau] = infonce_bound(tau * pos, tau * neg)
    return out


def choose_tau(log_density_pos, log_density_neg, taus=DEFAULT_TAUS) -> tuple[float, dict[float, Bound]]:
    """tau maximising the mean bound on these (validation) windows; ties go to the smallest tau.

    Choosing tau on the windows that are then reported would let the choice fit their noise, and the
    reported value would no longer be a lower bound in expectation: pass validation windows here and
    apply the chosen tau to the test windows (``tempered_bound``).
    """
    bounds = temper(log_density_pos, log_density_neg, taus)
    best = max(bounds, key=lambda t: (bounds[t].mean if math.isfinite(bounds[t].mean) else -math.inf, -t))
    return best, bounds


def tempered_bound(val_pos, val_neg, test_pos, test_neg, taus=DEFAULT_TAUS) -> tuple[float, Bound]:
    """(tau chosen on validation, the test windows' bound at that tau)."""
    tau, _ = choose_tau(val_pos, val_neg, taus)
    return tau, temper(test_pos, test_neg, (tau,))[tau]


# --------------------------------------------------------------------------------------------------
# Negative samplers: x ~ p(x | target history) under each task's generator


def _matmul(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """a [..., i] @ m [i, j]; einsum, since BLAS matmul of millions of 2-long rows is ~10x slower."""
    return np.einsum("...i,ij->...j", a, m)


def _ar_cov(spec: dict):
    params = {q: spec[q] for q in ("a", "b", "c", "sigma_x", "sigma_y")}
    return ar_window_cov(**params, k=spec["source_lags"], l=spec["target_lags"], H=spec["horizon"])


def _ar_negatives(split: dict, spec: dict, n_neg: int, rng: np.random.Generator) -> torch.Tensor:
    cov, idx = _ar_cov(spec)
    coef, cond = gaussian_conditional(cov, idx["x"], idx["y"])
    mean = split["y"].double().numpy() @ coef  # [N, k]
    z = rng.standard_normal((len(mean), n_neg, len(idx["x"])))
    x = mean[:, None, :] + _matmul(z, np.linalg.cholesky(cond).T)
    return torch.tensor(x, dtype=split["x"].dtype)


def sample_marginal_negatives(split: dict, spec: dict, n_neg: int, rng: np.random.Generator) -> torch.Tensor:
    """AR source windows from their marginal p(x), ignoring the history: the negative control only,
    since with these negatives the InfoNCE value is not a bound on the TE."""
    if spec["kind"] != "ar":
        raise ValueError("marginal negatives are implemented for the AR task only")
    cov, idx = _ar_cov(spec)
    sxx = cov[np.ix_(idx["x"], idx["x"])]
    z = rng.standard_normal((len(split["y"]), n_neg, len(idx["x"])))
    return torch.tensor(_matmul(z, np.linalg.cholesky(sxx).T), dtype=split["x"].dtype)


def ar_conditional_log_density(spec: dict, y, x, target) -> torch.Tensor:
    """log p(target | y, x) of the AR task's generator (the optimal critic), float64.

    ``y`` [N, l], ``target`` [N, H], ``x`` [N, k] or [N, K, k] (then the result is [N, K]).
    """
    cov, idx = _ar_cov(spec)
    coef, cond = gaussian_conditional(cov, idx["target"], idx["y"] + idx["x"])
    y, x, t = (_as_tensor(v).numpy() for v in (y, x, target))
    l = len(idx["y"])
    cy, cx = coef[:l], coef[l:]
    mean = (y @ cy)[:, None, :] + _matmul(x if x.ndim == 3 else x[:, None, :], cx)  # [N, K, H]
    r = t[:, None, :] - mean
    chol = np.linalg.cholesky(cond)
    sol = _matmul(r, np.linalg.inv(chol).T)  # whitened residuals
    logdet = 2 * np.log(np.diag(chol)).sum()
    out = -0.5 * ((sol**2).sum(-1) + logdet + len(idx["target"]) * math.log(2 * math.pi))
    return torch.tensor(out if x.ndim == 3 else out[:, 0])


def _sines_negatives(split: dict, spec: dict, n_neg: int, rng: np.random.Generator) -> torch.Tensor:
    # The history is independent of the permutation, the switch and the label noise, so p(x | y) = p(x):
    # redraw all of them exactly as make_sines_split does (a switch to the same multiplier included).
    M = np.asarray(SINE_MULTIPLIERS)
    N, k = len(split["x"]), spec["source_lags"]
    n = N * n_neg
    mult = M[rng.permuted(np.tile(np.arange(len(M)), (n, 1)), axis=1)]
    switching = rng.random(n) < spec["switch_prob"]
    which = rng.integers(0, len(M), n)
    new = rng.choice(M, n)
    clean = np.repeat(mult[:, None, :], k, axis=1)
    rows = np.nonzero(switching)[0]
    clean[rows, k - 1, which[rows]] = new[rows]
    x = clean + rng.uniform(-spec["label_noise"], spec["label_noise"], clean.shape)
    return torch.tensor(x.reshape(N, n_neg, k, len(M)), dtype=split["x"].dtype)


def _digits_negatives(split: dict, spec: dict, info: dict, n_neg: int, rng: np.random.Generator,
                      split_name: str, history_labels) -> torch.Tensor:
    x = split["x"]
    N, k = x.shape
    if history_labels is None:
        if k < 2:
            raise ValueError("with source_lags = 1 the source does not show the history's digit: pass history_labels")
        history_labels = x[:, 0]
    c = np.asarray(history_labels, dtype=np.int64)
    try:
        counts = info["pool_label_counts"][split_name]
    except (KeyError, TypeError):
        raise ValueError(f"digits negatives need info['pool_label_counts'][{split_name!r}] (tasks.make_digits)") from None
    cdf = np.cumsum(digits_next_label_probs(counts, spec["switch_prob"])[c], axis=1)  # [N, C]
    u = rng.random((N, n_neg))
    last = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(-1), cdf.shape[1] - 1)
    out = np.empty((N, n_neg, k), dtype=np.int64)
    out[:, :, :-1] = x[:, None, :-1].numpy()  # the earlier labels equal the history's digit
    out[:, :, -1] = last
    return torch.tensor(out, dtype=x.dtype)


def needle_history_colour(y: torch.Tensor, history: int) -> np.ndarray:
    """The ball colour index [N] shown by the history frames ``y[:, :history]`` (uint8 [N, l, 3, S, S]).

    Balls are drawn in (2 level + 1) / 3 per channel, so at the brightest pixel a channel at level 1
    reads three times one at level 0; 2/3 of the brightest channel separates them.
    """
    f = y[:, :history].double()
    N = f.shape[0]
    flat = f.permute(0, 1, 3, 4, 2).reshape(N, -1, 3)
    rgb = flat[torch.arange(N), flat.sum(-1).argmax(1)]  # [N, 3]
    if (rgb.max(1).values <= 0).any():
        raise ValueError("a needle history shows no ball")
    pattern = (rgb > (2 / 3) * rgb.max(1, keepdim=True).values).numpy()
    palette = PATCH_COLOURS > 0.5
    hit = (pattern[:, None, :] == palette[None]).all(-1)  # [N, colours]
    if not hit.any(1).all():
        raise ValueError("a needle history's ball colour is not in the palette")
    return hit.argmax(1)


def _needle_negatives(split: dict, spec: dict, n_neg: int, rng: np.random.Generator) -> torch.Tensor:
    y, x = split["y"], split["x"]
    l, nd = spec["history"], spec["distractors"]
    N, S = len(y), x.shape[-1]
    ncol = len(PATCH_COLOURS)
    colour = needle_history_colour(y, l)
    # The next colour given the history colour (the generator's switch: any other colour uniformly).
    cdf = np.cumsum(needle_colour_prior(spec["switch_prob"], ncol)[colour], axis=1)
    nxt = np.minimum((rng.random((N, n_neg))[:, :, None] >= cdf[:, None, :]).sum(-1), ncol - 1)
    needle = np.round(np.clip(noisy_patches(nxt, spec["label_noise"], rng), 0, 1) * 255).astype(np.uint8)
    pos = rng.integers(0, nd + 1, (N, n_neg))
    if nd:
        dis = y[:, l:, :, 1, 1].numpy()  # [N, nd, 3]: the history's copies of the source's distractors
        slot = np.arange(nd + 1)
        j = np.clip(slot - (slot > pos[..., None]), 0, nd - 1)  # [N, n_neg, nd + 1]
        pix = dis[np.arange(N)[:, None, None], j]
        pix = np.where((slot == pos[..., None])[..., None], needle[:, :, None, :], pix)
    else:
        pix = needle[:, :, None, :]
    out = np.zeros((N, n_neg, nd + 1, 3, S, S), dtype=np.uint8)
    out[..., 1, 1] = pix
    return torch.tensor(out, dtype=x.dtype)


def sample_negatives(kind: str, split: dict, spec: dict, info: dict | None, n_neg: int, rng: np.random.Generator,
                     *, split_name: str = "test", history_labels=None) -> torch.Tensor:
    """n_neg source windows per window from the generator's p(x | target history): [N, n_neg, *x.shape[1:]].

    ``split_name`` picks the digit pool (its label counts) the split was drawn from; ``history_labels``
    gives the digits history labels where the source does not show them (source_lags = 1).
    """
    if n_neg < 1:
        raise ValueError(f"n_neg must be >= 1, got {n_neg}")
    if kind == "ar":
        return _ar_negatives(split, spec, n_neg, rng)
    if kind == "sines":
        return _sines_negatives(split, spec, n_neg, rng)
    if kind == "digits":
        return _digits_negatives(split, spec, info, n_neg, rng, split_name, history_labels)
    if kind == "needle":
        return _needle_negatives(split, spec, n_neg, rng)
    raise ValueError(f"unknown task kind {kind!r} (ar, sines, digits, needle)")
