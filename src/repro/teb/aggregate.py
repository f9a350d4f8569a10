"""The TEB branch's tidy tables (evals, summary, TE sweep, information plane, estimators) from the per-task
evaluations, and how the renderers read them back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write_text, read_table
from . import schemas
from .runs import STOCHASTIC, first_bottleneck_beta

# Per-model numbers that summary.csv reports as mean and seed standard deviation.
SUMMARY_METRICS = ("te_lower", "kl", "kl_excess", "authors_gain", "gain_vs_target", "decoder_gap", "loglik",
                   "mse", "mse_switch", "mse_noswitch", "accuracy", "accuracy_switch", "accuracy_noswitch")
# The generator's numbers: one value per task, whatever the model or seed.
TASK_CONSTANTS = ("exact_te", "exact_te_se", "source_entropy", "log_k", "c")
GROUP = ["task", "kind", "variant", "beta"]


def _sd(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def summarise(ev: pd.DataFrame) -> pd.DataFrame:
    """Mean and seed SD per task x variant x beta; the bound's checks against the exact TE.

    * ``te_lower_seed_se``: seed SD / sqrt(seeds) (NaN with one seed: windows are not seeds);
    * ``te_lower_within_2se``: |mean te_lower - exact_te| <= 2 seed-SE (the AR comparison);
      ``te_lower_within_2se_total`` the same with the seed and window errors combined;
    * ``kl_near_te``: the KL term within 1 nat of the exact TE (the bottleneck carries just the TE);
    * ``accuracy_near_best``: switch accuracy within 10 % of the best beta of the same task and variant
      (MSE within 10 % of the lowest on the sinusoids).
    """
    rows = []
    for key, g in ev.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key))
        row["seeds"] = int(g["seed"].nunique())
        for col in TASK_CONSTANTS:
            if col in g:
                row[col] = g[col].iloc[0]
        for col in SUMMARY_METRICS:
            if col in g:
                row[f"{col}_mean"] = float(g[col].mean()) if g[col].notna().any() else float("nan")
                row[f"{col}_sd"] = _sd(g[col])
        # Every seed is scored on the same held-out windows, so averaging seeds does not shrink the
        # windows' sampling error: the total SE adds one seed's window SE to the seed SE.
        row["te_lower_window_se"] = float(np.sqrt((g["te_lower_se"] ** 2).mean()))
        row["te_lower_seed_se"] = row["te_lower_sd"] / math.sqrt(row["seeds"]) if row["seeds"] > 1 else float("nan")
        row["te_lower_total_se"] = float(np.sqrt(np.nan_to_num(row["te_lower_seed_se"]) ** 2 + row["te_lower_window_se"] ** 2))
        # 1/0 flags, NaN where the check does not apply (one seed; no KL term)
        row["te_lower_within_2se"] = (float(abs(row["te_lower_mean"] - row["exact_te"]) <= 2 * row["te_lower_seed_se"])
                                      if math.isfinite(row["te_lower_seed_se"]) else float("nan"))
        row["te_lower_within_2se_total"] = float(abs(row["te_lower_mean"] - row["exact_te"]) <= 2 * row["te_lower_total_se"])
        row["kl_near_te"] = (float(abs(row["kl_mean"] - row["exact_te"]) <= 1.0) if math.isfinite(row["kl_mean"])
                             else float("nan"))
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["accuracy_near_best"] = np.nan
    for _, g in out[out["variant"].isin(STOCHASTIC)].groupby(["task", "variant"]):
        if g["kind"].iloc[0] == "ar":
            continue
        if g["kind"].iloc[0] == "sines":
            best = g["mse_switch_mean"].min()
            out.loc[g.index, "accuracy_near_best"] = (g["mse_switch_mean"] <= 1.1 * best).astype(float)
        else:
            best = g["accuracy_switch_mean"].max()
            out.loc[g.index, "accuracy_near_best"] = (g["accuracy_switch_mean"] >= 0.9 * best).astype(float)
    return out


def default_betas(ev: pd.DataFrame) -> dict[str, float | None]:
    """Each task's default beta (``runs.default_beta``), found in the evaluations: their rows keep the
    order ``teb eval`` wrote them in, and neither they nor the manifests record the config's betas."""
    return {task: first_bottleneck_beta(zip(g["variant"], g["beta"])) for task, g in ev.groupby("task", sort=False)}


def at_default_beta(summary: pd.DataFrame, defaults: dict) -> pd.DataFrame:
    """The summary without the bottleneck models trained at another beta than their task's default:
    one row per (task, variant)."""
    keep = [not (r["variant"] in STOCHASTIC and defaults.get(r["task"]) is not None
                 and not np.isclose(float(r["beta"]), defaults[r["task"]]))
            for _, r in summary.iterrows()]
    return summary[keep].reset_index(drop=True)


def aggregate(evals: list[Path], estimators: list[Path], manifests: list[Path], out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = pd.concat([read_table(p, schemas.TASK_EVALS) for p in evals], ignore_index=True)
    info = {}
    for p in manifests:
        m = json.loads(Path(p).read_text())
        info[m["task"]] = m["info"]
    ev["c"] = ev["task"].map(lambda t: info.get(t, {}).get("c", np.nan))
    # The authors weight the KL term by beta; this code weights the reconstruction term: beta_authors = 1/beta.
    ev["beta_authors"] = 1.0 / ev["beta"]
    paths = {"evals": out_dir / "evals.csv"}
    atomic_write_text(paths["evals"], ev.to_csv(index=False))
    summary = summarise(ev)
    paths["summary"] = out_dir / "summary.csv"
    atomic_write_text(paths["summary"], summary.to_csv(index=False))
    est = pd.concat([read_table(p, schemas.ESTIMATORS) for p in estimators], ignore_index=True) if estimators else pd.DataFrame(
        columns=["task", "estimator", "te", "n", "exact_te", "c"])
    paths["estimators"] = out_dir / "estimators.csv"
    atomic_write_text(paths["estimators"], est.to_csv(index=False))

    # The coupling sweep: each model's contrastive lower bound at its task's default beta, mean over
    # seeds (SE over seeds when there are several, else over windows), beside the reference estimators.
    defaults = default_betas(ev)
    rows = []
    ar = at_default_beta(summary[summary["kind"] == "ar"], defaults) if len(summary) else summary
    for _, r in ar.iterrows():
        if r["variant"] == "target":
            continue
        se = r["te_lower_seed_se"] if math.isfinite(r["te_lower_seed_se"]) else r["te_lower_window_se"]
        rows.append({"task": r["task"], "c": r["c"], "exact_te": r["exact_te"], "estimator": r["variant"],
                     "te": r["te_lower_mean"], "te_se": se, "te_sd": r["te_lower_sd"],
                     "within_2se": r["te_lower_within_2se"], "total_se": r["te_lower_total_se"],
                     "within_2se_total": r["te_lower_within_2se_total"], "kl": r["kl_mean"],
                     "authors_gain": r["authors_gain_mean"], "beta": r["beta"], "seeds": r["seeds"]})
    for _, r in est.iterrows():
        rows.append({"task": r["task"], "c": r["c"], "exact_te": r["exact_te"], "estimator": r["estimator"],
                     "te": r["te"], "te_se": np.nan, "te_sd": np.nan, "within_2se": np.nan, "total_se": np.nan,
                     "within_2se_total": np.nan, "kl": np.nan,
                     "authors_gain": np.nan, "beta": np.nan, "seeds": 0})
    sweep = pd.DataFrame(rows)
    if len(sweep):
        sweep = sweep.sort_values(["c", "estimator"]).reset_index(drop=True)
        sweep["error"] = sweep["te"] - sweep["exact_te"]
    paths["te_sweep"] = out_dir / "te_sweep.csv"
    atomic_write_text(paths["te_sweep"], sweep.to_csv(index=False))

    # Information plane: every bottleneck run, one point per (task, variant, beta, seed).
    cols = ["task", "kind", "variant", "beta", "beta_authors", "seed", "kl", "te_lower", "te_lower_se", "log_k",
            "exact_te", "source_entropy", "authors_gain", "accuracy_switch", "mse_switch"]
    plane = ev[ev["variant"].isin(STOCHASTIC)][cols]
    paths["info_plane"] = out_dir / "info_plane.csv"
    atomic_write_text(paths["info_plane"], plane.sort_values(["task", "variant", "beta", "seed"]).to_csv(index=False))
    return paths


def read_aggregate(teb_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float | None]]:
    """evals.csv and summary.csv of an aggregate, and each task's default beta: what every renderer reads."""
    teb_dir = Path(teb_dir)
    ev = read_table(teb_dir / "evals.csv", schemas.EVALS)
    summary = read_table(teb_dir / "summary.csv", schemas.SUMMARY)
    return ev, summary, default_betas(ev)


def read_te_sweep(teb_dir: Path) -> pd.DataFrame:
    return read_table(Path(teb_dir) / "te_sweep.csv", schemas.TE_SWEEP)
