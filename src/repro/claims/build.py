"""Assemble results/claims.csv from a results folder: every study's claims, measured and judged.

A study whose results are absent (its branch disabled in the config) contributes its claims as
``not tested`` with the reason, so the ledger always lists every claim of the four sources.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io import TableSpec
from . import compression, forgetting, rslora, teb
from .ledger import COLUMNS, Measurement, mark_robustness, row

CLAIMS_TABLE = TableSpec("the claims ledger (repro claims build)", COLUMNS,
                         text=("id", "study", "claim", "source", "measure", "criterion", "verdict", "scale", "precision",
                               "robust", "link", "note"),
                         complete=("id", "study", "claim", "verdict"), rebuild="delete it and rerun: the claims rule rebuilds it")


def lm_precision(runs: pd.DataFrame) -> str:
    """What the fine-tuning runs computed in, from each run's summary (autocast 'auto' resolves per machine)."""
    kinds = set()
    for run_dir in runs["run_dir"].dropna().unique():
        summary = Path(run_dir) / "summary.json"
        if not summary.is_file():
            continue
        s = json.loads(summary.read_text())
        kinds.add(f"{s.get('dtype', '?')} weights" + (", bf16 autocast in training" if s.get("bf16_autocast") else ""))
    return "; ".join(sorted(kinds)) or "unknown"


def _absent(claims, why: str) -> list[tuple]:
    return [(c, Measurement("results absent", tested=False, note=why)) for c in claims]


def measure_all(results: Path, cfg: dict, resamples: int) -> list[dict]:
    rows: list[dict] = []
    runs_csv = results / "lm" / "runs.csv"
    if runs_csv.exists():
        runs, fits, matched = forgetting.load(results)
        precision = lm_precision(runs)
        pairs = forgetting.measure(runs, fits, matched, resamples=resamples)
        steps, runs_again, slopes = rslora.load(results)
        pairs += rslora.measure(steps, runs_again, slopes)
    else:
        precision = "not run"
        pairs = _absent((*forgetting.CLAIMS, *rslora.CLAIMS), f"{runs_csv} absent")
    rows += [row(c, m, precision) for c, m in pairs]
    summary_csv = results / "teb" / "summary.csv"
    if summary_csv.exists():
        summary, evals = teb.load(results)
        pairs = teb.measure(summary, evals, cfg["teb"])
    else:
        pairs = _absent(teb.CLAIMS, f"{summary_csv} absent")
    rows += [row(c, m, "float32") for c, m in pairs]
    schemes_csv = results / "compression" / "tables" / "schemes.csv"
    if schemes_csv.exists():
        pairs = compression.measure(*compression.load(results))
    else:
        pairs = _absent(compression.CLAIMS, f"{schemes_csv} absent")
    rows += [row(c, m, "exact") for c, m in pairs]
    return rows


def build(results: Path, cfg: dict, compare: list[Path], resamples: int = 999) -> pd.DataFrame:
    from ..io import read_table

    rows = measure_all(Path(results), cfg, resamples)
    others = {}
    for path in compare:
        if Path(path).exists():
            other = read_table(path, CLAIMS_TABLE)
            precision = "; ".join(sorted(set(other.loc[other["study"].isin(["forgetting", "rsLoRA"]), "precision"])))
            others[f"{path} ({precision})"] = other.to_dict("records")
    table = pd.DataFrame(mark_robustness(rows, others), columns=list(COLUMNS))
    # each claim's rows together (per method, per task), claims in the order the studies register them
    order = {claim: i for i, claim in enumerate(dict.fromkeys(table["id"]))}
    return table.sort_values("id", key=lambda ids: ids.map(order), kind="stable").reset_index(drop=True)
