"""Gradient-norm collapse (rsLoRA, arXiv 2312.03732, Fig. 3) summarised from the per-step logs."""

from __future__ import annotations

import pandas as pd

KEYS = ["model", "dataset", "method"]


def gradient_norm_by_rank(steps: pd.DataFrame) -> pd.DataFrame:
    """Per run: mean adapter gradient norm over all steps, and at the first and last step."""
    g = steps.sort_values("step").groupby([*KEYS, "rank", "lr", "seed"])
    out = g["grad_norm"].agg(mean="mean", first="first", last="last").reset_index()
    return out.rename(columns={"mean": "grad_norm_mean", "first": "grad_norm_first", "last": "grad_norm_last"})


def gradient_norm_at_matched_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Per run: the mean adapter gradient norm over the steps every run of its method logged (a run with more
    steps would otherwise average over a later, smaller-gradient phase the others never reached)."""
    keys = [*KEYS, "rank", "lr", "seed"]
    out = []
    for _, g in steps.groupby(KEYS):
        runs = g.groupby(keys)
        common = set.intersection(*(set(r["step"]) for _, r in runs))
        m = g[g["step"].isin(common)].groupby(keys, as_index=False).agg(grad_norm_mean=("grad_norm", "mean"),
                                                                       matched_steps=("step", "nunique"))
        out.append(m)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def gradient_norm_spread(by_rank: pd.DataFrame) -> pd.DataFrame:
    """Per method: max/min across ranks of the mean gradient norm (1 = no dependence on rank).

    LoRA's alpha/r scaling makes gradient norms shrink with rank; rsLoRA's alpha/sqrt(r) keeps them
    of one order of magnitude, so its ratio should be far smaller.
    """
    rows = []
    for key, grp in by_rank.groupby([*KEYS, "lr", "seed"]):
        per_rank = grp.groupby("rank")["grad_norm_mean"].mean()
        rows.append({
            **dict(zip([*KEYS, "lr", "seed"], key)),
            "ranks": len(per_rank),
            "min_rank": int(per_rank.idxmin()),
            "max_rank": int(per_rank.idxmax()),
            "ratio_max_min": float(per_rank.max() / per_rank.min()) if len(per_rank) > 1 else float("nan"),
            "ratio_lowest_to_highest_rank": float(per_rank.iloc[0] / per_rank.iloc[-1]) if len(per_rank) > 1 else float("nan"),
        })
    return pd.DataFrame(rows)
