"""End to end: the TEB branch of the test-preset DAG produced sane figures, tables and numbers."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from repro.teb.exact import exact_te


@pytest.mark.slow
def test_teb_outputs_of_test_preset(test_preset_run):
    ws = test_preset_run
    for name in ("te_vs_exact", "beta_sweep", "switch"):
        for ext in ("pdf", "png"):
            path = ws / "results-test" / "figures" / f"teb_{name}.{ext}"
            assert path.exists() and path.stat().st_size > 5000, path
    for name in ("tasks", "te_sweep"):
        tex = (ws / "results-test" / "tables" / f"teb_{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex and "\\caption" in tex
        assert "TE est" not in tex  # no table calls the decoder gap a transfer entropy
    numbers = (ws / "results-test" / "teb" / "numbers.tex").read_text()
    macros = re.findall(r"\\newcommand\{\\(\w+)\}\{([^}]*)\}", numbers)
    assert len(macros) > 20 and all(name.startswith("Teb") for name, _ in macros)

    # The output contract: the exact TE on every task, the contrastive bound with its ceiling, the KL term,
    # the authors' metric and the seed on every row.
    evals = pd.read_csv(ws / "results-test" / "teb" / "evals.csv")
    assert set(evals["task"]) == {"ar-c0", "ar-c0.5", "sines"}
    assert {"exact_te", "te_lower", "te_lower_se", "log_k", "kl", "authors_gain", "seed"} <= set(evals.columns)
    assert "te_estimate" not in evals.columns
    assert evals["exact_te"].notna().all() and (evals["exact_te"] >= 0).all()
    assert evals.loc[evals["task"] == "sines", "exact_te"].iloc[0] == pytest.approx(1.52, abs=0.03)
    assert (evals["te_lower"] <= evals["log_k"] + 1e-9).all()
    assert np.allclose(evals["log_k"], math.log(16))  # bound.k of the test preset
    stochastic = evals[evals["variant"].isin(["teb", "teb0"])]
    assert len(stochastic) and stochastic[["kl", "authors_gain", "te_lower_se"]].notna().all().all()
    assert set(evals["seed"]) == {0, 1}
    for task, g in evals.groupby("task"):
        assert {"target", "teb", "joint"} <= set(g["variant"]), task
        target = g[g["variant"] == "target"]
        assert (target["te_lower"] == 0).all() and (target["authors_gain"] == 0).all()
    sines = evals[evals["task"] == "sines"]
    assert sines["mse_switch"].gt(0).all() and sines["switch_fraction"].between(0.2, 0.8).all()

    # summary.csv: one row per task x variant x beta, mean and seed SD over the two seeds.
    summary = pd.read_csv(ws / "results-test" / "teb" / "summary.csv")
    assert len(summary) == len(evals.groupby(["task", "variant", "beta"], dropna=False))
    for _, r in summary.iterrows():
        g = evals[(evals["task"] == r["task"]) & (evals["variant"] == r["variant"])
                  & ((evals["beta"] == r["beta"]) | (evals["beta"].isna() & pd.isna(r["beta"])))]
        assert r["seeds"] == 2 and r["te_lower_mean"] == pytest.approx(g["te_lower"].mean())
        assert r["te_lower_sd"] == pytest.approx(g["te_lower"].std(ddof=1), nan_ok=True)

    sweep = pd.read_csv(ws / "results-test" / "teb" / "te_sweep.csv")
    for c in (0.0, 0.5):
        s = sweep[sweep["c"] == c].set_index("estimator")
        assert s["exact_te"].iloc[0] == pytest.approx(exact_te(0.8, 0.3, c, 1.0, 0.5))
        assert abs(s.loc["gaussian", "te"] - s["exact_te"].iloc[0]) < 0.1
        assert {"teb", "joint", "gaussian", "ksg"} <= set(s.index)
    plane = pd.read_csv(ws / "results-test" / "teb" / "info_plane.csv")
    assert set(plane.loc[plane["task"] == "ar-c0.5", "beta"]) == {1.0, 100.0}
