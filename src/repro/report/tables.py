"""LaTeX (booktabs) tables of the fits, written with pandas' Styler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "--"
    return f"{value:.{digits}g}"


def with_ci(value, ci) -> str:
    """``value [low, high]``; with value None, the interval alone."""
    if not ci or any(c is None or not math.isfinite(c) for c in ci):
        return fmt(value)
    interval = f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return interval if value is None else f"{fmt(value)} {interval}"


def to_latex(df: pd.DataFrame, path: Path, caption: str, label: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    styler = df.style.hide(axis="index")
    text = styler.to_latex(hrules=True, caption=caption, label=label, position="htbp", position_float="centering")
    path.write_text(text)
    return path


def tex_escape(s) -> str:
    """Text safe inside LaTeX: the ten special characters escaped, backslash first."""
    s = str(s).replace("\\", "\0")
    for a, b in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$"), ("{", r"\{"),
                 ("}", r"\}"), ("^", r"\^{}"), ("~", r"\~{}")):
        s = s.replace(a, b)
    return s.replace("\0", r"\textbackslash{}")


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


def make_all(fits_dir: Path, gradnorm_csv: Path, early_csv: Path, out_dir: Path) -> list[Path]:
    fits = [json.loads(p.read_text()) for p in sorted(Path(fits_dir).glob("*.json"))]
    out_dir = Path(out_dir)
    matched = pd.read_csv(early_csv) if Path(early_csv).stat().st_size > 1 else pd.DataFrame()
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
        to_latex(gradnorm_table(pd.read_csv(gradnorm_csv)), out_dir / "gradient_norms.tex",
                 "Spread across ranks of the mean adapter gradient norm over training.", "tab:grad-norms"),
        to_latex(early_stopping_table(matched), out_dir / "early_stopping.tex",
                 "Forgetting of each rank at matched fine-tuning loss.", "tab:early-stopping"),
    ]
