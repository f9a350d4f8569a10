"""Figures of the forgetting-law and rsLoRA studies, each as a PDF (vector) and a PNG.

They read the tidy tables (`runs.csv`, `steps.csv`), what `repro laws fit` wrote (fit JSONs,
`curves.csv`) and the moments of `repro laws rank-stability`; no fit is re-evaluated. Style and colours
come from the ground floor (`repro.report.style`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, on machines with or without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import read_table  # noqa: E402
from ..lm.aggregate import RUNS_TABLE, STEPS_TABLE  # noqa: E402
from ..report.style import OKABE_ITO, STYLE, ordered_colours, save  # noqa: E402
from . import schemas  # noqa: E402
from .scalings import PRIMARY_OPTIMIZER, SCALING_LABEL, SCALING_RULES  # noqa: E402
from .schemas import load_fits  # noqa: E402

METHOD_LABEL = {"lora": r"LoRA ($\gamma_r=\alpha/r$)", "rslora": r"rsLoRA ($\gamma_r=\alpha/\sqrt{r}$)"}
TARGET_LABEL = {"loss_forget": r"forgetting $L_f$ (nats/token)", "loss_ft": r"fine-tuning loss $L_{ft}$ (nats/token)"}
SCALING_COLOUR = {"lora": OKABE_ITO[0], "rslora": OKABE_ITO[1], "constant": OKABE_ITO[3]}


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
