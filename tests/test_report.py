"""The rendering modules: the ground floor (style, LaTeX, number macros) and each study's figures, tables
and numbers (laws, TEB, compression), run through their commands on small inputs.

Every check compares an output with what it is made from (fits, CSVs, manifests, brute-force counts),
so a figure that draws something else, a table that drops a row or a macro with a stale value fails.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from repro.cli import main
from repro.report import style
from repro.report.latex import tex_escape, to_latex
from repro.report.numbers import Macros, macro_name, number

REPO = Path(__file__).resolve().parents[1]
TEB_FIXTURE = Path(__file__).parent / "data" / "teb_report"
PDF_MAGIC, PNG_MAGIC = b"%PDF-", b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ helpers


def assert_figure_files(base: Path) -> None:
    """``base``.pdf and .png exist and are what their suffix says (not an empty or half-written file)."""
    pdf, png = base.parent / (base.name + ".pdf"), base.parent / (base.name + ".png")
    assert pdf.read_bytes().startswith(PDF_MAGIC) and pdf.read_bytes().rstrip().endswith(b"%%EOF"), pdf
    assert png.read_bytes().startswith(PNG_MAGIC) and png.read_bytes().endswith(b"IEND\xaeB`\x82"), png


def no_temp_files(folder: Path) -> bool:
    return not [p for p in Path(folder).rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def read_macros(path: Path) -> dict[str, str]:
    """``\\newcommand{\\Name}{value}`` lines of a numbers file, in order; every other line is a comment."""
    lines = Path(path).read_text().splitlines()
    out = {}
    for line in lines:
        if line.startswith("%"):
            continue
        m = re.fullmatch(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", line)
        assert m, f"{path}: not a macro definition: {line!r}"
        assert m.group(1) not in out
        out[m.group(1)] = m.group(2)
    return out


def shows(text: str, value, digits: int = 3) -> bool:
    """A macro shows ``value`` to ``digits`` significant digits (a neighbouring number prints otherwise)."""
    return text == number(float(value), digits)


def tex_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of a booktabs table written by ``to_latex`` (one row per line)."""
    text = Path(path).read_text()
    assert text.count("\\toprule") == text.count("\\midrule") == text.count("\\bottomrule") == 1, path
    head = text.split("\\toprule")[1].split("\\midrule")[0].strip()
    body = text.split("\\midrule")[1].split("\\bottomrule")[0].strip()

    def cells(line):
        return [c.strip() for c in line.strip().removesuffix("\\\\").split(" & ")]

    return cells(head), [cells(line) for line in body.splitlines() if line.strip()]


def run_cli(*argv: str) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, argv


# ------------------------------------------------------------------------------------ ground floor

SPECIALS = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
            "{": r"\{", "}": r"\}", "^": r"\^{}", "~": r"\~{}", "|": r"\textbar{}"}


@pytest.mark.parametrize("char", sorted(SPECIALS))
def test_tex_escape_escapes_each_special_character(char):
    assert tex_escape(f"a{char}b{char}") == f"a{SPECIALS[char]}b{SPECIALS[char]}"


def test_tex_escape_leaves_everything_else_alone():
    plain = "".join(chr(c) for c in range(32, 127) if chr(c) not in SPECIALS) + "é–Ω\n\t"
    assert tex_escape(plain) == plain
    # The braces of \textbackslash{} are output, not input: they must not be escaped again.
    assert tex_escape("\\{x}") == r"\textbackslash{}\{x\}"
    assert tex_escape(3.5) == "3.5"


def test_to_latex_escape_true_escapes_cells_headers_and_caption(tmp_path):
    df = pd.DataFrame({"#runs": ["a_b", "50%"], "name": ["x&y", "{z}"]})
    out = to_latex(df, tmp_path / "t.tex", "M(n, d) & #classes_total", "tab:test", escape=True, position="t")
    text = out.read_text()
    head, rows = tex_table(out)
    assert head == [r"\#runs", "name"]
    assert rows == [[r"a\_b", r"x\&y"], [r"50\%", r"\{z\}"]]
    assert r"\caption{M(n, d) \& \#classes\_total}" in text and r"\label{tab:test}" in text
    assert text.startswith("\\begin{table}[t]") and "\\centering" in text


def test_to_latex_escape_false_passes_latex_through(tmp_path):
    df = pd.DataFrame({"$R^2$": ["0.99"], r"$\alpha$": [r"0.3 [0.2, 0.4]"], "x": ["$L_{ft}$"]})
    out = to_latex(df, tmp_path / "t.tex", r"Fits of $L_f$ (95\% intervals).", "tab:fits")
    head, rows = tex_table(out)
    assert head == ["$R^2$", r"$\alpha$", "x"] and rows == [["0.99", "0.3 [0.2, 0.4]", "$L_{ft}$"]]
    assert r"\caption{Fits of $L_f$ (95\% intervals).}" in out.read_text()


def test_outputs_replace_the_path_atomically(tmp_path):
    df = pd.DataFrame({"a": [1]})
    tex = tmp_path / "t.tex"
    tex.write_text("old\n")
    inode = tex.stat().st_ino
    to_latex(df, tex, "c", "tab:c")
    # A new file renamed over the old one (a reader holding the old file never sees it truncated).
    assert tex.stat().st_ino != inode and "\\toprule" in tex.read_text()
    numbers = tmp_path / "numbers.tex"
    numbers.write_text("old\n")
    m = Macros("repro test numbers")
    m.add("Alpha", 1.5)
    m.write(numbers)
    assert read_macros(numbers) == {"Alpha": "1.5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numbers.tex", "t.tex"]


def test_save_writes_pdf_and_png_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = style.save(fig, tmp_path / "sub" / "fig")
    assert [p.name for p in paths] == ["fig.pdf", "fig.png"]
    assert_figure_files(tmp_path / "sub" / "fig")
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["fig.pdf", "fig.png"]


def test_save_that_fails_leaves_the_old_files_and_no_temporary(tmp_path, monkeypatch):
    base = tmp_path / "fig"
    fig, ax = plt.subplots()
    style.save(fig, base)
    before = (base.parent / "fig.pdf").read_bytes()
    fig, ax = plt.subplots()

    def broken(fh, **kwargs):
        fh.write(b"%PDF-half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        style.save(fig, base)
    assert (base.parent / "fig.pdf").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]
    plt.close(fig)


def test_ordered_colours_okabe_ito_up_to_eight_then_a_colormap():
    few = style.ordered_colours([16, 1, 4, 4, 2])
    assert list(few) == [1, 2, 4, 16] and list(few.values()) == style.OKABE_ITO[:4]
    eight = style.ordered_colours(range(8))
    assert list(eight.values()) == style.OKABE_ITO and len(set(style.OKABE_ITO)) == 8
    many = style.ordered_colours([2**i for i in range(12)])
    assert list(many) == [2**i for i in range(12)]
    rgba = [tuple(c) for c in many.values()]
    assert len(set(rgba)) == 12 and all(len(c) == 4 for c in rgba)
    cmap = plt.get_cmap("cividis")
    assert rgba[0] == tuple(cmap(0.0)) and rgba[-1] == tuple(cmap(1.0))
    # Ordered: the colormap's lightness grows with the level.
    lightness = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b, _ in rgba]
    assert lightness == sorted(lightness)


def test_macros_refuse_duplicates_and_name_their_generator(tmp_path):
    m = Macros("repro laws numbers")
    m.add("NumRuns", 12)
    m.add("Slope", 0.123456)
    m.add("Pvalue", 0.0123456, 2)
    m.add("Claim", "supported")
    with pytest.raises(ValueError, match=r"\\NumRuns defined twice"):
        m.add("NumRuns", 13)
    text = m.render()
    assert text.splitlines()[0] == "% Generated by `repro laws numbers`; do not edit by hand."
    assert read_macros(m.write(tmp_path / "n.tex")) == {"NumRuns": "12", "Slope": "0.123", "Pvalue": "0.012",
                                                        "Claim": "supported"}
    assert number(float("nan")) == "n/a" and number(None) == "n/a" and number(2.0) == "2"


def test_macro_name_gives_letters_only():
    assert macro_name("Teb", "Coupling", "0p3") == "TebCouplingZeroPThree"
    assert macro_name("Lin", "stdlib_instruct", "rslora") == "LinStdlibInstructRslora"
    assert macro_name("CompNamed", "kw-maximal", "labeled-proper") == "CompNamedKwMaximalLabeledProper"
    for parts in (("CompCount", "5", "2"), ("RankStab", "lora", "output_moment", "adam"), ("x", "a1b2-c_3")):
        assert re.fullmatch(r"[A-Za-z]+", macro_name(*parts)), parts
    # Distinct numbers give distinct names where the studies use them (digits become words).
    shapes = [macro_name("CompCount", str(n), str(d)) for n in range(7) for d in range(n + 1)]
    couplings = [macro_name("Teb", "Coupling", f"{c:g}".replace(".", "p")) for c in (0, 0.1, 0.01, 1, 10, 1.5)]
    assert len(set(shapes)) == len(shapes) and len(set(couplings)) == len(couplings)


# -------------------------------------------------------------------------------------------- laws

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
    fits = [json.loads(p.read_text()) for p in sorted((laws / "fits").glob("*.json"))]
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
    from repro.laws import report

    drawn = []

    def capture(fig, out_base, dpi=None):
        for ax in fig.axes:
            drawn.extend(tuple(np.round(line.get_ydata(), 12)) for line in ax.get_lines()
                         if line.get_marker() in ("None", None, "") and line.get_linestyle() == "-")
        return style.save(fig, out_base, dpi)

    monkeypatch.setattr(report, "save", capture)
    curves = pd.read_csv(laws_run["laws"] / "curves.csv")
    report.losses_vs_steps(laws_run["runs"], laws_run["fits"], curves, tmp_path)
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


# --------------------------------------------------------------------------------------------- TEB


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
    from repro.teb.report import TASK_LABEL, VARIANT_LABEL

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


# ------------------------------------------------------------------------------------- compression


@pytest.fixture(scope="module")
def compression_run(tmp_path_factory) -> Path:
    """The compression rules' commands for n <= 3 (presets/test.yaml; its compactness check), in-process."""
    root = tmp_path_factory.mktemp("compression")
    config = REPO / "presets/test.yaml"
    shapes = [(n, d) for n in range(1, 4) for d in range(n + 1)]
    records = []
    for n, d in shapes:
        enum = root / f"enumerate/n{n}_d{d}.json"
        run_cli("compression", "enumerate", "--configfile", config, "--n", n, "--d", d, "--out", enum, "--no-progress")
        for kind in ("labeled", "unlabeled"):
            stem = f"schemes/n{n}_d{d}_{kind}"
            run_cli("compression", "schemes", "--configfile", config, "--enumeration", enum, "--kind", kind,
                    "--out", root / f"{stem}.jsonl.gz", "--summary", root / f"{stem}.json", "--no-progress")
            records.append(stem)
    for name in ("kw-maximal", "cube2"):
        run_cli("compression", "named", "--configfile", config, "--name", name, "--out", root / f"named/{name}.json",
                "--schemes-out", root / f"named/{name}.jsonl.gz")
        records.append(f"named/{name}")
    run_cli("compression", "compactness", "--configfile", config, "--out", root / "compactness/compactness.json",
            "--schemes-out", root / "compactness/compactness.jsonl.gz", "--no-progress")
    records.append("compactness/compactness")
    # One verify report for every record file (the rule writes one per file; the tables merge them by name).
    run_cli("compression", "verify", "--out", root / "verify/all.json", *[root / f"{s}.jsonl.gz" for s in records],
            "--no-progress")
    run_cli("compression", "tables", "--out-dir", root / "tables",
            "--enumerate", *[root / f"enumerate/n{n}_d{d}.json" for n, d in shapes],
            "--schemes", *[root / f"{s}.json" for s in records if s.startswith("schemes/")],
            "--verify", root / "verify/all.json",
            "--named", root / "named/kw-maximal.json", root / "named/cube2.json",
            "--compactness", root / "compactness/compactness.json")
    run_cli("compression", "numbers", "--summary", root / "tables/summary.json", "--out", root / "numbers.tex")
    return root


def test_compression_tables_written_and_counts_match_brute_force(compression_run):
    from repro.compression.enumeration import brute_force_maximum_classes

    tables = compression_run / "tables"
    for name in ("counts", "counts_matrix", "schemes", "named", "existence", "compactness", "timings"):
        assert (tables / f"{name}.csv").stat().st_size > 0
        tex_table(tables / f"{name}.tex")
    counts = pd.read_csv(tables / "counts.csv")
    brute = {n: brute_force_maximum_classes(n) for n in range(1, 4)}
    assert {(r["n"], r["d"]): r["maximum classes"] for _, r in counts.iterrows()} == {
        (n, d): len(brute[n][d]) for n in range(1, 4) for d in range(n + 1)}
    assert set(counts["brute force"]) == {"equal"}
    head, rows = tex_table(tables / "counts.tex")
    col = head.index("maximum classes")
    assert [int(r[col]) for r in rows] == list(counts["maximum classes"])
    schemes = pd.read_csv(tables / "schemes.csv")
    for v in schemes["schemes verified"]:
        ok, total = map(int, v.split("/"))
        assert ok == total > 0


def test_compression_latex_cells_are_escaped(compression_run):
    tables = compression_run / "tables"
    head, _ = tex_table(tables / "counts.tex")
    assert r"\textbar{}C\textbar{} = Phi\_d(n)" in head and r"dual \#M(n,n-d-1)" in head
    assert r"\caption{Number of maximum classes \#M(n, d)" in (tables / "counts_matrix.tex").read_text()
    head, _ = tex_table(tables / "compactness.tex")
    assert r"greedy dead ends at \textbar{}X\_j\textbar{}" in head and r"X\_1 < ... < X\_n" in (tables / "compactness.tex").read_text()
    for tex in tables.glob("*.tex"):
        body = "\n".join(line for line in tex.read_text().splitlines() if not line.startswith("\\label"))
        assert not re.search(r"(?<!\\)[#_%&]", body.replace(" & ", " ")), tex


def test_compression_numbers(compression_run):
    from repro.compression.enumeration import brute_force_maximum_classes

    m = read_macros(compression_run / "numbers.tex")
    summary = json.loads((compression_run / "tables/summary.json").read_text())
    assert m["CompNMax"] == "3" and m["CompShapes"] == str(sum(n + 1 for n in range(1, 4)))
    for n in range(1, 4):
        brute = brute_force_maximum_classes(n)
        for d in range(n + 1):
            assert m[macro_name("CompCount", str(n), str(d))] == str(len(brute[d]))
    largest = max(v["total"] for v in summary["counts"].values())
    assert m["CompLargestCount"] == str(largest)
    assert m["CompSchemesVerified"] == str(summary["schemes_verified"]) != "0"
    assert m["CompNamedClasses"] == "2" and macro_name("CompNamed", "kw-maximal", "labeled-proper") in m
