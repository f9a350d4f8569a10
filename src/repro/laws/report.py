"""Figures of the forgetting and rsLoRA studies, from the tidy tables and the fits only.

Every figure is written as vector PDF and PNG in one style (repro.mplstyle, Okabe-Ito colours).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = Path(__file__).with_name("repro.mplstyle")
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442", "#000000"]
METHOD_LABEL = {"lora": r"LoRA ($\gamma_r=\alpha/r$)", "rslora": r"rsLoRA ($\gamma_r=\alpha/\sqrt{r}$)"}
TARGET_LABEL = {"loss_forget": r"forgetting $L_f$ (nats/token)", "loss_ft": r"fine-tuning loss $L_{ft}$ (nats/token)"}


def rank_colours(ranks) -> dict:
    ranks = sorted(set(int(r) for r in ranks))
    if len(ranks) <= len(OKABE_ITO):
        return {r: OKABE_ITO[i] for i, r in enumerate(ranks)}
    cmap = plt.get_cmap("cividis")  # perceptually uniform and colour-blind safe
    return {r: cmap(i / max(len(ranks) - 1, 1)) for i, r in enumerate(ranks)}


def save(fig, out_base: Path) -> list[Path]:
    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.with_suffix(".pdf"), out_base.with_suffix(".png")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def _load_fits(fits_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(fits_dir).glob("*.json"))]


def _groups(runs: pd.DataFrame):
    return list(runs.groupby(["model", "dataset"]))


def forgetting_vs_finetune(runs: pd.DataFrame, fits: list[dict], out_dir: Path) -> list[Path]:
    """Every checkpoint's (L_ft, L_f), coloured by rank, with the OLS line and its 95 % band."""
    paths = []
    for (model, dataset), grp in _groups(runs):
        methods = sorted(grp["method"].unique())
        colours = rank_colours(grp["rank"])
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


def _power_curve(fit: dict, P: float, N: np.ndarray) -> np.ndarray:
    from repro.laws.fits import FAMILIES

    family = FAMILIES[fit["family"]]
    theta = np.array([fit["params"][p] for p in family.params])
    return family.func(theta, P / fit["p_ref"], N / fit["n_ref"])


def losses_vs_steps(runs: pd.DataFrame, fits: list[dict], out_dir: Path) -> list[Path]:
    """L_f and L_ft against N (log axis), one colour per rank, with the chosen power law."""
    paths = []
    for (model, dataset), grp in _groups(runs):
        methods = sorted(grp["method"].unique())
        colours = rank_colours(grp["rank"])
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
                            N = np.geomspace(r["step"].min(), r["step"].max(), 100)
                            ax.plot(N, _power_curve(chosen, float(r["trainable_params"].iloc[0]), N),
                                    color=colours[int(rank)], lw=1)
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
        colours = rank_colours(grp["rank"])
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
        colours = rank_colours(grp["rank"])
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
        colours = rank_colours(grp["rank"])
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


def make_all(runs_csv: Path, steps_csv: Path, fits_dir: Path, out_dir: Path) -> list[Path]:
    runs, steps = pd.read_csv(runs_csv), pd.read_csv(steps_csv)
    fits = _load_fits(fits_dir)
    out = []
    out += forgetting_vs_finetune(runs, fits, out_dir)
    out += losses_vs_steps(runs, fits, out_dir)
    out += rslora_curves(steps, runs, out_dir)
    # Written only when runs.csv carries evaluation columns (evals.enabled), as the figures rule expects.
    out += task_scores_vs_forgetting(runs, out_dir)
    out += refusal_vs_steps(runs, out_dir)
    return out
