"""The forgetting-law and rsLoRA studies' figures, tables and numbers, run through their commands on a
synthetic sweep that follows known laws.

Every check compares an output with what it is made from (fits, CSVs), so a figure that draws something
else, a table that drops a row or a macro with a stale value fails.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_helpers import assert_figure_files, read_macros, run_cli, shows, tex_table

from repro.report import style
from repro.report.numbers import macro_name

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 6)

REPO = Path(__file__).resolve().parents[1]

# Names with underscores: the tables and macros must escape them.
MODEL, DATASET = "smollm2_tiny", "stdlib_instruct"
RANKS = [1, 2, 4, 8]
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
EVALUATED = {0, 8, 64}
PER_RANK = 40_000
# L_f = 2 + A (P / 1e5)^alpha N^beta per method; L_ft falls as L_f rises (slope b = 2 of the linear law).
LAWS = {"lora": (0.05, 0.3, 0.4), "rslora": (0.08, 0.5, 0.4)}
TASKS = {"repro_arithmetic": "acc", "repro_heldout_text": "bits_per_byte", "repro_knowledge": "acc"}


def synthetic_runs(seed: int = 0) -> pd.DataFrame:
    """runs.csv with the columns `repro aggregate` writes (evaluation columns at the evaluated steps)."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, (A, alpha, beta) in LAWS.items():
        for r in RANKS:
            P = r * PER_RANK
            for n in STEPS:
                lf = 2.0 + (A * (P / 1e5) ** alpha * n**beta + rng.normal(0, 0.002) if n else 0.0)
                lft = 3.0 - 0.5 * (lf - 2.0) + (rng.normal(0, 0.002) if n else 0.0)
                row = dict(model=MODEL, dataset=DATASET, method=method, rank=r, lr=5e-4, seed=0, step=n,
                           trainable_params=P, loss_ft=lft, loss_forget=lf, kl_forget=lf - 2.0,
                           base_entropy=2.0, grad_norm=0.1 / math.sqrt(r), train_loss=lft + 0.01,
                           grad_norm_global=4.0, scaling=16 / (r if method == "lora" else math.sqrt(r)),
                           alpha=16, ft_tokens=884)
                for corpus in ("model-samples", "pydoc-topics"):
                    row.update({f"loss_forget__{corpus}": lf, f"base_entropy__{corpus}": 2.0,
                                f"kl_forget__{corpus}": lf - 2.0, f"forget_positions__{corpus}": 512})
                row.update(forget_positions=1024, max_steps=max(STEPS), batch_size=2, max_length=128,
                           run_dir=f"results/lm/runs/{MODEL}/{DATASET}/{method}/r{r}/lr0.0005/seed0")
                evaluated = n in EVALUATED
                scores = {"refusal_n": 51, "refusal_rate": 0.9 - 0.5 * (lf - 2.0), "refusal_rate_stderr": 0.04}
                for task, metric in TASKS.items():
                    scores.update({f"task_{task}_{metric}": 0.6 - 0.2 * (lf - 2.0) + 0.01 * len(task),
                                   f"task_{task}_{metric}_stderr": 0.05, f"task_{task}_n": 40})
                row.update({k: v if evaluated else np.nan for k, v in scores.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def synthetic_steps() -> pd.DataFrame:
    """steps.csv; LoRA's gradient norm falls as r^-1/2, rsLoRA's does not depend on r."""
    rows = []
    for method in LAWS:
        for r in RANKS:
            for n in range(1, max(STEPS) + 1):
                g = (1.0 + 1.0 / n) * (r**-0.5 if method == "lora" else 1.0)
                rows.append(dict(model=MODEL, dataset=DATASET, method=method, rank=r, lr=5e-4, seed=0, step=n,
                                 updated=1, loss=3.0 - 0.1 * math.log(n), grad_norm=g, grad_norm_global=4 * g,
                                 tokens=140, supervised_tokens=30, seconds=1.2, tokens_per_s=115.0, alpha=16,
                                 max_steps=max(STEPS), batch_size=2, max_length=128, trainable_params=r * PER_RANK))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def laws_run(tmp_path_factory) -> dict:
    """What `repro laws fit` and `repro laws rank-stability` write, then the three report commands."""
    from repro.laws.fits import run_fits
    from repro.laws.gradnorm import gradient_norm_by_rank, gradient_norm_spread
    from repro.laws.schemas import load_fits

    root = tmp_path_factory.mktemp("laws")
    runs, steps = synthetic_runs(), synthetic_steps()
    runs.to_csv(root / "runs.csv", index=False)
    steps.to_csv(root / "steps.csv", index=False)
    laws = root / "laws"
    run_fits(root / "runs.csv", laws, ["joint"], ["loss_forget", "loss_ft"], holdout_last=1, resamples=4, seed=0,
             n_starts=8)
    spread = gradient_norm_spread(gradient_norm_by_rank(steps))
    spread.to_csv(laws / "gradnorm_spread.csv", index=False)
    run_cli("laws", "rank-stability", "--configfile", REPO / "presets/test.yaml",
            "--out", root / "rank_stability.csv", "--slopes-out", root / "rank_stability_slopes.csv")
    figures, tables = root / "figures", root / "tables"
    run_cli("laws", "figures", "--runs", root / "runs.csv", "--steps", root / "steps.csv", "--laws-dir", laws,
            "--rank-stability", root / "rank_stability.csv", "--out", figures)
    run_cli("laws", "tables", "--laws-dir", laws, "--out", tables)
    run_cli("laws", "numbers", "--runs", root / "runs.csv", "--laws-dir", laws,
            "--rank-stability-slopes", root / "rank_stability_slopes.csv", "--out", root / "numbers.tex")
    fits = load_fits(laws / "fits")
    return {"root": root, "laws": laws, "runs": runs, "steps": steps, "fits": fits, "figures": figures,
            "tables": tables, "fits_csv": pd.read_csv(laws / "fits.csv"),
            "numbers": read_macros(root / "numbers.tex")}


def test_laws_fixture_fits_succeed(laws_run):
    # The checks below are about rendering; they need every fit of the synthetic sweep to have worked.
    assert {(f["method"], f["target"], f["family"], f["status"]) for f in laws_run["fits"]} == {
        (m, t, fam, "ok") for m in LAWS for t, fam in (("loss_forget", "linear"), ("loss_forget", "joint"),
                                                       ("loss_ft", "joint"))}


def test_laws_figures_every_file_written(laws_run):
    names = ["forgetting_vs_finetune", "losses_vs_steps", "rslora_learning_curves", "rslora_grad_norms",
             "task_scores_vs_forgetting", "refusal_vs_steps"]
    bases = [f"{n}_{MODEL}_{DATASET}" for n in names] + ["rank_stability_adam", "rank_stability_sgd"]
    figures = laws_run["figures"]
    for base in bases:
        assert_figure_files(figures / base)
    written = {p.name for p in figures.iterdir() if p.is_file()}
    assert written == {f"{b}.{ext}" for b in bases for ext in ("pdf", "png")}


def test_curves_csv_is_the_fitted_family(laws_run):
    curves = pd.read_csv(laws_run["laws"] / "curves.csv")
    runs = laws_run["runs"]
    checked = 0
    for f in laws_run["fits"]:
        if f["family"] != "joint":
            continue
        p = f["params"]
        for rank in RANKS:
            c = curves[(curves["method"] == f["method"]) & (curves["target"] == f["target"])
                       & (curves["family"] == "joint") & (curves["rank"] == rank)]
            trained = runs[(runs["method"] == f["method"]) & (runs["rank"] == rank) & (runs["step"] > 0)]
            assert set(c["trainable_params"]) == {rank * PER_RANK}
            assert c["N"].min() == pytest.approx(trained["step"].min()) and c["N"].max() == pytest.approx(64)
            for _, row in c.iloc[[0, len(c) // 3, -1]].iterrows():
                direct = p["E"] + p["A"] * (row["trainable_params"] / f["p_ref"]) ** p["alpha"] \
                    * (row["N"] / f["n_ref"]) ** p["beta"]
                assert row["value"] == pytest.approx(direct, rel=1e-10)
                checked += 1
        # The fit follows the synthetic law it was fitted to (the curve is the law, not a line through data).
        if f["target"] == "loss_forget":
            A, alpha, beta = LAWS[f["method"]]
            assert p["alpha"] == pytest.approx(alpha, abs=0.05) and p["beta"] == pytest.approx(beta, abs=0.05)
    assert checked == 2 * 2 * len(RANKS) * 3


def test_losses_figure_draws_the_tabulated_curves(laws_run, monkeypatch, tmp_path):
    from repro.laws import figures

    drawn = []

    def capture(fig, out_base, dpi=None):
        for ax in fig.axes:
            drawn.extend(tuple(np.round(line.get_ydata(), 12)) for line in ax.get_lines()
                         if line.get_marker() in ("None", None, "") and line.get_linestyle() == "-")
        return style.save(fig, out_base, dpi)

    monkeypatch.setattr(figures, "save", capture)
    curves = pd.read_csv(laws_run["laws"] / "curves.csv")
    figures.losses_vs_steps(laws_run["runs"], laws_run["fits"], curves, tmp_path)
    expected = [tuple(np.round(g.sort_values("N")["value"].to_numpy(), 12))
                for _, g in curves.groupby(["method", "target", "rank"])]
    assert sorted(drawn) == sorted(expected)


def test_linear_law_table_carries_the_clustered_slope(laws_run):
    head, rows = tex_table(laws_run["tables"] / "linear_law.tex")
    fits = laws_run["fits_csv"]
    assert [r[head.index("method")] for r in rows] == ["lora", "rslora"]
    for row in rows:
        cell = dict(zip(head, row))
        b = fits[(fits["method"] == cell["method"]) & (fits["family"] == "linear") & (fits["param"] == "b")].iloc[0]
        assert cell["dataset"] == r"stdlib\_instruct"
        assert cell["$b$ (run-clustered)"] == f"{b['value']:.3g} [{b['ci_low']:.3g}, {b['ci_high']:.3g}]"
        assert cell["$b$ naive CI"] == f"[{b['ci_naive_low']:.3g}, {b['ci_naive_high']:.3g}]"
        # The clustered interval is the run-level one, not the naive OLS one printed beside it.
        assert cell["$b$ (run-clustered)"].split(" ", 1)[1] != cell["$b$ naive CI"]
        assert b["ci_low"] < 2.0 < b["ci_high"] or abs(b["value"] - 2.0) < 0.05
        assert cell["runs"] == str(int(b["n_clusters"])) == str(len(RANKS) + 1)
        assert cell["claim"] == b["claim_b_positive"]


def test_laws_other_tables(laws_run):
    tables = laws_run["tables"]
    head, rows = tex_table(tables / "power_laws.tex")
    assert len(rows) == 4 and all(r[head.index("family")] == r"joint $\star$" for r in rows)
    fits = laws_run["fits_csv"]
    for row in rows:
        cell = dict(zip(head, row))
        target = {"$L_f$": "loss_forget", "$L_{ft}$": "loss_ft"}[cell["target"]]
        a = fits[(fits["method"] == cell["method"]) & (fits["target"] == target) & (fits["family"] == "joint")
                 & (fits["param"] == "alpha")].iloc[0]
        assert cell[r"$\alpha$"].startswith(f"{a['value']:.3g} [")
    head, rows = tex_table(tables / "gradient_norms.tex")
    ratio = {r[head.index("method")]: r[head.index("max/min mean grad norm")] for r in rows}
    # The mean over steps is (1 + mean 1/n) r^-1/2 for LoRA: max/min over ranks 1..8 is sqrt(8).
    assert ratio == {"lora": f"{math.sqrt(8):.3g}", "rslora": "1"}
    head, rows = tex_table(tables / "early_stopping.tex")
    assert {r[0] for r in rows} == {"lora", "rslora"} and head[2:] == [f"$L_f$, r={r}" for r in RANKS]


def test_laws_numbers_match_the_fits_and_cover_the_paper(laws_run):
    m, fits, runs = laws_run["numbers"], laws_run["fits_csv"], laws_run["runs"]
    for method in LAWS:
        stem = macro_name("Lin", method)
        lin = fits[(fits["method"] == method) & (fits["family"] == "linear")].set_index("param")
        assert shows(m[stem + "Slope"], lin.loc["b", "value"])
        assert shows(m[stem + "SlopeLow"], lin.loc["b", "ci_low"]) and shows(m[stem + "SlopeHigh"], lin.loc["b", "ci_high"])
        assert shows(m[stem + "SlopeNaiveLow"], lin.loc["b", "ci_naive_low"])
        assert shows(m[stem + "Intercept"], lin.loc["a", "value"])
        assert shows(m[stem + "Pvalue"], lin.loc["b", "p_value_b_positive"], 2)
        assert m[stem + "Runs"] == str(len(RANKS) + 1) and m[stem + "Claim"] == lin.loc["b", "claim_b_positive"]
        for target, word in (("loss_forget", "Forget"), ("loss_ft", "Ft")):
            pw = fits[(fits["method"] == method) & (fits["target"] == target) & (fits["family"] == "joint")]
            pw = pw.set_index("param")
            stem = macro_name("Pow", word, method)
            assert m[stem + "Family"] == "joint"
            for p in ("alpha", "beta", "E"):
                assert shows(m[stem + macro_name(p)], pw.loc[p, "value"])
                assert shows(m[stem + macro_name(p) + "Low"], pw.loc[p, "ci_low"])
    assert m["ModelName"] == r"smollm2\_tiny" and m["RankList"] == "1, 2, 4, 8"
    assert m["NumRuns"] == str(2 * len(RANKS)) and m["MaxSteps"] == "64"
    assert m["NumCheckpointRows"] == str(len(runs)) and m["MaxTrainableParams"] == str(8 * PER_RANK)
    assert shows(m["GradNormRatioLora"], math.sqrt(8)) and shows(m["GradNormRatioRslora"], 1.0)
    tuned = runs[runs["step"].isin(EVALUATED - {0})]
    worst = tuned.loc[tuned["loss_forget"].idxmax()]
    assert (m["EvalForgotMethod"], m["EvalForgotRank"], m["EvalForgotStep"]) == (
        worst["method"], str(worst["rank"]), str(worst["step"]))
    assert shows(m["EvalRefusalForgot"], worst["refusal_rate"]) and shows(m["EvalRefusalBase"], 0.9)
    slopes = pd.read_csv(laws_run["root"] / "rank_stability_slopes.csv")
    last = slopes[(slopes["step"] == slopes["step"].max())].iloc[0]
    stem = macro_name("RankStab", last["scaling"], last["measure"], last["optimizer"])
    assert m[stem + "Slope"] == f"{last['slope']:.2f}".replace("-0.00", "0.00")
    # Every number the forgetting and rsLoRA sections quote from `repro laws numbers` is defined.
    used = set()
    for section in ("forgetting", "rslora"):
        used |= set(re.findall(r"\\(?:val|ifval)\{([A-Za-z]+)\}", (REPO / f"paper/sections/{section}.tex").read_text()))
    ours = {u for u in used if not u.startswith(("Cfg", "Prov", "Comp", "Teb"))}
    assert len(ours) >= 40 and {"LinLoraSlope", "PowForgetLoraAlpha", "GradNormRatioRslora"} <= ours
    assert sorted(ours - set(m)) == []
