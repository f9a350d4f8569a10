"""Figures, LaTeX tables and number macros of the forgetting-law and rsLoRA studies.

Everything here reads the tidy tables (`runs.csv`, `steps.csv`) and what `repro laws fit` wrote (fit
JSONs, `curves.csv`, gradient-norm and early-stopping tables); no fit is re-evaluated. Style, colours,
LaTeX and macros come from the ground floor (`repro.report`).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, on machines with or without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import read_table  # noqa: E402
from ..lm.aggregate import RUNS_TABLE, STEPS_TABLE  # noqa: E402
from ..report.latex import fmt, tex_escape, to_latex, with_ci  # noqa: E402
from ..report.numbers import Macros, macro_name  # noqa: E402
from ..report.style import OKABE_ITO, STYLE, ordered_colours, save  # noqa: E402
from . import schemas  # noqa: E402
from .scalings import PRIMARY_OPTIMIZER, SCALING_LABEL, SCALING_RULES  # noqa: E402
from .schemas import load_fits  # noqa: E402

METHOD_LABEL = {"lora": r"LoRA ($\gamma_r=\alpha/r$)", "rslora": r"rsLoRA ($\gamma_r=\alpha/\sqrt{r}$)"}
TARGET_LABEL = {"loss_forget": r"forgetting $L_f$ (nats/token)", "loss_ft": r"fine-tuning loss $L_{ft}$ (nats/token)"}


SCALING_COLOUR = {"lora": OKABE_ITO[0], "rslora": OKABE_ITO[1], "constant": OKABE_ITO[3]}




# ------------------------------------------------------------------------------------------ figures


def _groups(runs: pd.DataFrame):
    return list(runs.groupby(["model", "dataset"]))


def forgetting_vs_finetune(runs: pd.DataFrame, fits: list[dict], out_dir: Path) -> list[Path]:
    """Every checkpoint's (L_ft, L_f), coloured by rank, with the OLS line and its 95 % band."""
    paths = []
    for (model, dataset), grp in _groups(runs):
        methods = sorted(grp["method"].unique())
        colours = ordered_colours(grp["rank"])
        with plt.style.context(STYLE):
            fig, axes = plt.subplots(1, len(methods), figsize=(3.3 * len(methods), 3.0), sharey=True, squeeze=False)
            for ax, method in zip(axes[0], methods):
                sub = grp[grp["method"] == method]
                for rank, r in sub.groupby("rank"):
                    ax.scatter(r["loss_ft"], r["loss_forget"], color=colours[int(rank)], s=14, label=f"r={rank}", zorder=3)
                lin = next((f for f in fits if f.get("family") == "linear" and f.get("method") == method
                            and f.get("dataset") == dataset and f.get("model") == model), None)
                if lin and lin.get("status") == "ok":
                    band = lin["band"]
                    ax.plot(band["x"], band["mean"], color="black", lw=1,
                            label=f"OLS: b={lin['params']['b']:.3g}, $R^2$={lin['r2']:.2f}")
                    ax.fill_between(band["x"], band["low"], band["high"], color="black", alpha=0.15, lw=0)
                elif lin:
                    ax.text(0.02, 0.02, f"linear fit: {lin['status']}", transform=ax.transAxes, fontsize=7)
                ax.set_title(METHOD_LABEL.get(method, method))
                ax.set_xlabel(TARGET_LABEL["loss_ft"])
            axes[0][0].set_ylabel(TARGET_LABEL["loss_forget"])
            axes[0][-1].legend(loc="best")
            fig.suptitle(f"Forgetting vs fine-tuning loss — {model}, {dataset}", fontsize=9)
            paths += save(fig, Path(out_dir) / f"forgetting_vs_finetune_{model}_{dataset}")
    return paths


def _curve(curves: pd.DataFrame, fit: dict, rank: int) -> pd.DataFrame:
    """The fitted curve of ``fit`` at ``rank``, as `repro laws fit` tabulated it (curves.csv)."""
    keys = {k: fit[k] for k in ("model", "dataset", "method", "target", "family")}
    mask = np.logical_and.reduce([curves[k].astype(str) == str(v) for k, v in keys.items()]) & (curves["rank"] == rank)
    return curves[mask].sort_values("N")


def losses_vs_steps(runs: pd.DataFrame, fits: list[dict], curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """L_f and L_ft against N (log axis), one colour per rank, with the chosen power law."""
    paths = []
    for (model, dataset), grp in _groups(runs):
        methods = sorted(grp["method"].unique())
        colours = ordered_colours(grp["rank"])
        with plt.style.context(STYLE):
            fig, axes = plt.subplots(2, len(methods), figsize=(3.3 * len(methods), 5.2), sharex=True, squeeze=False)
            for col, method in enumerate(methods):
                sub = grp[grp["method"] == method]
                for row, target in enumerate(("loss_forget", "loss_ft")):
                    ax = axes[row][col]
                    chosen = next((f for f in fits if f.get("chosen") and f.get("target") == target
                                   and f.get("method") == method and f.get("dataset") == dataset
                                   and f.get("model") == model), None)
                    base = sub[sub["step"] == 0][target]
                    if len(base):
                        ax.axhline(base.iloc[0], color="grey", ls=":", lw=1, label="step 0 (base)")
                    for rank, r in sub[sub["step"] > 0].groupby("rank"):
                        ax.plot(r["step"], r[target], "o", color=colours[int(rank)], label=f"r={rank}", ms=3.5)
                        if chosen:
                            curve = _curve(curves, chosen, int(rank))
                            ax.plot(curve["N"], curve["value"], color=colours[int(rank)], lw=1)
                    ax.set_xscale("log", base=2)
                    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                    if row == 1:
                        ax.set_xlabel("optimizer steps N")
                    if col == 0:
                        ax.set_ylabel(TARGET_LABEL[target])
                    title = METHOD_LABEL.get(method, method)
                    if chosen:
                        title += f"\n{chosen['family']}: {chosen['formula']}"
                    ax.set_title(title, fontsize=7.5)
            axes[0][-1].legend(loc="best")
            paths += save(fig, Path(out_dir) / f"losses_vs_steps_{model}_{dataset}")
    return paths


def _smooth(values: pd.Series, span: int = 8) -> pd.Series:
    return values.ewm(span=span, adjust=False).mean()


def rslora_curves(steps: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The rsLoRA paper's Fig. 2 (training loss vs steps per rank) and Fig. 3 (gradient norm)."""
    paths = []
    for (model, dataset), grp in steps.groupby(["model", "dataset"]):
        methods = [m for m in ("lora", "rslora") if m in set(grp["method"])]
        colours = ordered_colours(grp["rank"])
        for kind in ("loss", "grad_norm"):
            with plt.style.context(STYLE):
                fig, axes = plt.subplots(1, len(methods), figsize=(3.3 * len(methods), 3.0), sharey=True, squeeze=False)
                for ax, method in zip(axes[0], methods):
                    sub = grp[grp["method"] == method]
                    for rank, r in sub.groupby("rank"):
                        r = r.sort_values("step")
                        y = _smooth(r[kind]) if kind == "loss" else r[kind]
                        ax.plot(r["step"], y, color=colours[int(rank)], label=f"r={rank}")
                        if kind == "loss":
                            ck = runs[(runs["method"] == method) & (runs["rank"] == rank) & (runs["dataset"] == dataset)
                                      & (runs["model"] == model) & (runs["step"] > 0)]
                            ax.plot(ck["step"], ck["loss_ft"], "x", color=colours[int(rank)], ms=4)
                    ax.set_title(METHOD_LABEL.get(method, method))
                    ax.set_xlabel("optimizer steps N")
                    if kind == "grad_norm":
                        ax.set_yscale("log")
                if kind == "loss":
                    axes[0][0].set_ylabel("training loss, EMA (nats/token);\n× held-out $L_{ft}$")
                else:
                    axes[0][0].set_ylabel(r"mean adapter gradient norm $\|\nabla\|_2$")
                axes[0][-1].legend(loc="best")
                name = "rslora_learning_curves" if kind == "loss" else "rslora_grad_norms"
                paths += save(fig, Path(out_dir) / f"{name}_{model}_{dataset}")
    return paths


MARKERS = {"lora": "o", "rslora": "s"}


def task_metric_columns(runs: pd.DataFrame) -> list[str]:
    """Score columns written by `repro evaluate tasks` (task_<name>_<metric>), without stderr and counts."""
    return [c for c in runs.columns if c.startswith("task_") and not c.endswith(("_stderr", "_n"))
            and runs[c].notna().any()]


# Chance level of the shipped four-way multiple-choice tasks (DATA_CARDS.md), drawn as a dashed line.
CHANCE = {"task_repro_knowledge_acc": 0.25, "task_repro_arithmetic_acc": 0.25}


def _task_and_metric(col: str) -> tuple[str, str]:
    label = col.removeprefix("task_")
    for metric in ("bits_per_byte", "acc_norm", "acc", "word_perplexity", "byte_perplexity", "exact_match"):
        if label.endswith("_" + metric):
            return label[: -len(metric) - 1], metric.replace("_", " ")
    return label, "score"


def task_scores_vs_forgetting(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Each benchmark score (with its standard error) against forgetting L_f at the evaluated checkpoints.

    The base model (step 0) is the black star; a score that tracks L_f across ranks and methods means
    the forgetting metric on the corpus predicts the benchmark loss.
    """
    paths = []
    cols = task_metric_columns(runs)
    if not cols:
        return paths
    for (model, dataset), grp in _groups(runs):
        colours = ordered_colours(grp["rank"])
        ncol = min(len(cols), 3)
        nrow = -(-len(cols) // ncol)
        with plt.style.context(STYLE):
            fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
            for ax, col in zip(axes.flat, cols):
                sub = grp[grp[col].notna()]
                se = sub[col + "_stderr"] if col + "_stderr" in sub else None
                ft = sub[sub["step"] > 0]
                for (method, rank), r in ft.groupby(["method", "rank"]):
                    ax.errorbar(r["loss_forget"], r[col], yerr=None if se is None else se.loc[r.index],
                                fmt=MARKERS.get(method, "^"), color=colours[int(rank)], ms=4, lw=0.8, capsize=2,
                                label=f"{method} r={rank}")
                base = sub[sub["step"] == 0].drop_duplicates(col)
                if len(base):
                    ax.errorbar(base["loss_forget"].iloc[:1], base[col].iloc[:1],
                                yerr=None if se is None else se.loc[base.index[:1]],
                                fmt="*", color="black", ms=8, capsize=2, label="base (step 0)")
                if len(sub) >= 3 and sub["loss_forget"].nunique() > 1 and sub[col].nunique() > 1:
                    rho = np.corrcoef(sub["loss_forget"], sub[col])[0, 1]
                    ax.text(0.98, 0.02, f"Pearson r = {rho:.2f}", transform=ax.transAxes, ha="right", fontsize=7)
                if col in CHANCE:
                    ax.axhline(CHANCE[col], color="grey", ls="--", lw=0.8)
                task, metric = _task_and_metric(col)
                ax.set_title(task, fontsize=8)
                ax.set_ylabel(metric + (" (chance dashed)" if col in CHANCE else ""))
                ax.set_xlabel(TARGET_LABEL["loss_forget"])
            for ax in list(axes.flat)[len(cols):]:
                ax.set_visible(False)
            handles, labels = axes.flat[0].get_legend_handles_labels()
            # Below the panels (the bounding box is tight), clear of the panel titles.
            fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=6.5,
                       bbox_to_anchor=(0.5, -0.03))
            fig.suptitle(f"Benchmark scores vs forgetting — {model}, {dataset}", fontsize=9, y=1.04)
            paths += save(fig, Path(out_dir) / f"task_scores_vs_forgetting_{model}_{dataset}")
    return paths


def refusal_vs_steps(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Refusal rate on harmful requests against steps N, one colour per rank, base model as a band."""
    paths = []
    if "refusal_rate" not in runs or runs["refusal_rate"].isna().all():
        return paths
    for (model, dataset), grp in _groups(runs):
        grp = grp[grp["refusal_rate"].notna()]
        methods = sorted(grp["method"].unique())
        colours = ordered_colours(grp["rank"])
        with plt.style.context(STYLE):
            fig, axes = plt.subplots(1, len(methods), figsize=(3.3 * len(methods), 3.0), sharey=True, squeeze=False)
            for ax, method in zip(axes[0], methods):
                sub = grp[grp["method"] == method]
                base = sub[sub["step"] == 0]
                if len(base):
                    b, e = base["refusal_rate"].iloc[0], base["refusal_rate_stderr"].iloc[0]
                    ax.axhline(b, color="grey", ls=":", lw=1, label="step 0 (base)")
                    if np.isfinite(e):
                        ax.axhspan(b - e, b + e, color="grey", alpha=0.15, lw=0)
                for rank, r in sub[sub["step"] > 0].groupby("rank"):
                    r = r.sort_values("step")
                    ax.errorbar(r["step"], r["refusal_rate"], yerr=r["refusal_rate_stderr"], fmt="-o",
                                color=colours[int(rank)], ms=3.5, lw=1, capsize=2, label=f"r={rank}")
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                ax.set_ylim(-0.05, 1.05)
                ax.set_xlabel("optimizer steps N")
                ax.set_title(METHOD_LABEL.get(method, method))
            n = int(grp["refusal_n"].max()) if "refusal_n" in grp else None
            axes[0][0].set_ylabel("refusal rate on harmful requests" + (f" (n={n})" if n else ""))
            axes[0][-1].legend(loc="best")
            paths += save(fig, Path(out_dir) / f"refusal_vs_steps_{model}_{dataset}")
    return paths


def make_figures(runs_csv: Path, steps_csv: Path, fits_dir: Path, curves_csv: Path, out_dir: Path) -> list[Path]:
    runs, steps = read_table(runs_csv, RUNS_TABLE), read_table(steps_csv, STEPS_TABLE)
    fits = load_fits(fits_dir)
    curves = read_table(curves_csv, schemas.CURVES)
    out = []
    out += forgetting_vs_finetune(runs, fits, out_dir)
    out += losses_vs_steps(runs, fits, curves, out_dir)
    out += rslora_curves(steps, runs, out_dir)
    # Written only when runs.csv carries evaluation columns (evals.enabled), as the figures rule expects.
    out += task_scores_vs_forgetting(runs, out_dir)
    out += refusal_vs_steps(runs, out_dir)
    return out


def plot_rank_stability(
    df: pd.DataFrame,
    out_path_without_suffix: str | Path,
    step: int | None = None,
    show_smaller_steps: bool = True,
    show_meanfield: bool | None = None,
    show_expected: bool = True,
) -> list[Path]:
    """Three log-log panels against rank r: mean squared adapter output, mean squared input gradient and
    parameter gradient norm, for one optimizer (an :func:`aggregate` table, e.g. the moments CSV).

    One colour per scaling rule (Okabe-Ito). Solid lines with markers: the typical measure (seed mean, with a
    band of +-1 standard error) at ``step`` (default: the largest step in ``df``); faint solid lines: the
    smaller steps; dotted: the closed form (``*_expected``); dashed: the mean-field moment where positive
    (default: drawn for a contrast optimizer only, i.e. when ``optimizer_role`` is "contrast" or, without
    that column, for SGD). The title names the optimizer and its role. Writes ``<out>.pdf`` (vector) and
    ``<out>.png`` (dpi 200) and returns both paths. Uses the Agg canvas on a standalone Figure; no global
    matplotlib state is changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if "optimizer" in df.columns and df["optimizer"].nunique() > 1:
        raise ValueError("plot_rank_stability: df holds several optimizers; pass one")
    steps_present = sorted(int(s) for s in df["step"].unique() if s > 0)
    if not steps_present:
        raise ValueError("plot_rank_stability: no step > 0 in df")
    step = steps_present[-1] if step is None else int(step)
    optimizer = str(df["optimizer"].iloc[0]) if "optimizer" in df.columns else ""
    if "optimizer_role" in df.columns:
        role = str(df["optimizer_role"].iloc[0])
    else:
        role = "primary" if optimizer == PRIMARY_OPTIMIZER else "contrast"
    if show_meanfield is None:
        show_meanfield = role == "contrast"
    present = set(df["scaling"])
    scalings = [s for s in SCALING_RULES if s in present] + sorted(present - set(SCALING_RULES))
    colour = dict(SCALING_COLOUR)
    spare = [c for c in OKABE_ITO if c not in colour.values()]
    for s in scalings:
        colour.setdefault(s, spare.pop(0))

    fig = Figure(figsize=(7.6, 3.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = (
        ("output_moment", "mean sq. adapter output"),
        ("input_grad_moment", "mean sq. input gradient"),
        ("param_grad_norm", "param. gradient norm"),
    )
    for ax, (measure, ylabel) in zip(axes, panels):
        if measure not in df.columns:
            ax.set_visible(False)
            continue
        for rule in scalings:
            sub = df[df["scaling"] == rule]
            if show_smaller_steps:
                for n in steps_present:
                    if n == step:
                        continue
                    s = sub[(sub["step"] == n) & (sub[measure] > 0)].sort_values("rank")
                    ax.plot(s["rank"], s[measure], color=colour[rule], alpha=0.3, lw=0.8)
            s = sub[(sub["step"] == step) & (sub[measure] > 0)].sort_values("rank")
            ax.plot(s["rank"], s[measure], color=colour[rule], marker="o", ms=3, lw=1.4)
            se = s.get(measure + "_se")
            if se is not None and np.isfinite(se).any():
                lo = np.clip(s[measure] - se, s[measure] * 1e-3, None)
                ax.fill_between(s["rank"], lo, s[measure] + se, color=colour[rule], alpha=0.2, lw=0)
            ex = measure + "_expected"
            if show_expected and ex in s.columns:
                ax.plot(s["rank"], s[ex], color=colour[rule], ls=":", lw=1.2)
            mf = measure + "_meanfield"
            if show_meanfield and mf in sub.columns:
                m = sub[(sub["step"] == step) & np.isfinite(sub[mf]) & (sub[mf] > 0)].sort_values("rank")
                ax.plot(m["rank"], m[mf], color=colour[rule], ls="--", lw=1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rank r")
        ax.set_ylabel(ylabel)
    title = f"{optimizer.upper() if optimizer != 'adam' else 'Adam'} ({role}), step {step}"
    if "d_in" in df.columns:
        title += rf", $d_{{in}}={int(df['d_in'].iloc[0])}$"
    fig.suptitle(title, fontsize="medium")
    handles = [Line2D([], [], color=colour[s], lw=1.4, label=SCALING_LABEL.get(s, s)) for s in scalings]
    handles.append(Line2D([], [], color="0.3", lw=1.4, marker="o", ms=3, label=r"typical: $\mathrm{E}_A$ of one adapter"))
    if show_expected:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1.2, label="closed form"))
    if show_meanfield:
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2, label=r"mean-field: adapter averaged over $A$"))
    if show_smaller_steps and len(steps_present) > 1:
        handles.append(Line2D([], [], color="0.3", alpha=0.3, lw=0.8, label="smaller step counts"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small", frameon=False)

    return save(fig, Path(out_path_without_suffix), dpi=200)

# ------------------------------------------------------------------------------------------ tables


def linear_table(fits: list[dict]) -> pd.DataFrame:
    rows = []
    for f in fits:
        if f.get("family") != "linear":
            continue
        ok = f.get("status") == "ok"
        rows.append({
            "dataset": tex_escape(f["dataset"]),
            "method": f["method"],
            "$n$": f["n"],
            "runs": f.get("n_clusters", "--"),
            "$a$": with_ci(f["params"]["a"], f["ci95"]["a"]) if ok else "--",
            "$b$ (run-clustered)": with_ci(f["params"]["b"], f["ci95"]["b"]) if ok else "--",
            "$b$ naive CI": with_ci(None, f.get("ci95_naive", {}).get("b")) if ok else "--",
            "$b$ bootstrap CI": with_ci(None, f.get("ci95_bootstrap", {}).get("b")) if ok else "--",
            "$R^2$": fmt(f.get("r2")),
            "$p(b>0)$": fmt(f.get("p_value_b_positive"), 2),
            "claim": f.get("claim_b_positive", tex_escape(f["status"])),
        })
    return pd.DataFrame(rows)


def power_table(fits: list[dict]) -> pd.DataFrame:
    rows = []
    for f in fits:
        if f.get("family") in (None, "linear"):
            continue
        ok = f.get("status") == "ok"
        p, ci = f.get("params") or {}, f.get("ci95") or {}
        rows.append({
            "method": f["method"],
            "target": {"loss_forget": "$L_f$", "loss_ft": "$L_{ft}$"}.get(f["target"], tex_escape(f["target"])),
            "family": f["family"] + (" $\\star$" if f.get("chosen") else "")
            + ("" if not ok or f.get("converged") else " (not converged)")
            + (f" ({tex_escape(','.join(f['at_bound']))} at bound)" if ok and f.get("at_bound") else ""),
            "$\\alpha$": with_ci(p.get("alpha"), ci.get("alpha")) if ok else "--",
            "$\\beta$": with_ci(p.get("beta"), ci.get("beta")) if ok else "--",
            "$E$": with_ci(p.get("E"), ci.get("E")) if ok else "--",
            "AIC": fmt(f.get("aic"), 4) if ok else tex_escape(f["status"]),
            "$R^2$": fmt(f.get("r2")),
            "extrap. $N$": fmt(f.get("extrap_rmse_steps"), 2),
            "extrap. $P$": fmt(f.get("extrap_rmse_rank"), 2),
        })
    return pd.DataFrame(rows)


def gradnorm_table(spread: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "dataset": spread["dataset"].map(tex_escape),
        "method": spread["method"],
        "ranks": spread["ranks"],
        "max/min mean grad norm": spread["ratio_max_min"].map(fmt),
        "rank$_{\\min}$ / rank$_{\\max}$ norm": spread["ratio_lowest_to_highest_rank"].map(fmt),
    })


def early_stopping_table(matched: pd.DataFrame) -> pd.DataFrame:
    if matched.empty:
        return pd.DataFrame({"note": ["no L_ft level is reached by every rank"]})
    pivot = matched.pivot_table(index=["method", "loss_ft"], columns="rank", values="loss_forget").reset_index()
    pivot.columns = [f"$L_f$, r={c}" if isinstance(c, (int, float)) and c != "loss_ft" else c for c in pivot.columns]
    pivot = pivot.rename(columns={"loss_ft": "matched $L_{ft}$"})
    for c in pivot.columns[1:]:
        pivot[c] = pivot[c].map(lambda v: fmt(v, 4))
    return pivot


def make_tables(fits_dir: Path, gradnorm_csv: Path, early_csv: Path, out_dir: Path) -> list[Path]:
    fits = load_fits(fits_dir)
    out_dir = Path(out_dir)
    matched = read_table(early_csv, schemas.EARLY_STOPPING) if Path(early_csv).stat().st_size > 1 else pd.DataFrame()
    return [
        to_latex(linear_table(fits), out_dir / "linear_law.tex",
                 "Inverse linear law $L_f = a - b\\,L_{ft}$ (OLS; 95\\% intervals from run-clustered errors, "
                 "with the naive OLS and run-bootstrap intervals beside them; one-sided test of $b>0$ from the "
                 "clustered errors with $t(G-1)$, $G$ runs).",
                 "tab:linear-law"),
        to_latex(power_table(fits), out_dir / "power_laws.tex",
                 "Power-law fits of $L_f$ and $L_{ft}$ in $P$ and $N$ (Huber loss on log residuals from many "
                 "starts; bootstrap 95\\% intervals over runs, every resample refitted the same way; "
                 "$\\star$: lowest AIC; extrapolation RMSE on each run's held-out largest-$N$ checkpoint and "
                 "on the held-out largest $P$).",
                 "tab:power-laws"),
        to_latex(gradnorm_table(read_table(gradnorm_csv, schemas.GRADNORM_SPREAD)), out_dir / "gradient_norms.tex",
                 "Spread across ranks of the mean adapter gradient norm over training.", "tab:grad-norms"),
        to_latex(early_stopping_table(matched), out_dir / "early_stopping.tex",
                 "Forgetting of each rank at matched fine-tuning loss.", "tab:early-stopping"),
    ]

# ------------------------------------------------------------------------------------------ numbers


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
