"""rsLoRA (arXiv 2312.03732) claims, tested on the fine-tuning runs themselves.

The paper's claims are about training: with gamma = alpha/r the adapters' gradients collapse as the rank
grows and larger ranks learn no better; with alpha/sqrt(r) they do not collapse and larger ranks learn
better. The measures: the log-log slope of each run's mean adapter gradient norm (over the steps every run
of the method logged) against rank, and the slope of each run's final held-out fine-tuning loss against
log2(rank). The rank-stability simulation (first Adam steps from B = 0) follows from the derivation by
algebra; its row checks the derivation and is labelled so, it is not the verdict on the training claims.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .across_runs import slope_across_runs
from .ledger import Claim, Measurement, above, below, within

SOURCE = "Kalajdzievski 2023, rsLoRA (arXiv 2312.03732)"
GRAD_LINK = "fig:rslora-grad-norms"
CURVE_LINK = "fig:rslora-learning-curves"

GRAD_COLLAPSE = Claim(
    "rslora-grad-collapse", "rsLoRA", "With alpha/r scaling the adapters' gradient norm collapses as the rank grows "
    "(about r^-1/2).", f"{SOURCE}, Sec. 3 and Fig. 2",
    "95% interval of the LoRA slope d log|grad| / d log r inside [-0.75, -0.25]", within(-0.75, -0.25), GRAD_LINK)
GRAD_STABLE = Claim(
    "rslora-grad-stable", "rsLoRA", "With alpha/sqrt(r) scaling the gradient norm does not collapse with rank "
    "(about r^0).", f"{SOURCE}, Sec. 3 and Fig. 2",
    "95% interval of the rsLoRA slope d log|grad| / d log r inside [-0.25, 0.25]", within(-0.25, 0.25), GRAD_LINK)
LORA_STALLS = Claim(
    "rslora-lora-stalls", "rsLoRA", "With alpha/r, larger ranks learn no better.", f"{SOURCE}, Fig. 1",
    "95% interval of the LoRA final fine-tuning loss slope per doubling of r above -0.01 nats (no rank gains "
    "0.01 nats per doubling)", above(-0.01), CURVE_LINK)
RSLORA_LEARNS = Claim(
    "rslora-larger-ranks-better", "rsLoRA", "With alpha/sqrt(r), larger ranks reach a lower fine-tuning loss.",
    f"{SOURCE}, Fig. 1", "95% interval of the rsLoRA final fine-tuning loss slope per doubling of r below 0",
    below(0.0), CURVE_LINK)
DERIVATION = Claim(
    "rslora-derivation-check", "rsLoRA", "The derivation's moment scaling: alpha/r collapses, alpha/sqrt(r) keeps, "
    "constant scaling explodes the adapter moments with rank (a check of the algebra, not of training).",
    f"{SOURCE}, Theorem 3.2", "every primary simulated slope within its tolerance of the derivation's value",
    lambda value, lo, hi: value >= 1.0, "fig:rank-stability-adam", needs_interval=False)
CLAIMS = (GRAD_COLLAPSE, GRAD_STABLE, LORA_STALLS, RSLORA_LEARNS, DERIVATION)


def final_losses(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["model", "dataset", "method", "rank", "lr", "seed"]
    last = runs.sort_values("step").groupby(keys, as_index=False).tail(1)
    return last[[*keys, "step", "loss_ft"]]


def _scale(d: pd.DataFrame, method: str, what: str) -> str:
    ranks = sorted(d["rank"].unique())
    return (f"{d['model'].iloc[0]}, {method}, ranks {', '.join(map(str, ranks))}, {len(d)} runs, "
            f"{int(d.groupby('rank')['seed'].nunique().min())} seed(s) per rank; {what}")


def measure(steps: pd.DataFrame, runs: pd.DataFrame, slopes: pd.DataFrame | None) -> list[tuple[Claim, Measurement]]:
    from ..laws.gradnorm import gradient_norm_at_matched_steps

    grads = gradient_norm_at_matched_steps(steps)
    finals = final_losses(runs)
    out = []
    for claim, method in ((GRAD_COLLAPSE, "lora"), (GRAD_STABLE, "rslora")):
        d = grads[grads["method"] == method].assign(log_rank=lambda f: np.log(f["rank"]),
                                                  log_grad=lambda f: np.log(f["grad_norm_mean"]))
        if d.empty:
            out.append((claim, Measurement(f"no {method} runs", tested=False)))
            continue
        s = slope_across_runs(d, "log_rank", "log_grad")
        out.append((claim, Measurement(
            f"slope of log mean adapter gradient norm on log r ({method}; {s['interval']})", s["slope"],
            s["ci_low"], s["ci_high"], _scale(d, method, f"{int(d['matched_steps'].min())} matched steps"),
            note=f"max/min mean gradient norm across ranks {d['grad_norm_mean'].max() / d['grad_norm_mean'].min():.2f}")))
    for claim, method in ((LORA_STALLS, "lora"), (RSLORA_LEARNS, "rslora")):
        d = finals[finals["method"] == method].assign(log2_rank=lambda f: np.log2(f["rank"]))
        if d.empty:
            out.append((claim, Measurement(f"no {method} runs", tested=False)))
            continue
        s = slope_across_runs(d, "log2_rank", "loss_ft")
        by_rank = d.groupby("rank")["loss_ft"].mean()
        out.append((claim, Measurement(
            f"slope of the final held-out fine-tuning loss per doubling of r ({method}; {s['interval']})",
            s["slope"], s["ci_low"], s["ci_high"], _scale(d, method, f"step {int(d['step'].max())}"),
            note="final loss by rank: " + ", ".join(f"r={r}: {v:.4f}" for r, v in by_rank.items()))))
    if slopes is None or slopes.empty:
        out.append((DERIVATION, Measurement("rank-stability simulation absent", tested=False)))
    else:
        primary = slopes[slopes["primary"].astype(bool)]
        share = float(primary["reproduces"].astype(bool).mean()) if len(primary) else math.nan
        out.append((DERIVATION, Measurement(
            "share of the primary simulated moment slopes within tolerance (first Adam steps from B = 0: "
            "follows from the derivation by algebra)", share,
            scale=f"{len(primary)} slopes, ranks {int(primary['rank_min'].min())}-{int(primary['rank_max'].max())}")))
    return out


def load(results: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    from ..io import read_table
    from ..laws.schemas import RANK_STABILITY_SLOPES
    from ..lm.aggregate import RUNS_TABLE, STEPS_TABLE

    slopes_csv = results / "laws" / "rank_stability_slopes.csv"
    slopes = read_table(slopes_csv, RANK_STABILITY_SLOPES) if slopes_csv.exists() else None
    return (read_table(results / "lm" / "steps.csv", STEPS_TABLE), read_table(results / "lm" / "runs.csv", RUNS_TABLE),
            slopes)
