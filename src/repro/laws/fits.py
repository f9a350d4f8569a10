"""Fits of the forgetting laws (arXiv 2401.05605) on the tidy table results/lm/runs.csv.

* Inverse linear law L_f = a - b L_ft by OLS (statsmodels), with 95 % intervals, R^2, residuals and
  the one-sided test of the paper's claim b > 0 (forgetting rises as the fine-tuning loss falls).
* Shifted power laws in trainable parameters P and steps N for L_f and L_ft: several families fitted
  by nonlinear least squares (scipy), chosen by AIC on the checkpoints left after holding out each
  run's largest-N checkpoints, whose error is reported as the extrapolation error; parameter intervals
  by a seeded bootstrap over runs.
* Early stopping: L_f of every rank at matched L_ft.

Failed or under-determined fits are returned with a status saying why; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

GROUP = ["model", "dataset", "method"]
RUN = ["rank", "lr", "seed"]


# --------------------------------------------------------------------------------------- linear law
def fit_linear_law(df: pd.DataFrame, x: str = "loss_ft", y: str = "loss_forget") -> dict:
    """OLS of y on x over checkpoints: y = a - b x. Step 0 (the base model) enters once."""
    import statsmodels.api as sm
    from scipy import stats

    data = _dedupe_step0(df)[[x, y]].dropna()
    out = {"family": "linear", "target": y, "n": int(len(data)), "k": 2, "formula": f"{y} = a - b * {x}"}
    if len(data) < 3:
        return {**out, "status": f"insufficient points: {len(data)} < 3"}
    if np.ptp(data[x].to_numpy()) == 0 or np.ptp(data[y].to_numpy()) == 0:
        return {**out, "status": f"degenerate: {x if np.ptp(data[x]) == 0 else y} is constant"}
    model = sm.OLS(data[y].to_numpy(), sm.add_constant(data[x].to_numpy())).fit()
    ci = model.conf_int(0.05)
    slope, slope_p = float(model.params[1]), float(model.pvalues[1])
    # One-sided test of H1: slope < 0 (i.e. b > 0).
    t = float(model.tvalues[1])
    p_one_sided = float(stats.t.cdf(t, df=model.df_resid))
    grid = np.linspace(data[x].min(), data[x].max(), 50)
    band = model.get_prediction(sm.add_constant(grid, has_constant="add")).summary_frame(alpha=0.05)
    return {
        **out,
        "status": "ok",
        "band": {"x": grid.tolist(), "mean": band["mean"].tolist(), "low": band["mean_ci_lower"].tolist(),
                 "high": band["mean_ci_upper"].tolist()},
        "params": {"a": float(model.params[0]), "b": -slope},
        "ci95": {"a": [float(ci[0][0]), float(ci[0][1])], "b": [float(-ci[1][1]), float(-ci[1][0])]},
        "r2": float(model.rsquared),
        "aic": float(model.aic),
        "p_value_two_sided": slope_p,
        "p_value_b_positive": p_one_sided,
        "claim_b_positive": "supported" if (slope < 0 and p_one_sided < 0.05) else "not supported",
        "residuals": {"x": data[x].tolist(), "y": data[y].tolist(), "fitted": model.fittedvalues.tolist(),
                      "residual": model.resid.tolist()},
    }


def _dedupe_step0(df: pd.DataFrame) -> pd.DataFrame:
    # Every run starts from the same base model: keep one step-0 row, not one per run.
    step0 = df[df["step"] == 0].head(1)
    return pd.concat([step0, df[df["step"] > 0]], ignore_index=True)


# ------------------------------------------------------------------------------------- power laws
@dataclass(frozen=True)
class Family:
    name: str
    formula: str
    params: tuple[str, ...]
    func: Callable  # func(theta, P, N) with P, N normalised by their reference values
    bounds: tuple[list[float], list[float]]
    inits: Callable  # inits(y) -> list of starting points
    extra: dict = field(default_factory=dict)


def _span(y: np.ndarray) -> tuple[float, float, float]:
    return float(np.min(y)), float(np.max(y)), float(np.ptp(y)) or 1.0


def _inits_joint(y):
    lo, hi, span = _span(y)
    out = []
    for e in (lo - 0.1 * span, hi + 0.1 * span, float(np.median(y))):
        for a in (span, -span):
            for alpha in (0.0, 0.5):
                for beta in (0.3, -0.3):
                    out.append([e, a, alpha, beta])
    return out


def _inits_shifted(y):
    return [p + [n0] for p in _inits_joint(y) for n0 in (0.5, 5.0)]


def _inits_additive(y):
    lo, hi, span = _span(y)
    out = []
    for e in (lo - 0.1 * span, hi + 0.1 * span):
        for a in (0.1 * span, -0.1 * span):
            for b, beta in ((span, 0.3), (-span, -0.3), (span, -0.3), (-span, 0.3)):
                out.append([e, a, 0.5, b, beta])
    return out


INF = np.inf
FAMILIES: dict[str, Family] = {
    "joint": Family(
        "joint", "E + A * P^alpha * N^beta", ("E", "A", "alpha", "beta"),
        lambda t, P, N: t[0] + t[1] * P ** t[2] * N ** t[3],
        ([-INF, -INF, -3.0, -3.0], [INF, INF, 3.0, 3.0]), _inits_joint,
    ),
    "shifted": Family(
        "shifted", "E + A * P^alpha * (N + N0)^beta", ("E", "A", "alpha", "beta", "N0"),
        lambda t, P, N: t[0] + t[1] * P ** t[2] * (N + t[4]) ** t[3],
        ([-INF, -INF, -3.0, -3.0, 0.0], [INF, INF, 3.0, 3.0, 50.0]), _inits_shifted,
    ),
    "additive": Family(
        "additive", "E + A * P^alpha + B * N^beta", ("E", "A", "alpha", "B", "beta"),
        lambda t, P, N: t[0] + t[1] * P ** t[2] + t[3] * N ** t[4],
        ([-INF, -INF, -3.0, -INF, -3.0], [INF, INF, 3.0, INF, 3.0]), _inits_additive,
    ),
}


def _least_squares(family: Family, P, N, y, starts) -> optimize.OptimizeResult | None:
    best = None
    for x0 in starts:
        x0 = np.clip(np.asarray(x0, float), np.asarray(family.bounds[0]) + 1e-9, np.asarray(family.bounds[1]) - 1e-9)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                res = optimize.least_squares(
                    lambda t: family.func(t, P, N) - y, x0, bounds=family.bounds, method="trf",
                    x_scale="jac", max_nfev=2000,
                )
            except (ValueError, FloatingPointError):
                continue
        if not np.all(np.isfinite(res.fun)):
            continue
        if best is None or res.cost < best.cost:
            best = res
    return best


def _metrics(residual: np.ndarray, y: np.ndarray, k: int) -> dict:
    n = len(y)
    rss = float(np.sum(residual**2))
    tss = float(np.sum((y - y.mean()) ** 2))
    return {
        "rss": rss,
        "r2": 1 - rss / tss if tss > 0 else math.nan,
        # Gaussian likelihood with the variance profiled out; constants shared by all families cancel.
        "aic": n * math.log(max(rss, 1e-300) / n) + 2 * k,
        "rmse": math.sqrt(rss / n),
    }


def fit_power_law(
    df: pd.DataFrame,
    target: str,
    family: Family,
    holdout_last: int = 1,
    p_ref: float | None = None,
    n_ref: float | None = None,
) -> dict:
    """Fit one family to target(P, N) over checkpoints with N >= 1.

    The largest-N ``holdout_last`` checkpoints of every run are held out: the family is fitted on the
    rest (AIC reported there) and scored on them (extrapolation RMSE); then refitted on all points.
    """
    data = df[df["step"] > 0].dropna(subset=[target])
    out = {"family": family.name, "target": target, "formula": family.formula, "k": len(family.params),
           "n": int(len(data))}
    k = len(family.params)
    n_p = data["trainable_params"].nunique()
    if n_p < 2 and "alpha" in family.params:
        return {**out, "status": f"degenerate: one value of P ({n_p}); alpha is not identifiable"}
    if np.ptp(data[target].to_numpy()) == 0:
        return {**out, "status": f"degenerate: {target} is constant"}
    p_ref = p_ref or float(np.exp(np.log(data["trainable_params"]).mean()))
    n_ref = n_ref or float(np.exp(np.log(data["step"]).mean()))
    ranked = data.groupby(RUN)["step"].rank(method="first", ascending=False)
    train, held = data[ranked > holdout_last], data[ranked <= holdout_last]
    if len(train) <= k + 1:
        return {**out, "status": f"insufficient points: {len(train)} fit points for {k} parameters"}

    def arrays(d):
        return d["trainable_params"].to_numpy(float) / p_ref, d["step"].to_numpy(float) / n_ref, d[target].to_numpy(float)

    P, N, y = arrays(train)
    res = _least_squares(family, P, N, y, family.inits(y))
    if res is None or not res.success:
        return {**out, "status": "failed to converge" + (f": {res.message}" if res is not None else "")}
    fit_metrics = _metrics(res.fun, y, k)
    extrap = math.nan
    if len(held):
        Ph, Nh, yh = arrays(held)
        extrap = float(np.sqrt(np.mean((family.func(res.x, Ph, Nh) - yh) ** 2)))
    P_all, N_all, y_all = arrays(data)
    full = _least_squares(family, P_all, N_all, y_all, [res.x, *family.inits(y_all)])
    if full is None or not full.success:
        return {**out, "status": "failed to converge on all points"}
    return {
        **out,
        "status": "ok",
        "params": dict(zip(family.params, map(float, full.x))),
        "p_ref": p_ref,
        "n_ref": n_ref,
        "normalisation": "P and N enter as P/p_ref and N/n_ref (geometric means of the fitted points)",
        "n_fit": int(len(train)),
        "n_holdout": int(len(held)),
        "aic": fit_metrics["aic"],
        "r2_fit": fit_metrics["r2"],
        "rmse_fit": fit_metrics["rmse"],
        "extrapolation_rmse": extrap,
        "r2": _metrics(full.fun, y_all, k)["r2"],
    }


def bootstrap_power_law(
    df: pd.DataFrame, target: str, family: Family, theta: dict, p_ref: float, n_ref: float,
    resamples: int = 200, seed: int = 0,
) -> dict:
    """Percentile 95 % intervals by resampling runs with replacement (whole trajectories)."""
    data = df[df["step"] > 0].dropna(subset=[target])
    runs = [g for _, g in data.groupby(RUN)]
    if len(runs) < 3:
        # With two runs a resample is either the original data or one run alone: no interval.
        return {"ci95": {}, "bootstrap_ok": 0, "bootstrap_failed": 0,
                "bootstrap_note": f"too few runs ({len(runs)}) to bootstrap over runs"}
    rng = np.random.default_rng(seed)
    start = np.array([theta[p] for p in family.params])
    draws, failed = [], 0
    for _ in range(resamples):
        sample = pd.concat([runs[i] for i in rng.integers(0, len(runs), len(runs))], ignore_index=True)
        if sample["trainable_params"].nunique() < 2 and "alpha" in family.params:
            failed += 1
            continue
        P = sample["trainable_params"].to_numpy(float) / p_ref
        N = sample["step"].to_numpy(float) / n_ref
        res = _least_squares(family, P, N, sample[target].to_numpy(float), [start])
        if res is None or not res.success:
            failed += 1
            continue
        draws.append(res.x)
    if not draws:
        return {"ci95": {}, "bootstrap_ok": 0, "bootstrap_failed": failed}
    draws = np.array(draws)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    return {
        "ci95": {p: [float(a), float(b)] for p, a, b in zip(family.params, lo, hi)},
        "bootstrap_ok": int(len(draws)),
        "bootstrap_failed": int(failed),
    }


# ---------------------------------------------------------------------------------- early stopping
def matched_forgetting(df: pd.DataFrame, levels: int = 5) -> pd.DataFrame:
    """L_f of each run interpolated at common L_ft levels inside the range every run reaches."""
    runs = {key: g.sort_values("step") for key, g in df.groupby(RUN)}
    if len(runs) < 2:
        return pd.DataFrame()
    lo = max(g["loss_ft"].min() for g in runs.values())
    hi = min(g["loss_ft"].max() for g in runs.values())
    if not lo < hi:
        return pd.DataFrame()
    rows = []
    for level in np.linspace(lo, hi, levels):
        for (rank, lr, seed), g in runs.items():
            order = np.argsort(g["loss_ft"].to_numpy())
            rows.append({
                "loss_ft": float(level), "rank": rank, "lr": lr, "seed": seed,
                "trainable_params": int(g["trainable_params"].iloc[0]),
                "loss_forget": float(np.interp(level, g["loss_ft"].to_numpy()[order], g["loss_forget"].to_numpy()[order])),
            })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ driver
def fit_all(runs: pd.DataFrame, families: list[str], targets: list[str], holdout_last: int,
            resamples: int, seed: int) -> tuple[list[dict], pd.DataFrame]:
    fits, matched = [], []
    for key, group in runs.groupby(GROUP):
        coords = dict(zip(GROUP, key))
        fits.append({**coords, **fit_linear_law(group)})
        for target in targets:
            candidates = [{**coords, **fit_power_law(group, target, FAMILIES[f], holdout_last)} for f in families]
            ok = [c for c in candidates if c["status"] == "ok"]
            best = min(ok, key=lambda c: c["aic"]) if ok else None
            for c in candidates:
                c["chosen"] = c is best
                if c["status"] == "ok":
                    c.update(bootstrap_power_law(group, target, FAMILIES[c["family"]], c["params"], c["p_ref"],
                                                 c["n_ref"], resamples=resamples, seed=seed))
                fits.append(c)
        m = matched_forgetting(group)
        if len(m):
            matched.append(m.assign(**coords))
    return fits, (pd.concat(matched, ignore_index=True) if matched else pd.DataFrame())


def fits_table(fits: list[dict]) -> pd.DataFrame:
    """One row per fit and parameter: the tidy fits.csv."""
    rows = []
    for f in fits:
        base = {k: f.get(k) for k in (*GROUP, "target", "family", "formula", "status", "n", "k", "r2", "aic",
                                       "extrapolation_rmse", "chosen", "claim_b_positive", "p_value_b_positive")}
        params = f.get("params") or {}
        if not params:
            rows.append({**base, "param": None, "value": math.nan, "ci_low": math.nan, "ci_high": math.nan})
        for name, value in params.items():
            lo, hi = (f.get("ci95") or {}).get(name, [math.nan, math.nan])
            rows.append({**base, "param": name, "value": value, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def run_fits(runs_csv: Path, out_dir: Path, families: list[str], targets: list[str], holdout_last: int,
             resamples: int, seed: int) -> pd.DataFrame:
    runs = pd.read_csv(runs_csv)
    missing = [c for c in (*GROUP, *RUN, "step", "trainable_params", "loss_ft", "loss_forget") if c not in runs]
    if missing:
        raise ValueError(f"{runs_csv}: columns missing: {missing}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"laws.families: unknown {unknown} (known: {sorted(FAMILIES)})")
    fits, matched = fit_all(runs, families, targets, holdout_last, resamples, seed)
    out_dir = Path(out_dir)
    # Stale JSONs (e.g. of a family no longer configured) would be read by the figures and tables.
    shutil.rmtree(out_dir / "fits", ignore_errors=True)
    (out_dir / "fits").mkdir(parents=True, exist_ok=True)
    for f in fits:
        name = "_".join(str(f[k]) for k in (*GROUP, "target", "family"))
        (out_dir / "fits" / f"{name}.json").write_text(json.dumps(f, indent=2, default=float))
    table = fits_table(fits)
    table.to_csv(out_dir / "fits.csv", index=False)
    matched.to_csv(out_dir / "early_stopping.csv", index=False)
    return table
