"""`repro laws fit-table`: the project's power-law fitter on any table of results.

Same families, same Huber-on-log-residuals many-start procedure as `repro laws fit`
(:mod:`repro.laws.powerlaw`); parameters are reported in the table's own units.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write_text, json_default
from .powerlaw import (
    BOOTSTRAP_STARTS,
    FAMILIES,
    FIT_LOSS,
    HUBER_DELTA,
    fit_family,
    log_metrics,
    percentile_intervals,
    to_raw_units,
)


class TableError(ValueError):
    """Bad input table: names the file, the column or the row at fault."""


def load_table(csv: Path, x1: str, x2: str, y: str, drop_invalid: bool = False,
               cluster: str | None = None) -> tuple[pd.DataFrame, list[int]]:
    """The three columns as floats; invalid rows refused (or dropped) by their 1-based data-row number."""
    csv = Path(csv)
    if not csv.is_file():
        raise TableError(f"{csv}: no such file")
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{csv}: not a readable CSV table ({exc})") from None
    wanted = [x1, x2, y] + ([cluster] if cluster else [])
    unknown = [c for c in wanted if c not in table.columns]
    if unknown:
        raise TableError(f"{csv}: unknown column(s) {unknown}; the table has columns {list(table.columns)}")
    values = table[[x1, x2, y]].apply(pd.to_numeric, errors="coerce")
    bad_mask = ~(np.isfinite(values.to_numpy(float)) & (values.to_numpy(float) > 0)).all(axis=1)
    bad = [int(i) + 1 for i in np.flatnonzero(bad_mask)]
    if bad and not drop_invalid:
        first = bad[0] - 1
        shown = {c: table[c].iloc[first] for c in (x1, x2, y)}
        raise TableError(
            f"{csv}: row {bad[0]} (line {bad[0] + 1}) has a missing, non-positive or non-finite value "
            f"{shown}; {len(bad)} such row(s) in all: {bad[:20]}{' ...' if len(bad) > 20 else ''} "
            "(power laws are fitted on logs; pass --drop-invalid to leave them out)")
    data = values[~bad_mask].rename(columns={x1: "x1", x2: "x2", y: "y"})
    data["row"] = np.flatnonzero(~bad_mask) + 1
    if cluster:
        data["cluster"] = table.loc[~bad_mask, cluster].astype(str).to_numpy()
    return data.reset_index(drop=True), bad


def fit_table(csv: Path, x1: str, x2: str, y: str, family: str, drop_highest: int = 0, bootstrap: int = 0,
              seed: int = 0, drop_invalid: bool = False, n_starts: int = 8, cluster: str | None = None,
              progress: bool = False, bootstrap_starts: int | None = None) -> dict:
    if family not in FAMILIES:
        raise TableError(f"--family: unknown {family!r} (known: {sorted(FAMILIES)})")
    if drop_highest < 0:
        raise TableError(f"--drop-highest must be >= 0, got {drop_highest}")
    if bootstrap_starts is not None and bootstrap_starts < 1:
        raise TableError(f"--bootstrap-starts must be >= 1, got {bootstrap_starts}")
    t0 = time.perf_counter()
    fam = FAMILIES[family]
    data, invalid = load_table(csv, x1, x2, y, drop_invalid, cluster)
    dropped_high = []
    if drop_highest:
        order = data["y"].sort_values(ascending=False, kind="stable").index[:drop_highest]
        dropped_high = sorted(int(r) for r in data.loc[order, "row"])
        data = data.drop(index=order).reset_index(drop=True)
    k = len(fam.params)
    if len(data) <= k:
        raise TableError(f"{csv}: {len(data)} usable rows for the {k} parameters of the {family} family")
    for col, name in (("x1", x1), ("x2", x2)):
        if data[col].nunique() < 2:
            raise TableError(f"{csv}: column {name!r} has a single value; its exponent is not identifiable")
    x1_ref = float(np.exp(np.log(data["x1"]).mean()))
    x2_ref = float(np.exp(np.log(data["x2"]).mean()))
    X1, X2, Y = data["x1"].to_numpy() / x1_ref, data["x2"].to_numpy() / x2_ref, data["y"].to_numpy()
    fit = fit_family(fam, X1, X2, Y, n_starts=n_starts)
    if fit is None:
        raise TableError(f"{csv}: no starting point of the {family} family gives a positive prediction")
    metrics = log_metrics(fam, fit.params, X1, X2, Y)
    out = {
        "family": family,
        "formula": fam.formula,
        "columns": {"x1": x1, "x2": x2, "y": y},
        "n": int(len(data)),
        "fit_loss": FIT_LOSS,
        "huber_delta": HUBER_DELTA,
        "n_starts": fit.n_starts,
        "n_starts_agree": fit.n_agree,
        "converged": fit.converged,
        "at_bound": fit.at_bound,
        "params": to_raw_units(fam, fit.params, x1_ref, x2_ref),
        "params_normalised": fit.params,
        "x1_ref": x1_ref,
        "x2_ref": x2_ref,
        "r2": metrics["r2"],
        "rmse": metrics["rmse"],
        "aic_log": metrics["aic"],
        "rows_invalid_dropped": invalid if drop_invalid else [],
        "rows_highest_dropped": dropped_high,
        "ci": {},
    }
    if bootstrap:
        out.update(_bootstrap(fam, data, x1_ref, x2_ref, fit, bootstrap, seed,
                              BOOTSTRAP_STARTS if bootstrap_starts is None else bootstrap_starts, progress))
    out["seconds"] = time.perf_counter() - t0
    return out


def _bootstrap(fam, data, x1_ref, x2_ref, fit, resamples, seed, n_starts, progress) -> dict:
    """Percentile intervals over resampled rows (or whole clusters), each refitted from the full-data
    optimum and ``n_starts`` grid points of its own."""
    from tqdm.auto import tqdm

    groups = ([np.flatnonzero(data["cluster"].to_numpy() == c) for c in dict.fromkeys(data["cluster"])]
              if "cluster" in data else [np.array([i]) for i in range(len(data))])
    rng = np.random.default_rng(seed)
    X1, X2, Y = data["x1"].to_numpy() / x1_ref, data["x2"].to_numpy() / x2_ref, data["y"].to_numpy()
    draws, converged, failed = [], 0, 0
    for _ in tqdm(range(resamples), desc="bootstrap", disable=not progress):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if len(np.unique(X1[rows])) < 2 or len(np.unique(X2[rows])) < 2:
            failed += 1
            continue
        res = fit_family(fam, X1[rows], X2[rows], Y[rows], n_starts=n_starts, extra_starts=[fit.theta])
        if res is None:
            failed += 1
            continue
        converged += res.converged
        draws.append([to_raw_units(fam, res.params, x1_ref, x2_ref)[p] for p in fam.params])
    ci = percentile_intervals(np.array(draws), fam.params) if draws else {}
    return {"ci": ci, "bootstrap": {"resamples": resamples, "ok": len(draws), "failed": failed,
                                    "converged": converged,
                                    "unit": "cluster" if "cluster" in data else "row"}}


def write_json(result: dict, out: Path) -> None:
    atomic_write_text(Path(out), json.dumps(result, indent=2, default=json_default) + "\n")


def one_line(result: dict) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items())
    flag = "converged" if result["converged"] else "NOT converged"
    bound = f", at bound: {','.join(result['at_bound'])}" if result["at_bound"] else ""
    return f"{result['family']} n={result['n']} {params} ({flag}, {result['n_starts']} starts{bound})"


def _fmt(v: float) -> str:
    return f"{v:.6g}" if math.isfinite(v) else str(v)
