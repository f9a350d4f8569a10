"""Fits of the forgetting laws (arXiv 2401.05605) on the tidy table results/lm/runs.csv.

* Inverse linear law L_f = a - b L_ft by OLS (statsmodels). Checkpoints of one run share one trajectory,
  so the intervals and the one-sided test of the paper's claim b > 0 use run-clustered (cluster-robust)
  standard errors with t(G - 1) reference; the naive OLS interval and a bootstrap over runs are reported
  beside them.
* Shifted power laws in trainable parameters P and steps N for L_f and L_ft: each family fitted by a
  Huber loss on log residuals from many starts (:mod:`repro.laws.powerlaw`), chosen by AIC on the
  checkpoints left after holding out each run's largest-N checkpoints. Extrapolation is measured two
  ways: along N (those held-out checkpoints) and along P (every run at the largest P held out).
  Parameter intervals: bootstrap over runs, every resample refitted by the same many-start procedure.
* Early stopping: L_f of every rank at matched L_ft.

Failed or under-determined fits are returned with a status saying why; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write_text, json_default, read_table
from .powerlaw import (
    BOOTSTRAP_STARTS,
    FAMILIES,
    FIT_LOSS,
    Family,
    FitResult,
    fit_family,
    log_metrics,
    percentile_intervals,
    predict,
    to_raw_units,
)
from .schemas import fit_file_name

GROUP = ["model", "dataset", "method"]
RUN = ["rank", "lr", "seed"]
LINEAR_SE_KIND = "cluster-run"
__all__ = ["FAMILIES", "fit_all", "fit_linear_law", "fit_power_law", "bootstrap_power_law", "fits_table",
           "matched_forgetting", "fitted_curves", "run_fits"]


# --------------------------------------------------------------------------------------- linear law
def run_clusters(df: pd.DataFrame) -> np.ndarray:
    """One cluster per run; the shared step-0 base model is a cluster of its own."""
    labels = df[RUN].astype(str).agg("/".join, axis=1).to_numpy(object)
    labels[df["step"].to_numpy() == 0] = "base"
    return labels


def fit_linear_law(df: pd.DataFrame, x: str = "loss_ft", y: str = "loss_forget", resamples: int = 200,
                   seed: int = 0) -> dict:
    """OLS of y on x over checkpoints, y = a - b x, with run-clustered errors. Step 0 enters once."""
    import statsmodels.api as sm
    from scipy import stats

    data = one_step0(df).dropna(subset=[x, y]).reset_index(drop=True)
    out = {"family": "linear", "target": y, "n": int(len(data)), "k": 2, "formula": f"{y} = a - b * {x}",
           "fit_loss": "ols", "se_kind": LINEAR_SE_KIND}
    if len(data) < 3:
        return {**out, "status": f"insufficient points: {len(data)} < 3"}
    if np.ptp(data[x].to_numpy()) == 0 or np.ptp(data[y].to_numpy()) == 0:
        return {**out, "status": f"degenerate: {x if np.ptp(data[x]) == 0 else y} is constant"}
    clusters = run_clusters(data)
    groups = pd.factorize(clusters)[0]
    n_clusters = int(groups.max() + 1)
    if n_clusters < 3:
        return {**out, "status": f"insufficient runs: {n_clusters} clusters < 3 for run-clustered errors"}
    X = sm.add_constant(data[x].to_numpy())
    naive = sm.OLS(data[y].to_numpy(), X).fit()
    # use_t: t(G - 1) reference, the small-number-of-clusters correction statsmodels applies.
    clustered = sm.OLS(data[y].to_numpy(), X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    slope = float(clustered.params[1])

    def neg_ci(ci):  # interval of b = -slope from an interval of the slope
        return [float(-ci[1][1]), float(-ci[1][0])]

    t_cluster = float(clustered.tvalues[1])
    p_cluster = float(stats.t.cdf(t_cluster, df=n_clusters - 1))
    p_naive = float(stats.t.cdf(float(naive.tvalues[1]), df=naive.df_resid))
    boot = _bootstrap_linear(data, x, y, clusters, resamples, seed)
    grid = np.linspace(data[x].min(), data[x].max(), 50)
    band = clustered.get_prediction(sm.add_constant(grid, has_constant="add")).summary_frame(alpha=0.05)
    return {
        **out,
        "status": "ok",
        "n_clusters": n_clusters,
        "band": {"x": grid.tolist(), "mean": band["mean"].tolist(), "low": band["mean_ci_lower"].tolist(),
                 "high": band["mean_ci_upper"].tolist()},
        "params": {"a": float(clustered.params[0]), "b": -slope},
        "ci95": {"a": list(map(float, clustered.conf_int(0.05)[0])), "b": neg_ci(clustered.conf_int(0.05))},
        "ci95_naive": {"a": list(map(float, naive.conf_int(0.05)[0])), "b": neg_ci(naive.conf_int(0.05))},
        "ci95_bootstrap": boot.get("ci95", {}),
        "bootstrap_ok": boot.get("ok", 0),
        "se": {"a": float(clustered.bse[0]), "b": float(clustered.bse[1])},
        "se_naive": {"a": float(naive.bse[0]), "b": float(naive.bse[1])},
        "r2": float(naive.rsquared),
        "aic": float(naive.aic),
        "p_value_two_sided": float(clustered.pvalues[1]),
        "p_value_b_positive": p_cluster,
        "p_value_b_positive_naive": p_naive,
        "claim_b_positive": "supported" if (slope < 0 and p_cluster < 0.05) else "not supported",
        "residuals": {"x": data[x].tolist(), "y": data[y].tolist(), "fitted": naive.fittedvalues.tolist(),
                      "residual": naive.resid.tolist()},
    }


def _bootstrap_linear(data, x, y, clusters, resamples, seed) -> dict:
    """Percentile intervals of (a, b) over resampled runs (the base-model row is kept in every resample)."""
    names = [c for c in dict.fromkeys(clusters) if c != "base"]
    if len(names) < 3:
        return {}
    index = {c: np.flatnonzero(clusters == c) for c in dict.fromkeys(clusters)}
    base = index.get("base", np.array([], int))
    rng = np.random.default_rng(seed)
    xs, ys, draws = data[x].to_numpy(float), data[y].to_numpy(float), []
    for _ in range(resamples):
        rows = np.concatenate([base, *(index[names[i]] for i in rng.integers(0, len(names), len(names)))])
        if np.ptp(xs[rows]) == 0:
            continue
        slope, intercept = np.polyfit(xs[rows], ys[rows], 1)
        draws.append([intercept, -slope])
    if not draws:
        return {}
    return {"ci95": percentile_intervals(np.array(draws), ["a", "b"]), "ok": len(draws)}


def one_step0(df: pd.DataFrame) -> pd.DataFrame:
    # Every run starts from the same base model: keep one step-0 row, not one per run.
    step0 = df[df["step"] == 0].head(1)
    return pd.concat([step0, df[df["step"] > 0]], ignore_index=True)


# ------------------------------------------------------------------------------------- power laws
def _arrays(d: pd.DataFrame, target: str, p_ref: float, n_ref: float):
    return (d["trainable_params"].to_numpy(float) / p_ref, d["step"].to_numpy(float) / n_ref,
            d[target].to_numpy(float))


def _rmse(family: Family, params: dict, d: pd.DataFrame, target: str, p_ref: float, n_ref: float) -> float:
    P, N, y = _arrays(d, target, p_ref, n_ref)
    return float(np.sqrt(np.mean((predict(family, params, P, N) - y) ** 2)))


def fit_power_law(
    df: pd.DataFrame,
    target: str,
    family: Family,
    holdout_last: int = 1,
    p_ref: float | None = None,
    n_ref: float | None = None,
    n_starts: int = 8,
) -> dict:
    """Fit one family to target(P, N) over checkpoints with N >= 1, and measure extrapolation.

    * along N: the largest-N ``holdout_last`` checkpoints of every run are held out; the family is fitted
      on the rest (AIC there, which chooses the family) and scored on them (``extrap_rmse_steps``);
    * along P: every run at the largest P is held out; scored on its checkpoints (``extrap_rmse_rank``);
    * then refitted on all points: the reported parameters.
    """
    data = df[df["step"] > 0].dropna(subset=[target])
    k = len(family.params)
    out = {"family": family.name, "target": target, "formula": family.formula, "k": k, "n": int(len(data)),
           "fit_loss": FIT_LOSS, "se_kind": "bootstrap-run"}
    n_p = data["trainable_params"].nunique()
    if n_p < 2 and "alpha" in family.params:
        return {**out, "status": f"degenerate: one value of P ({n_p}); alpha is not identifiable"}
    if np.ptp(data[target].to_numpy()) == 0:
        return {**out, "status": f"degenerate: {target} is constant"}
    if (data[target] <= 0).any():
        return {**out, "status": f"invalid: {target} has non-positive values (log residuals undefined)"}
    p_ref = p_ref or float(np.exp(np.log(data["trainable_params"]).mean()))
    n_ref = n_ref or float(np.exp(np.log(data["step"]).mean()))
    ranked = data.groupby(RUN)["step"].rank(method="first", ascending=False)
    train, held = data[ranked > holdout_last], data[ranked <= holdout_last]
    if len(train) <= k + 1:
        return {**out, "status": f"insufficient points: {len(train)} fit points for {k} parameters"}

    fit_steps = fit_family(family, *_arrays(train, target, p_ref, n_ref), n_starts=n_starts)
    if fit_steps is None:
        return {**out, "status": "failed: no start gives a positive prediction"}
    aic = log_metrics(family, fit_steps.params, *_arrays(train, target, p_ref, n_ref))["aic"]
    extrap_steps = _rmse(family, fit_steps.params, held, target, p_ref, n_ref) if len(held) else math.nan

    extrap_rank, rank_note = math.nan, ""
    top = data["trainable_params"].max()
    below = data[data["trainable_params"] < top]
    if below["trainable_params"].nunique() < 2 and "alpha" in family.params:
        rank_note = "fewer than two values of P below the largest"
    elif len(below) <= k + 1:
        rank_note = f"{len(below)} points below the largest P for {k} parameters"
    else:
        fit_rank = fit_family(family, *_arrays(below, target, p_ref, n_ref), n_starts=n_starts)
        if fit_rank is not None:
            extrap_rank = _rmse(family, fit_rank.params, data[data["trainable_params"] == top], target, p_ref, n_ref)
        else:
            rank_note = "fit without the largest P failed"

    # With nothing held out the fit above already used every point: refitting would repeat it.
    full = fit_steps if held.empty else fit_family(family, *_arrays(data, target, p_ref, n_ref), n_starts=n_starts,
                                                   extra_starts=[fit_steps.theta])
    if full is None:
        return {**out, "status": "failed: no start gives a positive prediction on all points"}
    metrics = log_metrics(family, full.params, *_arrays(data, target, p_ref, n_ref))
    return {
        **out,
        "status": "ok",
        "params": full.params,
        "params_raw": to_raw_units(family, full.params, p_ref, n_ref),
        "p_ref": p_ref,
        "n_ref": n_ref,
        "normalisation": "P and N enter as P/p_ref and N/n_ref (geometric means of the fitted points)",
        "n_starts": full.n_starts,
        "n_starts_agree": full.n_agree,
        "converged": full.converged,
        "at_bound": full.at_bound,
        "n_fit": int(len(train)),
        "n_holdout": int(len(held)),
        "aic": aic,
        "extrap_rmse_steps": extrap_steps,
        "extrap_rmse_rank": extrap_rank,
        "extrap_rank_note": rank_note,
        "extrapolation_rmse": extrap_steps,
        "r2": metrics["r2"],
        "rmse": metrics["rmse"],
    }


def bootstrap_power_law(
    df: pd.DataFrame, target: str, family: Family, theta: dict, p_ref: float, n_ref: float,
    resamples: int = 200, seed: int = 0, n_starts: int = BOOTSTRAP_STARTS,
) -> dict:
    """Percentile 95 % intervals by resampling runs with replacement (whole trajectories).

    Each resample is refitted by the same procedure as the full data from the full-data optimum and its
    own ``n_starts`` best grid points, so a resample is never stuck where the full fit would not be.
    """
    data = df[df["step"] > 0].dropna(subset=[target])
    runs = [g for _, g in data.groupby(RUN)]
    if len(runs) < 3:
        # With two runs a resample is either the original data or one run alone: no interval.
        return {"ci95": {}, "bootstrap_ok": 0, "bootstrap_failed": 0, "bootstrap_converged": 0,
                "bootstrap_note": f"too few runs ({len(runs)}) to bootstrap over runs"}
    rng = np.random.default_rng(seed)
    start = np.array([theta[p] for p in family.params])
    draws, failed, converged = [], 0, 0
    # A resample is a multiset of runs, and its fit depends on nothing else: with G runs there are only
    # C(2G - 1, G) of them (35 for G = 4), so most of 200 draws repeat one already fitted. Each draw still
    # counts once in the percentiles, as the bootstrap requires.
    fitted: dict[tuple[int, ...], FitResult | None] = {}
    for _ in range(resamples):
        picked = tuple(sorted(rng.integers(0, len(runs), len(runs)).tolist()))
        if picked not in fitted:
            sample = pd.concat([runs[i] for i in picked], ignore_index=True)
            if sample["trainable_params"].nunique() < 2 and "alpha" in family.params:
                fitted[picked] = None
            else:
                fitted[picked] = fit_family(family, *_arrays(sample, target, p_ref, n_ref), n_starts=n_starts,
                                            extra_starts=[start])
        res = fitted[picked]
        if res is None:
            failed += 1
            continue
        converged += res.converged
        draws.append(res.theta)
    if not draws:
        return {"ci95": {}, "bootstrap_ok": 0, "bootstrap_failed": failed, "bootstrap_converged": 0}
    return {
        "ci95": percentile_intervals(np.array(draws), family.params),
        "bootstrap_ok": int(len(draws)),
        "bootstrap_failed": int(failed),
        "bootstrap_converged": int(converged),
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
            resamples: int, seed: int, n_starts: int = 8, jobs: int = 1,
            bootstrap_starts: int = BOOTSTRAP_STARTS) -> tuple[list[dict], pd.DataFrame]:
    """Every fit of every (model, dataset, method); ``jobs`` worker processes share the bootstraps."""
    fits, matched, boot_tasks = [], [], []
    for key, group in runs.groupby(GROUP):
        coords = dict(zip(GROUP, key))
        fits.append({**coords, **fit_linear_law(group, resamples=resamples, seed=seed)})
        for target in targets:
            candidates = [{**coords, **fit_power_law(group, target, FAMILIES[f], holdout_last, n_starts=n_starts)}
                          for f in families]
            ok = [c for c in candidates if c["status"] == "ok"]
            # A converged fit beats one whose optimiser did not converge, whatever their AIC.
            best = min(ok, key=lambda c: (not c["converged"], c["aic"])) if ok else None
            for c in candidates:
                c["chosen"] = c is best
                if c["status"] == "ok":
                    boot_tasks.append((c, (group, target, c["family"], c["params"], c["p_ref"], c["n_ref"],
                                           resamples, seed, bootstrap_starts)))
                fits.append(c)
        m = matched_forgetting(group)
        if len(m):
            matched.append(m.assign(**coords))
    if jobs > 1 and len(boot_tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_bootstrap_task, [t for _, t in boot_tasks]))
    else:
        results = [_bootstrap_task(t) for _, t in boot_tasks]
    for (fit, _), result in zip(boot_tasks, results):
        fit.update(result)
    return fits, (pd.concat(matched, ignore_index=True) if matched else pd.DataFrame())


def _bootstrap_task(args) -> dict:
    group, target, family, params, p_ref, n_ref, resamples, seed, n_starts = args
    return bootstrap_power_law(group, target, FAMILIES[family], params, p_ref, n_ref, resamples=resamples,
                               seed=seed, n_starts=n_starts)


FIT_COLUMNS = ("target", "family", "formula", "status", "n", "k", "r2", "aic", "fit_loss", "n_starts",
               "n_starts_agree", "converged", "extrap_rmse_steps", "extrap_rmse_rank", "se_kind", "chosen",
               "bootstrap_ok", "bootstrap_converged", "claim_b_positive", "p_value_b_positive",
               "p_value_b_positive_naive", "n_clusters")


def fits_table(fits: list[dict]) -> pd.DataFrame:
    """One row per fit and parameter: the tidy fits.csv."""
    rows = []
    for f in fits:
        base = {k: f.get(k) for k in (*GROUP, *FIT_COLUMNS)}
        if f.get("family") == "linear" and f.get("status") == "ok":
            base["converged"] = True  # closed form
        params = f.get("params") or {}
        if not params:
            rows.append({**base, "param": None, "value": math.nan, "ci_low": math.nan, "ci_high": math.nan})
        for name, value in params.items():
            lo, hi = (f.get("ci95") or {}).get(name, [math.nan, math.nan])
            naive = (f.get("ci95_naive") or {}).get(name, [math.nan, math.nan])
            boot = (f.get("ci95_bootstrap") or {}).get(name, [math.nan, math.nan])
            rows.append({**base, "param": name, "value": value, "ci_low": lo, "ci_high": hi,
                         "ci_naive_low": naive[0], "ci_naive_high": naive[1],
                         "ci_boot_low": boot[0], "ci_boot_high": boot[1],
                         "at_bound": name in (f.get("at_bound") or [])})
    return pd.DataFrame(rows)


CURVE_COLUMNS = [*GROUP, "target", "family", "rank", "trainable_params", "N", "value"]


def fitted_curves(fits: list[dict], runs: pd.DataFrame, points: int = 100) -> pd.DataFrame:
    """Every power-law fit that succeeded, evaluated along N at each rank's P over that rank's steps
    (log-spaced): what the figures draw, so they never evaluate a law themselves."""
    rows = []
    trained = runs[runs["step"] > 0]
    for f in fits:
        if f.get("status") != "ok" or f["family"] not in FAMILIES:
            continue
        family = FAMILIES[f["family"]]
        group = trained[np.logical_and.reduce([trained[k].astype(str) == str(f[k]) for k in GROUP])]
        for rank, r in group.groupby("rank"):
            P = float(r["trainable_params"].iloc[0])
            N = np.geomspace(r["step"].min(), r["step"].max(), points)
            values = predict(family, f["params"], np.full_like(N, P / f["p_ref"]), N / f["n_ref"])
            rows += [{**{k: f[k] for k in GROUP}, "target": f["target"], "family": f["family"], "rank": int(rank),
                      "trainable_params": P, "N": float(n), "value": float(v)} for n, v in zip(N, values)]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def run_fits(runs_csv: Path, out_dir: Path, families: list[str], targets: list[str], holdout_last: int,
             resamples: int, seed: int, n_starts: int = 8, jobs: int = 1,
             bootstrap_starts: int = BOOTSTRAP_STARTS) -> pd.DataFrame:
    from ..lm.aggregate import RUNS_TABLE

    runs = read_table(runs_csv, RUNS_TABLE)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"laws.families: unknown {unknown} (known: {sorted(FAMILIES)})")
    fits, matched = fit_all(runs, families, targets, holdout_last, resamples, seed, n_starts, jobs, bootstrap_starts)
    out_dir = Path(out_dir)
    # Stale JSONs (e.g. of a family no longer configured) would be read by the figures and tables.
    shutil.rmtree(out_dir / "fits", ignore_errors=True)
    (out_dir / "fits").mkdir(parents=True, exist_ok=True)
    for f in fits:
        atomic_write_text(out_dir / "fits" / fit_file_name(f), json.dumps(f, indent=2, default=json_default))
    table = fits_table(fits)
    atomic_write_text(out_dir / "curves.csv", fitted_curves(fits, runs).to_csv(index=False))
    atomic_write_text(out_dir / "early_stopping.csv", matched.to_csv(index=False))
    # fits.csv last: it is the rule's first output, so a kill before it leaves the job incomplete.
    atomic_write_text(out_dir / "fits.csv", table.to_csv(index=False))
    return table
