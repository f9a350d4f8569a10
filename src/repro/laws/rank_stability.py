"""Rank stability of LoRA adapters under the scaling factor gamma_r (rsLoRA, arXiv 2312.03732, Thm 3.2).

The claim checked. A LoRA adapter computes y = gamma_r B A x with A in R^{r x d_in}, B in R^{d_out x r}, B = 0
at init and A with an r-independent variance. Thm 3.2: in expectation over the init, the adapter's
activations and the gradients it back-propagates neither explode nor collapse as r grows (Theta_r(1))
if and only if gamma_r in Theta(1/sqrt r); the paper's experiments (Llama 2 7B, AdamW) show the same as
gradient norms of the adapter parameters that collapse with r under alpha/r and stay of one order of
magnitude under alpha/sqrt r (its Fig. 3; SGD in its appendix). Three rules are compared: gamma_r = alpha/r
(LoRA), alpha/sqrt r (rsLoRA) and alpha (constant). The paper predicts collapse / flat / explode.

The setting. One adapter layer per (rank, rule, init seed), float64, A drawn as peft draws it
(``kaiming_uniform_(a=sqrt(5))``: U(+-1/sqrt(d_in)), variance sigma = 1/(3 d_in)), trained for a few
steps on the linear loss L = sum(y * G) / n_inputs (X: n_inputs x d_in and G: n_inputs x d_out, iid
N(0, 1), shared by all seeds, ranks and rules), whose gradient with respect to the adapter output is the
Theta(1) matrix G / n_inputs; dL/dW = M = G^T X / n_inputs for the effective weight W = gamma_r B A. The
primary optimiser is Adam (betas 0.9/0.999, eps 1e-8, bias-corrected, as the paper trains); plain SGD is
kept as a contrast. Ranks stay well below d_in (default d_in = d_out = 512, r = 1..256): for r >~ d_in the
rows of A can no longer be near-orthogonal and a different regime starts (see the SGD forms below).

The measures, per adapter after n steps (exact expectations over fresh inputs, no Monte Carlo):

* ``output_moment``: mean squared entry of y = W x for x with iid unit-variance entries, ||W||_F^2 / d_out;
* ``input_grad_moment``: mean squared entry of the gradient g^T W that the adapter passes to its input for
  an output gradient g with iid unit-variance entries, ||W||_F^2 / d_in (so for one linear adapter both are
  the same number up to d_out / d_in and have the same slope in r);
* ``param_grad_norm``: the training-loss gradient norm of the adapter's parameters, the mean over the two
  tensors of ||dL/dA||_F and ||dL/dB||_F (the quantity of the paper's Fig. 3, defined as the fine-tuning
  runs of this pipeline log it); recorded at step 0 too, where dL/dA = 0;
* ``*_meanfield`` (contrast only): ||E_A W||_F^2 / d, the second moment of the init-*averaged* adapter,
  estimated without bias by the U-statistic over pairs of init seeds. Under SGD this is what the proof of
  Thm 3.2 tracks, and it is flat for alpha/sqrt r by linearity of expectation alone (E[A^T A] = r sigma I),
  whatever one trained adapter does; it says nothing about a single adapter.

The first three are *typical* quantities, E_A of a per-adapter number, i.e. what one fine-tuned adapter
does; they are the primary reported quantities. Each row also carries ``*_expected``: the leading-order
closed form below, evaluated on the same data.

Closed forms (n steps in the linear regime, A ~ A_0; F = ||M||_F^2; S = sign(M A_0^T)):

SGD. B_n = -n lr gamma M A^T, W_n = -n lr gamma^2 M A^T A, and E[(A^T A)^2] = r sigma^2 (r + d_in - 1/5) I
(uniform entries), so

    typical    E_A ||W_n||_F^2 = n^2 lr^2 gamma^4 sigma^2 r (r + d_in - 0.2) F,
    mean-field ||E_A W_n||_F^2 = n^2 lr^2 gamma^4 sigma^2 r^2 F,

with slopes of log(moment) vs log r of -3 / -1 / +1 (typical, r << d_in; -2 / 0 / +2 only for r >> d_in)
and -2 / 0 / +2 (mean-field) for LoRA / rsLoRA / constant. A single rsLoRA adapter trained by SGD from
this init therefore collapses like 1/r at r << d_in: A^T A is then ~ d_in sigma times a rank-r projection,
not r sigma I. Under SGD only the mean-field moment is flat for rsLoRA.

Adam. With B = 0 the gradient of A is 0 at step 1 and the gradient of B, gamma M A^T, stays nearly constant
over a few steps, so each bias-corrected Adam step moves B by lr sign(gradient), independently of gamma_r:
B_n = -n lr S and W_n = -n lr gamma S A. Since E_a[sign(m . a) a] = sqrt(2 sigma / pi) m / ||m||,

    typical    E_A ||W_n||_F^2 = n^2 lr^2 gamma^2 sigma d_out r (d_in + (2/pi)(r - 1)),
    mean-field ||E_A W_n||_F^2 = n^2 lr^2 gamma^2 (2 sigma / pi) d_out r^2,

so at r << d_in the typical slopes are -1 / 0 / +1: Adam removes one factor gamma_r^2 r from the SGD update
and a single rsLoRA adapter is rank-stable, as the paper's Adam experiments show, while LoRA's collapses like
1/r and the constant rule's explodes like r. (The Adam mean-field moment, 0 / +1 / +2, is flat for LoRA,
not for rsLoRA.) The (2/pi)(r - 1)/d_in term tilts the fitted slope up by about +0.05 at r <= d_in / 2.
Observed, not asserted (d_in = 256, r = 1..128, lr 1e-3): as A itself moves, rsLoRA's typical slope drifts
from +0.05 at step 4 to +0.09 at step 16 and +0.17 at step 64, LoRA's from -0.95 to -0.83; the gradient-norm
slopes stay at -0.50 / 0.00 / +0.50.

Gradient norms (both optimisers). ||dL/dB||_F = gamma ||M A^T||_F ~ gamma sqrt(r sigma F), and
||dL/dA||_F = gamma ||B_n^T M||_F ~ n lr gamma^2 sqrt(r sigma) ||M^T M||_F (SGD) or
n lr gamma sqrt(r K) (Adam, K = E_a ||M^T sign(M a)||^2 = sum_ij (2/pi) arcsin(rho_ij) (M M^T)_ij, rho the
cosine of rows i and j of M), so the norm scales like gamma_r sqrt(r): slopes -1/2 / 0 / +1/2 (SGD adds a
small gamma_r^2 sqrt(r) term from dL/dA).

:func:`simulate` runs the adapters; ``per_seed=True`` keeps one row per init seed, which
:func:`fitted_slopes` needs for its intervals (delete-one-seed jackknife of the log-log least-squares slope,
t quantile with S - 1 degrees of freedom; conditional on the one draw of X and G). :func:`aggregate` averages
over seeds. :func:`fitted_slopes` also gives the closed-form slope on the same ranks, the paper's claim for
the rule and the verdict read from the interval. :func:`plot_rank_stability` draws one optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from .scalings import OPTIMIZERS, PRIMARY_OPTIMIZER, SCALING_LABEL, SCALING_RULES  # noqa: F401

DEFAULT_RANKS = tuple(2**k for k in range(9))  # 1 .. 256 = d_in / 2
DEFAULT_D = 512
PRIMARY_MEASURES = ("output_moment", "input_grad_moment", "param_grad_norm")
MEANFIELD_MEASURES = ("output_moment_meanfield", "input_grad_moment_meanfield")
MEASURES = PRIMARY_MEASURES + MEANFIELD_MEASURES
# Power of the adapter's scale in each measure: slopes of a norm are half those of a mean square, and so is
# the band called flat.
MOMENT_ORDER = {**{m: 2 for m in MEASURES}, "param_grad_norm": 1}
PAPER_CLAIM = {"lora": "collapse", "rslora": "flat", "constant": "explode"}
FLAT_TOLERANCE = 0.25

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_DTYPE = torch.float64


def scaling_factor(rule: str, alpha: float, r: int) -> float:
    """gamma_r of a scaling rule: alpha/r (lora), alpha/sqrt(r) (rslora) or alpha (constant)."""
    if rule == "lora":
        return alpha / r
    if rule == "rslora":
        return alpha / math.sqrt(r)
    if rule == "constant":
        return float(alpha)
    raise ValueError(f"unknown scaling rule {rule!r}; expected one of {SCALING_RULES}")


def _generator(*key: int) -> torch.Generator:
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def init_lora_A(r: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """peft's init of lora_A: kaiming_uniform_(a=sqrt(5)) on an (r, d_in) weight, i.e. U(+-1/sqrt(d_in))."""
    A = torch.empty(r, d_in, dtype=_DTYPE)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return A


def training_data(n_inputs: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared training inputs X (n_inputs x d_in) and output gradients G (n_inputs x d_out), iid N(0, 1)."""
    g = _generator(seed, 0)
    X = torch.randn(n_inputs, d_in, generator=g, dtype=_DTYPE)
    G = torch.randn(n_inputs, d_out, generator=g, dtype=_DTYPE)
    return X, G


def closed_forms(M: torch.Tensor, optimizer: str, gamma: float, r: int, n: int, lr: float) -> dict[str, float]:
    """Leading-order E_A of every measure after n steps from B = 0 (module docstring), for dL/dW = M."""
    d_out, d_in = M.shape
    sigma = 1.0 / (3 * d_in)
    F = float((M**2).sum())
    grad_B = gamma * math.sqrt(r * sigma * F)
    if optimizer == "sgd":
        typical = n**2 * lr**2 * gamma**4 * sigma**2 * r * (r + d_in - 0.2) * F
        meanfield = n**2 * lr**2 * gamma**4 * sigma**2 * r**2 * F
        grad_A = n * lr * gamma**2 * math.sqrt(r * sigma) * float(torch.linalg.matrix_norm(M.T @ M))
    elif optimizer == "adam":
        typical = n**2 * lr**2 * gamma**2 * sigma * d_out * r * (d_in + 2 / math.pi * (r - 1))
        meanfield = n**2 * lr**2 * gamma**2 * (2 * sigma / math.pi) * d_out * r**2
        grad_A = n * lr * gamma * math.sqrt(r * _sign_gram(M))
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return {
        "output_moment": typical / d_out, "input_grad_moment": typical / d_in,
        "output_moment_meanfield": meanfield / d_out, "input_grad_moment_meanfield": meanfield / d_in,
        "param_grad_norm": (grad_A + grad_B) / 2,
    }


def _sign_gram(M: torch.Tensor) -> float:
    """E_a ||M^T sign(M a)||^2 for a with iid symmetric entries (Gaussian approximation of M a)."""
    K = M @ M.T
    norms = K.diagonal().sqrt()
    rho = (K / torch.outer(norms, norms)).clamp(-1.0, 1.0)
    return float((2 / math.pi * torch.asin(rho) * K).sum())


def simulate(
    ranks: Iterable[int] = DEFAULT_RANKS,
    scalings: Sequence[str] = SCALING_RULES,
    d_in: int = DEFAULT_D,
    d_out: int = DEFAULT_D,
    alpha: float = 16.0,
    steps: Sequence[int] = (1, 2, 4),
    lr: float = 1e-3,
    n_inputs: int = 512,
    n_init_seeds: int = 8,
    optimizer: str = PRIMARY_OPTIMIZER,
    seed: int = 0,
    num_threads: int | None = 1,
    per_seed: bool = False,
) -> pd.DataFrame:
    """Train LoRA adapters for a few steps from B = 0 and measure them against rank (module docstring).

    For every rank r, scaling rule and init seed one adapter is built (A by peft's init, B = 0) and trained
    for max(steps) steps of ``optimizer`` ("adam" or "sgd") at learning rate ``lr`` on the shared linear
    loss; seeds differ only in A ("in expectation over initialization"). The measures are recorded at step
    0 and after each n in ``steps`` (n steps of one trajectory are the same as n steps of a fresh run); at
    step 0 every moment is exactly 0 since B = 0.

    ``per_seed=True``: one row per (rank, scaling, step, init_seed) with the per-adapter measures and, for
    each mean-field measure, the seed's share (mean over t != s of <W_s, W_t>, normalised like the moment;
    NaN for one seed), whose mean over seeds is the U-statistic. Otherwise :func:`aggregate` of that table:
    one row per (rank, scaling, step) with seed means, ``*_se`` (standard error over seeds) and the
    mean-field estimates. Both carry optimizer, rank, scaling, gamma, step, the closed forms ``*_expected``
    and the setting (d_in, d_out, alpha, lr, n_inputs, n_init_seeds, seed).
    ``num_threads`` (default 1) sets torch's intra-op threads for the call and is restored afterwards
    (None: leave as is); the result does not depend on it beyond float64 rounding.
    """
    args = (ranks, scalings, d_in, d_out, alpha, steps, lr, n_inputs, n_init_seeds, optimizer, seed)
    if num_threads is None:
        df = _simulate(*args)
    else:
        old = torch.get_num_threads()
        torch.set_num_threads(int(num_threads))
        try:
            df = _simulate(*args)
        finally:
            torch.set_num_threads(old)
    return df if per_seed else aggregate(df)


def _simulate(ranks, scalings, d_in, d_out, alpha, steps, lr, n_inputs, n_init_seeds, optimizer, seed):
    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    for rule in scalings:
        scaling_factor(rule, alpha, 1)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    steps = sorted({int(n) for n in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps}")
    if n_init_seeds < 1:
        raise ValueError("n_init_seeds must be >= 1")
    S, n_steps, record_at = n_init_seeds, steps[-1], {0, *steps}

    X, G = training_data(n_inputs, d_in, d_out, seed)
    M = G.T @ X / n_inputs
    rows = []
    for r in ranks:
        A0 = torch.stack([init_lora_A(r, d_in, _generator(seed, 1, r, s)) for s in range(S)])
        for rule in scalings:
            gamma = scaling_factor(rule, alpha, r)
            A, B = A0.clone(), torch.zeros(S, d_out, r, dtype=_DTYPE)
            state = [torch.zeros_like(t) for t in (A, A, B, B)]  # Adam: m_A, v_A, m_B, v_B
            for n in range(n_steps + 1):
                grad_B = gamma * torch.matmul(M, A.transpose(1, 2))  # (S, d_out, r)
                grad_A = gamma * torch.matmul(B.transpose(1, 2), M)  # (S, r, d_in)
                if n in record_at:
                    measured = _measure(gamma * torch.matmul(B, A), grad_A, grad_B)
                    expected = closed_forms(M, optimizer, gamma, r, n, lr)
                    for s in range(S):
                        row = {"optimizer": optimizer, "rank": r, "scaling": rule, "gamma": gamma, "step": n,
                               "init_seed": s}
                        row.update({k: float(v[s]) for k, v in measured.items()})
                        row.update({k + "_expected": v for k, v in expected.items()})
                        rows.append(row)
                if n == n_steps:
                    break
                if optimizer == "sgd":
                    A, B = A - lr * grad_A, B - lr * grad_B
                else:
                    A, B, state = _adam_step(A, B, grad_A, grad_B, state, n + 1, lr)

    df = pd.DataFrame(rows).assign(d_in=d_in, d_out=d_out, alpha=float(alpha), lr=float(lr), n_inputs=n_inputs,
                                   n_init_seeds=S, seed=seed)
    order = {rule: i for i, rule in enumerate(scalings)}
    df = df.sort_values(["scaling", "step", "rank", "init_seed"],
                        key=lambda c: c.map(order) if c.name == "scaling" else c)
    return df.reset_index(drop=True)


def _adam_step(A, B, grad_A, grad_B, state, t, lr):
    b1, b2 = _ADAM_BETAS
    mA, vA, mB, vB = state
    mA, mB = b1 * mA + (1 - b1) * grad_A, b1 * mB + (1 - b1) * grad_B
    vA, vB = b2 * vA + (1 - b2) * grad_A**2, b2 * vB + (1 - b2) * grad_B**2
    c1, c2 = 1 - b1**t, 1 - b2**t
    A = A - lr * (mA / c1) / ((vA / c2).sqrt() + _ADAM_EPS)
    B = B - lr * (mB / c1) / ((vB / c2).sqrt() + _ADAM_EPS)
    return A, B, [mA, vA, mB, vB]


def _measure(W: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-seed measures of the adapters W (S, d_out, d_in) and their parameter gradients."""
    S, d_out, d_in = W.shape
    fro2 = W.pow(2).sum(dim=(1, 2))
    if S > 1:  # seed s's share of the U-statistic: mean over t != s of <W_s, W_t>
        share = ((W * W.sum(0)).sum(dim=(1, 2)) - fro2) / (S - 1)
    else:
        share = torch.full_like(fro2, float("nan"))
    norm = torch.linalg.matrix_norm
    return {
        "output_moment": (fro2 / d_out).numpy(), "input_grad_moment": (fro2 / d_in).numpy(),
        "param_grad_norm": ((norm(grad_A) + norm(grad_B)) / 2).numpy(),
        "output_moment_meanfield": (share / d_out).numpy(), "input_grad_moment_meanfield": (share / d_in).numpy(),
    }


_SETTING = ("d_in", "d_out", "alpha", "lr", "n_inputs", "n_init_seeds", "seed")


def aggregate(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Seed means (``*_se``: standard error over seeds) of a ``simulate(..., per_seed=True)`` table.

    A mean-field column becomes the U-statistic over seed pairs (the mean of the seeds' shares); it is NaN
    for one seed and can be <= 0 where the init fluctuation dominates (small r).
    """
    keys = [k for k in ("optimizer", "rank", "scaling", "gamma", "step") if k in per_seed.columns]
    grouped = per_seed.groupby(keys, sort=False)
    out = grouped[[*_SETTING, *(m + "_expected" for m in MEASURES)]].first()
    for m in MEASURES:
        out[m] = grouped[m].mean()
        if m in PRIMARY_MEASURES:
            out[m + "_se"] = grouped[m].std(ddof=1) / np.sqrt(grouped[m].count())
    cols = [*PRIMARY_MEASURES, *(m + "_se" for m in PRIMARY_MEASURES), *MEANFIELD_MEASURES,
            *(m + "_expected" for m in MEASURES), *_SETTING]
    return out[cols].reset_index()


def _t_quantile(q: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, dof))


def _ols_slope(lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Least-squares slope of each column of ly (n_ranks x k) on lx."""
    cx = lx - lx.mean()
    return cx @ (ly - ly.mean(axis=0)) / (cx @ cx)


def verdict(low: float, high: float, tolerance: float) -> str:
    """flat (the interval lies within +-tolerance), collapse / explode (beyond it) or inconclusive."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if -tolerance <= low and high <= tolerance:
        return "flat"
    if high < -tolerance:
        return "collapse"
    if low > tolerance:
        return "explode"
    return "inconclusive"


def fitted_slopes(
    df: pd.DataFrame,
    measures: Sequence[str] = MEASURES,
    primary_optimizer: str = PRIMARY_OPTIMIZER,
    flat_tolerance: float = FLAT_TOLERANCE,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Slope of log(measure) against log(r) with an interval, per optimizer, scaling rule, step > 0 and measure.

    ``df``: a ``simulate(..., per_seed=True)`` table (an aggregated one gives the slopes without interval).
    The slope is the least-squares fit to the log of the seed-averaged measure (the U-statistic for a
    mean-field one) over the ranks where it is positive, for every leave-one-seed-out replicate too (a
    mean-field estimate can be <= 0 at small r; those ranks are left out). The interval is the
    delete-one-seed jackknife: slope +- t_{S-1} * SE_jack; it is conditional on the one draw of the training
    data. Tidy result, one row per fit: optimizer, optimizer_role (primary / contrast), primary (the
    primary optimizer and one of :data:`PRIMARY_MEASURES`), scaling, step, measure, slope, slope_se,
    slope_low, slope_high, confidence, intercept, r2, n_ranks, rank_min, rank_max, n_init_seeds,
    expected_slope (of the closed form ``<measure>_expected`` over the same ranks), paper_claim
    (collapse / flat / explode, :data:`PAPER_CLAIM`), flat_tolerance (in the measure's units:
    ``flat_tolerance`` for a mean square, half of it for a norm), verdict (:func:`verdict` of the interval)
    and reproduces (verdict == paper_claim).
    """
    keys = [k for k in ("optimizer", "scaling", "step") if k in df.columns]
    has_seeds = "init_seed" in df.columns
    rows = []
    for key, grp in df[df["step"] > 0].groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for measure in measures:
            if measure not in grp.columns:
                continue
            full, loo = _seed_averages(grp, measure, has_seeds)
            ok = np.isfinite(full) & (full > 0)
            if loo is not None:
                ok &= (np.isfinite(loo) & (loo > 0)).all(axis=1)
            ranks = full.index.to_numpy(float)[ok]
            row = dict(zip(keys, key), measure=measure, n_ranks=int(ok.sum()))
            opt = row.get("optimizer", primary_optimizer)
            row["optimizer_role"] = "primary" if opt == primary_optimizer else "contrast"
            row["primary"] = bool(opt == primary_optimizer and measure in PRIMARY_MEASURES)
            tol = flat_tolerance * MOMENT_ORDER.get(measure, 2) / 2
            fit = dict.fromkeys(("slope", "slope_se", "slope_low", "slope_high", "intercept", "r2", "rank_min",
                                 "rank_max", "expected_slope"), float("nan"))
            n_seeds = int(grp["init_seed"].nunique()) if has_seeds else int(grp.get("n_init_seeds", [1]).iloc[0])
            if len(ranks) >= 2:
                lx, ly = np.log(ranks), np.log(full.to_numpy(float)[ok])
                slope, intercept = np.polyfit(lx, ly, 1)
                resid = ly - (slope * lx + intercept)
                ss = float(((ly - ly.mean()) ** 2).sum())
                fit.update(slope=float(slope), intercept=float(intercept),
                           r2=1.0 - float((resid**2).sum()) / ss if ss > 0 else float("nan"),
                           rank_min=int(ranks.min()), rank_max=int(ranks.max()))
                if loo is not None:
                    reps = _ols_slope(lx, np.log(loo[ok]))
                    S = len(reps)
                    se = math.sqrt((S - 1) / S * float(((reps - reps.mean()) ** 2).sum()))
                    half = _t_quantile(0.5 + confidence / 2, S - 1) * se
                    fit.update(slope_se=se, slope_low=float(slope - half), slope_high=float(slope + half))
                exp_col = measure + "_expected"
                if exp_col in grp.columns:
                    ex = grp.groupby("rank")[exp_col].first().reindex(full.index).to_numpy(float)[ok]
                    if (ex > 0).all():
                        fit["expected_slope"] = float(_ols_slope(lx, np.log(ex)[:, None])[0])
            claim = PAPER_CLAIM.get(row.get("scaling"), "")
            low, high = (fit["slope_low"], fit["slope_high"])
            v = verdict(low, high, tol)
            row.update(fit, confidence=confidence, n_init_seeds=n_seeds, paper_claim=claim, flat_tolerance=tol,
                       verdict=v, reproduces=bool(claim and v == claim))
            rows.append(row)
    cols = [*keys[:1], "optimizer_role", "primary", *keys[1:], "measure", "slope", "slope_se", "slope_low",
            "slope_high", "confidence", "expected_slope", "paper_claim", "flat_tolerance", "verdict",
            "reproduces", "intercept", "r2", "n_ranks", "rank_min", "rank_max", "n_init_seeds"]
    return pd.DataFrame(rows)[[c for c in cols if c in rows[0]]] if rows else pd.DataFrame(columns=cols)


def _seed_averages(grp: pd.DataFrame, measure: str, has_seeds: bool) -> tuple[pd.Series, np.ndarray | None]:
    """Per rank: the seed average (U-statistic for a mean-field measure) and its leave-one-seed-out values
    (ranks x seeds; None without per-seed rows or with too few seeds)."""
    if not has_seeds:
        return grp.groupby("rank")[measure].mean(), None
    wide = grp.pivot_table(index="rank", columns="init_seed", values=measure, aggfunc="first", dropna=False)
    v = wide.to_numpy(float)
    S = v.shape[1]
    full = pd.Series(v.mean(axis=1), index=wide.index)
    if measure in MEANFIELD_MEASURES:
        # Without seed s the pairs left sum to S(S-1)U - 2(S-1)c_s over (S-1)(S-2) ordered pairs.
        loo = (S * full.to_numpy()[:, None] - 2 * v) / (S - 2) if S >= 3 else None
    else:
        loo = (v.sum(axis=1, keepdims=True) - v) / (S - 1) if S >= 2 else None
    return full, loo
