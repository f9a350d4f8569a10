"""``results/numbers.tex``: the numbers the forgetting-law and rsLoRA sections quote, as macros.

They read the tidy tables (`runs.csv`), what `repro laws fit` wrote (fit JSONs, gradient-norm spread)
and the slopes of `repro laws rank-stability`; no fit is re-evaluated. Macro names and number formats
come from the ground floor (`repro.report.numbers`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..io import read_table
from ..lm.aggregate import RUNS_TABLE
from ..report.latex import tex_escape
from ..report.numbers import Macros, macro_name
from . import schemas
from .schemas import load_fits


def collect(runs: pd.DataFrame, fits: list[dict], spread: pd.DataFrame, stability: pd.DataFrame | None) -> Macros:
    m = Macros("repro laws numbers")
    datasets = list(dict.fromkeys(runs["dataset"]))
    primary = datasets[0]
    m.add("ModelName", tex_escape(runs["model"].iloc[0]))
    m.add("NumRuns", int(runs.groupby(["dataset", "method", "rank", "lr", "seed"]).ngroups))
    m.add("NumCheckpointRows", int(len(runs)))
    m.add("MaxSteps", int(runs["step"].max()))
    m.add("RankList", ", ".join(str(r) for r in sorted(runs["rank"].unique())))
    m.add("MinTrainableParams", int(runs["trainable_params"].min()))
    m.add("MaxTrainableParams", int(runs["trainable_params"].max()))

    for f in fits:
        qualifiers = [] if f["dataset"] == primary else [f["dataset"]]
        method = f["method"]
        if f["family"] == "linear":
            stem = macro_name("Lin", *qualifiers, method)
            m.add(stem + "Status", f["status"].replace("_", " "))
            if f["status"] != "ok":
                continue
            m.add(stem + "Slope", f["params"]["b"])
            m.add(stem + "SlopeLow", f["ci95"]["b"][0])
            m.add(stem + "SlopeHigh", f["ci95"]["b"][1])
            # The interval above is run-clustered; the naive OLS one is quoted to show the difference.
            for kind, key in (("Naive", "ci95_naive"), ("Boot", "ci95_bootstrap")):
                ci = (f.get(key) or {}).get("b")
                if ci:
                    m.add(stem + "Slope" + kind + "Low", ci[0])
                    m.add(stem + "Slope" + kind + "High", ci[1])
            m.add(stem + "Runs", f.get("n_clusters", 0))
            m.add(stem + "Intercept", f["params"]["a"])
            m.add(stem + "Rsq", f["r2"])
            m.add(stem + "Pvalue", f["p_value_b_positive"], 2)
            m.add(stem + "Claim", f["claim_b_positive"])
            m.add(stem + "N", f["n"])
            continue
        target = {"loss_forget": "Forget", "loss_ft": "Ft"}[f["target"]]
        if f.get("chosen"):
            stem = macro_name("Pow", *qualifiers, target, method)
            m.add(stem + "Family", f["family"])
            m.add(stem + "Formula", f["formula"].replace("^", r"\^{}"))
            for p in ("alpha", "beta", "E"):
                if p in f["params"]:
                    m.add(stem + macro_name(p), f["params"][p])
                    ci = f.get("ci95", {}).get(p)
                    if ci:
                        m.add(stem + macro_name(p) + "Low", ci[0])
                        m.add(stem + macro_name(p) + "High", ci[1])
            m.add(stem + "Rsq", f["r2"])
            m.add(stem + "ExtrapRmse", f["extrap_rmse_steps"], 2)
            m.add(stem + "ExtrapRmseRank", f["extrap_rmse_rank"], 2)
            m.add(stem + "Converged", "yes" if f.get("converged") else "no")
            m.add(stem + "AtBound", ", ".join(f.get("at_bound") or []) or "none")
            m.add(stem + "BootstrapOk", f.get("bootstrap_ok", 0))

    for _, row in spread.iterrows():
        qualifiers = [] if row["dataset"] == primary else [row["dataset"]]
        if len(spread[(spread["dataset"] == row["dataset"]) & (spread["method"] == row["method"])]) > 1:
            continue  # several lr/seed: the table has them; the text quotes only unambiguous numbers
        m.add(macro_name("GradNormRatio", *qualifiers, row["method"]), row["ratio_max_min"])

    if stability is not None and len(stability):
        rank_stability_macros(m, stability)
    return m


def _slope_text(value) -> str:
    """Two decimals (significant digits would print 1.044 and 1.050 both as 1); no "-0.00"."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    text = f"{float(value):.2f}"
    return "0.00" if text == "-0.00" else text


def rank_stability_macros(m: Macros, slopes: pd.DataFrame) -> None:
    """Slopes of `repro laws rank-stability` at its last step (prefix RankStab).

    Per scaling, measure and optimizer: ``RankStab<Scaling><Measure><Optimizer>Slope`` and, where the table
    has them, ``...Low`` / ``...High`` (95 % interval), ``...Expected`` (closed form), ``...Verdict``
    (flat / collapse / explode / inconclusive); per scaling the paper's claim ``RankStab<Scaling>Claim``;
    and the setting: ``RankStabPrimaryOptimizer``, ``RankStabStep``, ``RankStabSeeds``,
    ``RankStabFlatTolerance``, and ``RankStabReproduced`` (yes when every primary row's verdict is the
    paper's claim, else no).
    """
    slopes = slopes[slopes["step"] == slopes["step"].max()]
    for _, row in slopes.iterrows():
        stem = macro_name("RankStab", row["scaling"], row.get("measure", ""), row.get("optimizer", ""))
        if stem + "Slope" in m.items:
            continue
        m.add(stem + "Slope", _slope_text(row["slope"]))
        for col, suffix in (("slope_low", "Low"), ("slope_high", "High"), ("expected_slope", "Expected")):
            if col in row:
                m.add(stem + suffix, _slope_text(row[col]))
        if "verdict" in row:
            m.add(stem + "Verdict", str(row["verdict"]))
    if "paper_claim" in slopes:
        for rule, claim in slopes.groupby("scaling", sort=False)["paper_claim"].first().items():
            m.add(macro_name("RankStab", rule, "Claim"), str(claim) if isinstance(claim, str) else "n/a")
    m.add("RankStabStep", int(slopes["step"].iloc[0]))
    if "optimizer_role" in slopes:
        primary = slopes[slopes["optimizer_role"] == "primary"]
        if len(primary):
            m.add("RankStabPrimaryOptimizer", {"adam": "Adam", "sgd": "SGD"}.get(primary["optimizer"].iloc[0],
                                                                                 str(primary["optimizer"].iloc[0])))
        rows = slopes[slopes["primary"].astype(bool)] if "primary" in slopes else primary
        if len(rows) and "reproduces" in rows:
            m.add("RankStabReproduced", "yes" if rows["reproduces"].astype(bool).all() else "no")
    if "n_init_seeds" in slopes:
        m.add("RankStabSeeds", int(slopes["n_init_seeds"].iloc[0]))
    if "flat_tolerance" in slopes:
        m.add("RankStabFlatTolerance", float(slopes["flat_tolerance"].max()), 2)


def eval_macros(m: Macros, runs: pd.DataFrame) -> None:
    """Base vs most-forgetting checkpoint, per benchmark metric and for the refusal rate (prefix Eval).

    The most-forgetting checkpoint is the evaluated fine-tuned checkpoint with the largest L_f.
    """
    scores = [c for c in runs.columns if c.startswith("task_") and not c.endswith(("_stderr", "_n"))]
    if "refusal_rate" in runs:
        scores.append("refusal_rate")
    evaluated = runs[runs[scores].notna().any(axis=1)] if scores else runs.iloc[:0]
    base, tuned = evaluated[evaluated["step"] == 0], evaluated[evaluated["step"] > 0]
    if base.empty or tuned.empty:
        return
    base, worst = base.iloc[0], tuned.loc[tuned["loss_forget"].idxmax()]
    m.add("EvalForgotMethod", str(worst["method"]))
    m.add("EvalForgotRank", int(worst["rank"]))
    m.add("EvalForgotStep", int(worst["step"]))
    m.add("EvalForgotLf", float(worst["loss_forget"]))
    m.add("EvalBaseLf", float(base["loss_forget"]))
    for col in scores:
        stem = "Refusal" if col == "refusal_rate" else macro_name(col.removeprefix("task_"))
        for where, row in (("Base", base), ("Forgot", worst)):
            m.add(f"Eval{stem}{where}", float(row[col]))
            if col + "_stderr" in runs:
                m.add(f"Eval{stem}{where}Stderr", float(row[col + "_stderr"]), 2)


def make_numbers(runs_csv: Path, fits_dir: Path, spread_csv: Path, stability_csv: Path | None, out: Path) -> Path:
    runs = read_table(runs_csv, RUNS_TABLE)
    fits = load_fits(fits_dir)
    stability = read_table(stability_csv, schemas.RANK_STABILITY_SLOPES) if stability_csv else None
    macros = collect(runs, fits, read_table(spread_csv, schemas.GRADNORM_SPREAD), stability)
    eval_macros(macros, runs)
    return macros.write(out)
