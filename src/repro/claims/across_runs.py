"""Slopes across fine-tuning runs, one number per run, with an interval that respects what varies.

Each run contributes one value (its mean gradient norm over matched steps, its final loss, ...), so the
runs are the independent units and checkpoints never enter as observations. With at least two seeds per
rank the interval is a run bootstrap stratified by rank (seeds resampled within each rank, every rank kept),
which measures seed variation directly; with few seeds its percentile interval is too narrow, so the interval
reported spans it and the OLS t interval across runs (residual degrees of freedom = runs - 2). With one seed
per rank there is nothing to resample within a rank: the t interval alone, where seed noise enters as residual
scatter around the line (valid under the straight-line model, and wide when there are few ranks).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

BOOTSTRAP_RESAMPLES = 2000


def seeds_per_rank(df: pd.DataFrame, rank: str = "rank", seed: str = "seed") -> int:
    """The fewest seeds any rank has (0 for an empty table)."""
    if df.empty:
        return 0
    return int(df.groupby(rank)[seed].nunique().min())


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    denom = float((xc**2).sum())
    return float((xc * (y - y.mean())).sum() / denom) if denom > 0 else math.nan


def slope_across_runs(df: pd.DataFrame, x: str, y: str, *, strata: str = "rank", seed: str = "seed",
                      level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, rng_seed: int = 0) -> dict:
    """Slope of y on x over runs (one row per run) with its interval; keys: slope, ci_low, ci_high,
    interval (which kind), runs, ranks, seeds_per_rank."""
    from scipy import stats

    d = df.dropna(subset=[x, y])
    xs, ys = d[x].to_numpy(float), d[y].to_numpy(float)
    out = {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "interval": "none", "runs": len(d),
           "ranks": int(d[strata].nunique()) if len(d) else 0, "seeds_per_rank": seeds_per_rank(d, strata, seed)}
    if out["ranks"] < 2:
        return {**out, "interval": "fewer than two ranks"}
    out["slope"] = _ols_slope(xs, ys)
    alpha = (1 - level) / 2
    dof = len(d) - 2
    if dof < 1:
        return {**out, "interval": "two runs: no residual degrees of freedom"}
    xc = xs - xs.mean()
    resid = ys - ys.mean() - out["slope"] * xc
    se = math.sqrt(float((resid**2).sum()) / dof / float((xc**2).sum()))
    half = float(stats.t.ppf(1 - alpha, dof)) * se
    lo, hi = out["slope"] - half, out["slope"] + half
    if out["seeds_per_rank"] < 2:
        return {**out, "ci_low": lo, "ci_high": hi, "interval": f"OLS t across runs (df {dof}; one seed per rank)"}
    # With seeds to resample, the run bootstrap within rank measures seed variation directly; with few seeds
    # its percentile interval is too narrow, so the reported interval spans both.
    rng = np.random.default_rng(rng_seed)
    groups = [np.flatnonzero(d[strata].to_numpy() == s) for s in dict.fromkeys(d[strata])]
    draws = np.empty(resamples)
    for b in range(resamples):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        draws[b] = _ols_slope(xs[idx], ys[idx])
    b_lo, b_hi = np.nanquantile(draws, [alpha, 1 - alpha])
    return {**out, "ci_low": min(lo, float(b_lo)), "ci_high": max(hi, float(b_hi)),
            "interval": f"OLS t across runs (df {dof}) and run bootstrap within rank ({resamples}), the wider"}


def mean_interval(values: np.ndarray, *, extra_se: float = 0.0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of independent per-run values with a t interval; ``extra_se`` adds an error shared by every run
    (e.g. the sampling error of the one base-model evaluation every difference is taken against)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    se_runs = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    if len(v) < 2:
        return m, math.nan, math.nan
    se = math.sqrt(se_runs**2 + extra_se**2)
    q = float(stats.t.ppf(1 - (1 - level) / 2, len(v) - 1))
    return m, m - q * se, m + q * se
