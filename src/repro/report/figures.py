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


def make_all(runs_csv: Path, steps_csv: Path, fits_dir: Path, out_dir: Path) -> list[Path]:
    runs, steps = pd.read_csv(runs_csv), pd.read_csv(steps_csv)
    fits = _load_fits(fits_dir)
    out = []
    out += forgetting_vs_finetune(runs, fits, out_dir)
    out += losses_vs_steps(runs, fits, out_dir)
    out += rslora_curves(steps, runs, out_dir)
    return out
