"""LaTeX (booktabs) tables of the forgetting-law and rsLoRA studies: the linear law, the power laws,
the gradient-norm spread across ranks and forgetting at matched fine-tuning loss.

They read what `repro laws fit` wrote (fit JSONs, gradient-norm and early-stopping tables); no fit is
re-evaluated. LaTeX formatting comes from the ground floor (`repro.report.latex`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import read_table
from ..report.latex import fmt, tex_escape, to_latex, with_ci
from . import schemas
from .schemas import load_fits


def linear_table(fits: list[dict]) -> pd.DataFrame:
    rows = []
    for f in fits:
        if f.get("family") != "linear":
            continue
        ok = f.get("status") == "ok"
        rows.append({
            "dataset": tex_escape(f["dataset"]),
            "method": f["method"],
            "$n$": f["n"],
            "runs": f.get("n_clusters", "--"),
            "$a$": with_ci(f["params"]["a"], f["ci95"]["a"]) if ok else "--",
            "$b$ (run-clustered)": with_ci(f["params"]["b"], f["ci95"]["b"]) if ok else "--",
            "$b$ naive CI": with_ci(None, f.get("ci95_naive", {}).get("b")) if ok else "--",
            "$b$ bootstrap CI": with_ci(None, f.get("ci95_bootstrap", {}).get("b")) if ok else "--",
            "$R^2$": fmt(f.get("r2")),
            "$p(b>0)$": fmt(f.get("p_value_b_positive"), 2),
            "claim": f.get("claim_b_positive", tex_escape(f["status"])),
        })
    return pd.DataFrame(rows)


def power_table(fits: list[dict]) -> pd.DataFrame:
    rows = []
    for f in fits:
        if f.get("family") in (None, "linear"):
            continue
        ok = f.get("status") == "ok"
        p, ci = f.get("params") or {}, f.get("ci95") or {}
        rows.append({
            "method": f["method"],
            "target": {"loss_forget": "$L_f$", "loss_ft": "$L_{ft}$"}.get(f["target"], tex_escape(f["target"])),
            "family": f["family"] + (" $\\star$" if f.get("chosen") else "")
            + ("" if not ok or f.get("converged") else " (not converged)")
            + (f" ({tex_escape(','.join(f['at_bound']))} at bound)" if ok and f.get("at_bound") else ""),
            "$\\alpha$": with_ci(p.get("alpha"), ci.get("alpha")) if ok else "--",
            "$\\beta$": with_ci(p.get("beta"), ci.get("beta")) if ok else "--",
            "$E$": with_ci(p.get("E"), ci.get("E")) if ok else "--",
            "AIC": fmt(f.get("aic"), 4) if ok else tex_escape(f["status"]),
            "$R^2$": fmt(f.get("r2")),
            "extrap. $N$": fmt(f.get("extrap_rmse_steps"), 2),
            "extrap. $P$": fmt(f.get("extrap_rmse_rank"), 2),
        })
    return pd.DataFrame(rows)


def gradnorm_table(spread: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "dataset": spread["dataset"].map(tex_escape),
        "method": spread["method"],
        "ranks": spread["ranks"],
        "max/min mean grad norm": spread["ratio_max_min"].map(fmt),
        "rank$_{\\min}$ / rank$_{\\max}$ norm": spread["ratio_lowest_to_highest_rank"].map(fmt),
    })


def early_stopping_table(matched: pd.DataFrame) -> pd.DataFrame:
    if matched.empty:
        return pd.DataFrame({"note": ["no L_ft level is reached by every rank"]})
    pivot = matched.pivot_table(index=["method", "loss_ft"], columns="rank", values="loss_forget").reset_index()
    pivot.columns = [f"$L_f$, r={c}" if isinstance(c, (int, float)) and c != "loss_ft" else c for c in pivot.columns]
    pivot = pivot.rename(columns={"loss_ft": "matched $L_{ft}$"})
    for c in pivot.columns[1:]:
        pivot[c] = pivot[c].map(lambda v: fmt(v, 4))
    return pivot


def make_tables(fits_dir: Path, gradnorm_csv: Path, early_csv: Path, out_dir: Path) -> list[Path]:
    fits = load_fits(fits_dir)
    out_dir = Path(out_dir)
    matched = read_table(early_csv, schemas.EARLY_STOPPING) if Path(early_csv).stat().st_size > 1 else pd.DataFrame()
    return [
        to_latex(linear_table(fits), out_dir / "linear_law.tex",
                 "Inverse linear law $L_f = a - b\\,L_{ft}$ (OLS; 95\\% intervals from run-clustered errors, "
                 "with the naive OLS and run-bootstrap intervals beside them; one-sided test of $b>0$ from the "
                 "clustered errors with $t(G-1)$, $G$ runs).",
                 "tab:linear-law"),
        to_latex(power_table(fits), out_dir / "power_laws.tex",
                 "Power-law fits of $L_f$ and $L_{ft}$ in $P$ and $N$ (Huber loss on log residuals from many "
                 "starts; bootstrap 95\\% intervals over runs, every resample refitted the same way; "
                 "$\\star$: lowest AIC; extrapolation RMSE on each run's held-out largest-$N$ checkpoint and "
                 "on the held-out largest $P$).",
                 "tab:power-laws"),
        to_latex(gradnorm_table(read_table(gradnorm_csv, schemas.GRADNORM_SPREAD)), out_dir / "gradient_norms.tex",
                 "Spread across ranks of the mean adapter gradient norm over training.", "tab:grad-norms"),
        to_latex(early_stopping_table(matched), out_dir / "early_stopping.tex",
                 "Forgetting of each rank at matched fine-tuning loss.", "tab:early-stopping"),
    ]
