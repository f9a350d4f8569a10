"""End to end: the TEB branch of the test-preset DAG produced sane figures, tables and numbers."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from repro.teb.exact import exact_te


@pytest.mark.slow
def test_teb_outputs_of_test_preset(test_preset_run):
    ws = test_preset_run
    for name in ("te_vs_exact", "info_plane", "switch"):
        for ext in ("pdf", "png"):
            path = ws / "results-test" / "figures" / f"teb_{name}.{ext}"
            assert path.exists() and path.stat().st_size > 5000, path
    for name in ("tasks", "te_sweep"):
        tex = (ws / "results-test" / "tables" / f"teb_{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex and "\\caption" in tex
    numbers = (ws / "results-test" / "teb" / "numbers.tex").read_text()
    macros = re.findall(r"\\newcommand\{\\(\w+)\}\{([^}]*)\}", numbers)
    assert len(macros) > 20 and all(name.startswith("Teb") for name, _ in macros)

    evals = pd.read_csv(ws / "results-test" / "teb" / "evals.csv")
    assert set(evals["task"]) == {"ar-c0", "ar-c0.5", "sines"}
    assert {"te_estimate", "te_estimate_se", "kl", "gain_vs_target"} <= set(evals.columns)
    stochastic = evals[evals["variant"].isin(["teb", "teb0"])]
    assert len(stochastic) and (stochastic["te_estimate"] <= stochastic["kl"]).all()  # every TEB / TEB_0 row
    assert stochastic["te_estimate_se"].notna().all()
    for task, g in evals.groupby("task"):
        assert {"target", "teb", "joint"} <= set(g["variant"]), task
        assert g.loc[g["variant"] == "target", "gain_vs_target"].abs().max() == 0
        assert g.loc[~g["variant"].isin(["teb", "teb0"]), "te_estimate"].isna().all()
        teb = g[g["variant"] == "teb"]
        assert (teb["kl"] > 0).all() and teb["te_estimate"].notna().all()
    sines = evals[evals["task"] == "sines"]
    assert sines["mse_switch"].gt(0).all() and sines["switch_fraction"].between(0.2, 0.8).all()

    sweep = pd.read_csv(ws / "results-test" / "teb" / "te_sweep.csv")
    for c in (0.0, 0.5):
        s = sweep[sweep["c"] == c].set_index("estimator")
        assert s["exact_te"].iloc[0] == pytest.approx(exact_te(0.8, 0.3, c, 1.0, 0.5))
        assert abs(s.loc["gaussian", "te"] - s["exact_te"].iloc[0]) < 0.1
        assert {"teb", "joint", "gaussian", "ksg"} <= set(s.index)
    plane = pd.read_csv(ws / "results-test" / "teb" / "info_plane.csv")
    assert set(plane.loc[plane["task"] == "ar-c0.5", "beta"]) == {1.0, 100.0}
