"""``results/teb/numbers.tex``: every TEB number the paper quotes, as ``\\Teb...`` macros, from the
aggregate's tables only."""

from __future__ import annotations

import math
from pathlib import Path

from ..report.numbers import Macros, macro_name
from .aggregate import at_default_beta, read_aggregate, read_te_sweep
from .runs import STOCHASTIC


def collect_numbers(teb_dir: Path) -> Macros:
    ev, summary, defaults = read_aggregate(teb_dir)
    sweep = read_te_sweep(teb_dir)
    m = Macros("repro teb numbers")
    for c, g in sweep.groupby("c", sort=True) if len(sweep) else []:
        stem = macro_name("Teb", "Coupling", f"{c:g}".replace(".", "p"))
        m.add(stem + "Exact", float(g["exact_te"].iloc[0]))
        for _, r in g.iterrows():
            m.add(stem + macro_name(r["estimator"]), float(r["te"]))
    if len(sweep):
        teb = sweep[sweep["estimator"] == "teb"]
        if len(teb):
            m.add("TebMaxAbsErrorTeb", float(teb["error"].abs().max()))
            if teb["authors_gain"].notna().any():
                m.add("TebMaxAbsErrorTebGain", float((teb["authors_gain"] - teb["exact_te"]).abs().max()))
            within = teb["within_2se"].dropna()
            m.add("TebArWithinTwoSe", f"{int(within.sum())} of {len(within)}" if len(within) else "not tested (one seed)")
            total = teb["within_2se_total"].dropna()
            m.add("TebArWithinTwoTotalSe", f"{int(total.sum())} of {len(total)}")
        for name in ("gaussian", "ksg"):
            s = sweep[sweep["estimator"] == name]
            if len(s):
                m.add(macro_name("TebMaxAbsError", name), float(s["error"].abs().max()))
    per_task = at_default_beta(summary, defaults)
    for task, g in per_task.groupby("task", sort=False):
        if g["kind"].iloc[0] == "ar":
            continue
        s = g.set_index("variant")
        stem = macro_name("Teb", task)
        m.add(stem + "Exact", float(g["exact_te"].iloc[0]))
        m.add(stem + "Ceiling", float(g["source_entropy"].iloc[0]))
        for variant in s.index:
            vs = stem + macro_name(variant)
            for col, name in (("te_lower_mean", "TeLower"), ("kl_mean", "Kl"), ("authors_gain_mean", "AuthorsGain")):
                if math.isfinite(s.loc[variant, col]):
                    m.add(vs + name, float(s.loc[variant, col]))
            metric = "mse" if s["kind"].iloc[0] == "sines" else "accuracy"
            m.add(vs + macro_name(metric, "Switch"), float(s.loc[variant, f"{metric}_switch_mean"]))
            m.add(vs + macro_name(metric, "NoSwitch"), float(s.loc[variant, f"{metric}_noswitch_mean"]))
    # The beta sweep's verdict per task and bottleneck: the betas whose KL is within 1 nat of the exact TE
    # while switch quality stays within 10 % of the best.
    swept = summary[summary["variant"].isin(STOCHASTIC) & (summary["kind"] != "ar")]
    for (task, variant), g in swept.groupby(["task", "variant"], sort=False):
        if g["beta"].nunique() < 2:
            continue
        ok = g[(g["kl_near_te"] == 1) & (g["accuracy_near_best"] == 1)]
        m.add(macro_name("Teb", task, variant, "MatchedBetas"),
              ", ".join(f"{b:g}" for b in sorted(ok["beta"])) if len(ok) else "none")
        m.add(macro_name("Teb", task, variant, "MinKl"), float(g["kl_mean"].min()))
    stochastic = ev[ev["variant"].isin(STOCHASTIC)]
    over = stochastic[stochastic["te_lower"] > stochastic["exact_te"] + 2 * stochastic["te_lower_se"]]
    m.add("TebBoundAboveExact", int(len(over)))
    m.add("TebNumModels", int(len(ev)))
    m.add("TebNumSeeds", int(ev["seed"].nunique()))
    m.add("TebNumBetas", int(stochastic["beta"].nunique()))
    return m


def make_numbers(teb_dir: Path, out: Path) -> Path:
    return collect_numbers(teb_dir).write(out)
