"""The TEB study's aggregation, figures, tables and numbers, run through their commands on a small fixture
of evaluations (tests/data/teb_report).

Every check compares an output with what it is made from (evaluation CSVs, manifests), so a figure that
draws something else, a table that drops a row or a macro with a stale value fails.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_helpers import assert_figure_files, read_macros, run_cli, shows, tex_table

from repro.report.numbers import macro_name

REPO = Path(__file__).resolve().parents[1]
TEB_FIXTURE = Path(__file__).parent / "data" / "teb_report"

@pytest.fixture(scope="module")
def teb_run(tmp_path_factory) -> dict:
    evals = sorted((TEB_FIXTURE / "evals").rglob("*.csv"))
    estimators = sorted((TEB_FIXTURE / "estimators").glob("*.csv"))
    manifests = sorted((TEB_FIXTURE / "data").glob("*/manifest.json"))
    assert evals and estimators and manifests, TEB_FIXTURE
    root = tmp_path_factory.mktemp("teb")
    run_cli("teb", "aggregate", "--evals", *evals, "--estimators", *estimators, "--manifests", *manifests,
            "--out-dir", root)
    run_cli("teb", "figures", "--teb-dir", root, "--out", root / "figures")
    run_cli("teb", "tables", "--teb-dir", root, "--out", root / "tables")
    run_cli("teb", "numbers", "--teb-dir", root, "--out", root / "numbers.tex")
    info = {json.loads(p.read_text())["task"]: json.loads(p.read_text())["info"] for p in manifests}
    return {"root": root, "evals": pd.concat([pd.read_csv(p) for p in evals], ignore_index=True),
            "estimators": pd.concat([pd.read_csv(p) for p in estimators], ignore_index=True), "info": info}


def test_teb_fixture_is_small_and_complete():
    size = sum(p.stat().st_size for p in TEB_FIXTURE.rglob("*") if p.is_file())
    assert size < 200_000
    tasks = {p.parent.name for p in (TEB_FIXTURE / "data").glob("*/manifest.json")}
    assert tasks == {p.parent.name for p in (TEB_FIXTURE / "evals").glob("*/*.csv")}


def test_teb_aggregate_info_plane_carries_the_bounds(teb_run):
    plane = pd.read_csv(teb_run["root"] / "info_plane.csv")
    ev = teb_run["evals"]
    stochastic = ev[ev["variant"].isin(["teb", "teb0"])]
    assert len(plane) == len(stochastic) > 0 and set(plane["variant"]) <= {"teb", "teb0"}
    assert (plane["te_lower"] <= plane["log_k"] + 1e-9).all()
    assert plane["beta"].nunique() > 1  # the beta sweep is in the fixture
    assert np.allclose(plane["beta_authors"], 1 / plane["beta"])
    for _, r in plane.iterrows():
        info = teb_run["info"][r["task"]]
        if info["kind"] == "ar":
            assert r["exact_te"] == pytest.approx(info["exact_te"])


def test_teb_summary_is_mean_and_seed_sd_of_the_evaluations(teb_run):
    summary = pd.read_csv(teb_run["root"] / "summary.csv")
    ev = teb_run["evals"]
    groups = ev.groupby(["task", "variant", "beta"], dropna=False)
    assert len(summary) == len(groups) and (summary["seeds"] >= 3).all()  # the default trains 3 seeds
    for _, r in summary.iterrows():
        g = ev[(ev["task"] == r["task"]) & (ev["variant"] == r["variant"])
               & ((ev["beta"] == r["beta"]) | (ev["beta"].isna() & pd.isna(r["beta"])))]
        assert r["seeds"] == g["seed"].nunique()
        for col in ("te_lower", "authors_gain", "gain_vs_target"):
            assert r[f"{col}_mean"] == pytest.approx(g[col].mean())
            assert r[f"{col}_sd"] == pytest.approx(g[col].std(ddof=1))
        se = g["te_lower"].std(ddof=1) / math.sqrt(len(g))
        assert r["te_lower_seed_se"] == pytest.approx(se)
        assert r["te_lower_within_2se"] == float(abs(g["te_lower"].mean() - r["exact_te"]) <= 2 * se)
        # The seeds share the held-out windows: their window error does not average away.
        window = math.sqrt((g["te_lower_se"] ** 2).mean())
        assert r["te_lower_total_se"] == pytest.approx(math.sqrt(se**2 + window**2))


VARIANTS_READING_THE_SOURCE = ("teb", "teb0", "deterministic", "joint")


def test_teb_aggregate_te_sweep_carries_exact_te_and_seed_means(teb_run):
    sweep = pd.read_csv(teb_run["root"] / "te_sweep.csv")
    info, ev = teb_run["info"], teb_run["evals"]
    ar_tasks = {t for t, i in info.items() if i["kind"] == "ar"}
    assert set(sweep["task"]) == ar_tasks
    for _, r in sweep.iterrows():
        assert r["exact_te"] == pytest.approx(info[r["task"]]["exact_te"]) and r["c"] == info[r["task"]]["c"]
        assert r["error"] == pytest.approx(r["te"] - r["exact_te"])
        g = ev[(ev["task"] == r["task"]) & (ev["variant"] == r["estimator"])]
        if r["estimator"] in ("teb", "teb0"):
            first_beta = ev[(ev["task"] == r["task"]) & ev["variant"].isin(["teb", "teb0"])]["beta"].iloc[0]
            g = g[np.isclose(g["beta"], first_beta)]
        if r["estimator"] in VARIANTS_READING_THE_SOURCE:
            assert r["te"] == pytest.approx(g["te_lower"].mean()) and r["seeds"] == g["seed"].nunique()
            assert r["authors_gain"] == pytest.approx(g["authors_gain"].mean())
        else:
            e = teb_run["estimators"]
            assert r["te"] == pytest.approx(e[(e["task"] == r["task"]) & (e["estimator"] == r["estimator"])]["te"].iloc[0])
    assert {"teb", "gaussian", "ksg"} <= set(sweep["estimator"]) and "target" not in set(sweep["estimator"])


def test_teb_figures_and_tables(teb_run):
    from repro.teb.tables import TASK_LABEL, VARIANT_LABEL

    root = teb_run["root"]
    for name in ("te_vs_exact", "beta_sweep", "switch"):
        assert_figure_files(root / "figures" / f"teb_{name}")
    head, rows = tex_table(root / "tables" / "teb_tasks.tex")
    pairs = set(zip(teb_run["evals"]["task"], teb_run["evals"]["variant"]))
    # One row per task and model: every task of the fixture, none twice (the beta sweep is one row).
    assert len({t for t, _ in pairs}) == 8
    assert sorted((r[0], r[1]) for r in rows) == sorted((TASK_LABEL.get(t, t), VARIANT_LABEL[v]) for t, v in pairs)
    head, rows = tex_table(root / "tables" / "teb_te_sweep.tex")
    info = {i["c"]: i["exact_te"] for i in teb_run["info"].values() if i["kind"] == "ar"}
    assert [float(r[0]) for r in rows] == sorted(info)
    assert [r[head.index("exact")] for r in rows] == [f"{info[c]:.4f}" for c in sorted(info)]


def test_teb_numbers_match_the_tables(teb_run):
    m = read_macros(teb_run["root"] / "numbers.tex")
    sweep = pd.read_csv(teb_run["root"] / "te_sweep.csv")
    for (c, estimator), g in sweep.groupby(["c", "estimator"]):
        stem = macro_name("Teb", "Coupling", f"{c:g}".replace(".", "p"))
        assert shows(m[stem + "Exact"], g["exact_te"].iloc[0]) and shows(m[stem + macro_name(estimator)], g["te"].iloc[0])
    teb = sweep[sweep["estimator"] == "teb"]
    assert shows(m["TebMaxAbsErrorTeb"], (teb["te"] - teb["exact_te"]).abs().max())
    ksg = sweep[sweep["estimator"] == "ksg"]
    assert shows(m["TebMaxAbsErrorKsg"], (ksg["te"] - ksg["exact_te"]).abs().max())
    ev = teb_run["evals"]
    assert m["TebNumModels"] == str(len(ev)) and m["TebNumSeeds"] == str(ev["seed"].nunique())
    assert m["TebNumBetas"] == str(ev[ev["variant"].isin(["teb", "teb0"])]["beta"].nunique())
    sines = ev[(ev["task"] == "sines") & (ev["variant"] == "target")]
    if len(sines):
        assert shows(m["TebSinesTargetMseSwitch"], sines["mse_switch"].mean())
    for task in ("sines", "digits", "needle"):
        g = ev[ev["task"] == task]
        assert shows(m[macro_name("Teb", task, "Exact")], g["exact_te"].iloc[0])
        teb0 = g[(g["variant"] == "teb0") & np.isclose(g["beta"], g.loc[g["variant"] == "teb0", "beta"].iloc[0])]
        assert shows(m[macro_name("Teb", task, "teb0", "TeLower")], teb0["te_lower"].mean())
        assert shows(m[macro_name("Teb", task, "teb0", "AuthorsGain")], teb0["authors_gain"].mean())
    stochastic = ev[ev["variant"].isin(["teb", "teb0"])]
    above = (stochastic["te_lower"] > stochastic["exact_te"] + 2 * stochastic["te_lower_se"]).sum()
    assert m["TebBoundAboveExact"] == str(above)
    used = set(re.findall(r"\\(?:val|ifval)\{(Teb[A-Za-z]+)\}", (REPO / "paper/sections/teb.tex").read_text()))
    assert used and sorted(used - set(m)) == []
