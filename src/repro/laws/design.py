"""`repro laws design`: which sweep identifies the power-law exponents, and what it costs.

From one measured sweep (runs.csv, and steps.csv for the cost), every sub-sweep is fitted as if it had
been the whole experiment: a subset of the ranks, the first k seeds, and the checkpoints up to a maximum
step (a run of S steps is exactly the first S steps of a longer run here: the learning rate is constant
and the batch at step t depends only on (seed, t)). Per method and target, the family with the lowest
AIC among converged fits is chosen and bootstrapped over runs like `repro laws fit`; the table gives the
95 % interval width of each exponent against the sub-sweep's cost in CPU-minutes, so the cheapest
design that answers the question can be read off.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .fits import GROUP, RUN
from .powerlaw import BOOTSTRAP_STARTS, FAMILIES, fit_family, log_metrics, percentile_intervals


@dataclass(frozen=True)
class Design:
    method: str
    ranks: tuple[int, ...]
    n_seeds: int
    max_step: int


def enumerate_designs(runs: pd.DataFrame, min_ranks: int = 3, min_step: int = 8,
                      max_steps: list[int] | None = None) -> list[Design]:
    designs = []
    for method, g in runs.groupby("method"):
        ranks = sorted(int(r) for r in g["rank"].unique())
        seeds = sorted(g["seed"].unique())
        steps = sorted(int(s) for s in g["step"].unique() if s >= min_step)
        if max_steps:
            steps = [s for s in steps if s in set(max_steps)]
        for k in range(min_ranks, len(ranks) + 1):
            for subset in itertools.combinations(ranks, k):
                for n_seeds in range(1, len(seeds) + 1):
                    for s in steps:
                        designs.append(Design(str(method), subset, n_seeds, s))
    return designs


def select(runs: pd.DataFrame, d: Design) -> pd.DataFrame:
    seeds = sorted(runs["seed"].unique())[: d.n_seeds]
    keep = (runs["method"] == d.method) & runs["rank"].isin(d.ranks) & runs["seed"].isin(seeds)
    return runs[keep & (runs["step"] >= 1) & (runs["step"] <= d.max_step)]


def training_seconds(steps: pd.DataFrame | None, runs: pd.DataFrame, d: Design) -> float:
    if steps is None or "seconds" not in steps:
        return math.nan
    seeds = sorted(runs["seed"].unique())[: d.n_seeds]
    keep = ((steps["method"] == d.method) & steps["rank"].isin(d.ranks) & steps["seed"].isin(seeds)
            & (steps["step"] <= d.max_step))
    return float(steps.loc[keep, "seconds"].sum())


def _fit_design(args) -> list[dict]:
    d, data, targets, families, resamples, seed, n_starts, width = args
    out = []
    p_ref = float(np.exp(np.log(data["trainable_params"]).mean()))
    n_ref = float(np.exp(np.log(data["step"]).mean()))
    P, N = data["trainable_params"].to_numpy(float) / p_ref, data["step"].to_numpy(float) / n_ref
    labels = data[RUN].astype(str).agg("/".join, axis=1).to_numpy()
    runs = [np.flatnonzero(labels == u) for u in dict.fromkeys(labels)]
    for target in targets:
        y = data[target].to_numpy(float)
        row = {"method": d.method, "target": target, "ranks": " ".join(map(str, d.ranks)), "n_ranks": len(d.ranks),
               "n_seeds": d.n_seeds, "max_step": d.max_step, "n_runs": len(runs), "n_points": len(y)}
        fits = []
        for name in families:
            res = fit_family(FAMILIES[name], P, N, y, n_starts=n_starts)
            if res is not None:
                fits.append((not res.converged, log_metrics(FAMILIES[name], res.params, P, N, y)["aic"], name, res))
        if not fits:
            out.append({**row, "family": None, "status": "no fit"})
            continue
        _, _, name, best = min(fits, key=lambda t: (t[0], t[1]))
        fam = FAMILIES[name]
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(resamples):
            rows = np.concatenate([runs[i] for i in rng.integers(0, len(runs), len(runs))])
            if len(np.unique(P[rows])) < 2:
                continue
            res = fit_family(fam, P[rows], N[rows], y[rows], n_starts=BOOTSTRAP_STARTS, extra_starts=[best.theta])
            if res is not None:
                draws.append(res.theta)
        ci = percentile_intervals(np.array(draws), fam.params) if len(draws) >= 10 else {}
        row.update({"family": name, "status": "ok", "converged": best.converged,
                    "at_bound": ",".join(best.at_bound), "bootstrap_ok": len(draws)})
        for p in ("alpha", "beta"):
            lo, hi = ci.get(p, [math.nan, math.nan])
            row.update({p: best.params[p], f"{p}_low": lo, f"{p}_high": hi, f"{p}_width": hi - lo})
        row["both_within"] = bool(row["alpha_width"] <= width and row["beta_width"] <= width)
        out.append(row)
    return out


def design_table(runs: pd.DataFrame, steps: pd.DataFrame | None = None, targets=("loss_forget", "loss_ft"),
                 families=("joint", "shifted", "additive"), width: float = 0.15, resamples: int = 100,
                 seed: int = 0, n_starts: int = 8, min_ranks: int = 3, max_steps: list[int] | None = None,
                 eval_seconds_per_checkpoint: float | None = None, jobs: int = 1,
                 progress: bool = True) -> pd.DataFrame:
    from tqdm.auto import tqdm

    missing = [c for c in (*GROUP, *RUN, "step", "trainable_params", *targets) if c not in runs]
    if missing:
        raise ValueError(f"runs table: columns missing: {missing}")
    if runs.groupby(GROUP).ngroups != runs["method"].nunique():
        raise ValueError("runs table: several models or datasets; pass a table of one (model, dataset)")
    designs = enumerate_designs(runs, min_ranks, max_steps=max_steps)
    if not designs:
        raise ValueError(f"runs table: no design with >= {min_ranks} ranks and a checkpoint >= 8 steps")
    tasks = [(d, select(runs, d), list(targets), list(families), resamples, seed, n_starts, width) for d in designs]
    rows = []
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for part in tqdm(pool.map(_fit_design, tasks, chunksize=4), total=len(tasks), disable=not progress,
                             desc="designs"):
                rows.extend(part)
    else:
        for t in tqdm(tasks, disable=not progress, desc="designs"):
            rows.extend(_fit_design(t))
    table = pd.DataFrame(rows)
    costs = {}
    for d in designs:
        train = training_seconds(steps, runs, d)
        checkpoints = int(select(runs, d)["step"].nunique()) + 1  # + step 0
        n_runs = len(d.ranks) * d.n_seeds
        evals = (eval_seconds_per_checkpoint * checkpoints * n_runs) if eval_seconds_per_checkpoint else 0.0
        costs[(d.method, " ".join(map(str, d.ranks)), d.n_seeds, d.max_step)] = (train / 60, (train + evals) / 60)
    key = list(zip(table["method"], table["ranks"], table["n_seeds"], table["max_step"]))
    table["train_cpu_min"] = [costs[k][0] for k in key]
    table["cost_cpu_min"] = [costs[k][1] for k in key]
    return table.sort_values(["method", "target", "cost_cpu_min", "n_ranks"]).reset_index(drop=True)


def cheapest(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and target, the cheapest design whose exponents both have intervals within the width."""
    ok = table[table["both_within"].fillna(False).astype(bool)]
    return ok.sort_values("cost_cpu_min").groupby(["method", "target"], as_index=False).head(1)
