"""The TEB branch's figures (PDF and PNG), from the aggregate's tables only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..report.style import OKABE_ITO, STYLE, save  # noqa: E402
from .aggregate import at_default_beta, read_aggregate, read_te_sweep  # noqa: E402
from .runs import READS_SOURCE, STOCHASTIC, VARIANTS  # noqa: E402
from .tables import TASK_LABEL, VARIANT_LABEL  # noqa: E402


def fig_te_vs_exact(sweep: pd.DataFrame, out_dir: Path) -> list[Path]:
    styles = {"teb": ("o", OKABE_ITO[0]), "teb0": ("s", OKABE_ITO[5]), "gaussian": ("^", OKABE_ITO[1]),
              "ksg": ("v", OKABE_ITO[2]), "deterministic": ("x", OKABE_ITO[3]), "joint": ("+", OKABE_ITO[4])}
    labels = {**VARIANT_LABEL, "gaussian": "Gaussian estimator", "ksg": "KSG estimator (ennemi)"}
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(3.6, 3.3))
        hi = max(sweep["exact_te"].max(), sweep["te"].max(), 1e-3) * 1.08 if len(sweep) else 1
        ax.plot([0, hi], [0, hi], color="black", lw=0.8, ls="--", label="identity")
        for name, (marker, colour) in styles.items():  # drawn, and listed in the legend, in this order
            s = sweep[sweep["estimator"] == name].sort_values("exact_te")
            if s.empty:
                continue
            # The reference estimators give one value per task: only the models have a seed or window SE.
            ax.errorbar(s["exact_te"], s["te"], yerr=s["te_se"].fillna(0) * 1.96 if name in READS_SOURCE else None,
                        marker=marker, color=colour, lw=0.8, ms=4, label=labels[name],
                        alpha=1.0 if name in ("teb", "gaussian", "ksg") else 0.6)
        ax.set_xlabel("exact TE (nats)")
        ax.set_ylabel("lower bound (models) / estimate (nats)")
        ax.set_title("Coupled AR(1) over the coupling $c$")
        ax.legend(loc="upper left")
        return save(fig, Path(out_dir) / "teb_te_vs_exact")


def fig_beta_sweep(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The study's central figure: per swept task, the KL term and the contrastive lower bound against
    beta (mean +- seed SD), the exact TE as a line, and switch-event quality on a second axis."""
    swept = summary[summary["variant"].isin(STOCHASTIC)].groupby(["task", "variant"]).filter(
        lambda g: g["beta"].nunique() > 1)
    tasks = list(dict.fromkeys(swept["task"])) or list(dict.fromkeys(summary["task"]))[:1]
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(3.1 * max(len(tasks), 1), 3.1), squeeze=False,
                                 layout="constrained")
        for ax, task in zip(axes[0], tasks):
            g_task = swept[swept["task"] == task]
            kind = g_task["kind"].iloc[0] if len(g_task) else "ar"
            quality = None if kind == "ar" else ("mse_switch" if kind == "sines" else "accuracy_switch")
            ax2 = ax.twinx() if quality else None
            for variant, g in g_task.groupby("variant", sort=False):
                g = g.sort_values("beta")
                colour = OKABE_ITO[0] if variant == "teb" else OKABE_ITO[5]
                lab = VARIANT_LABEL[variant].replace(" (from context)", "")
                ax.errorbar(g["beta"], g["kl_mean"], yerr=g["kl_sd"].fillna(0), marker="o", ms=3, lw=0.9,
                            color=colour, label=f"KL, {lab}")
                ax.errorbar(g["beta"], g["te_lower_mean"], yerr=g["te_lower_sd"].fillna(0), marker="s", ms=3,
                            lw=0.9, ls="--", color=colour, label=f"lower bound, {lab}")
                if ax2 is not None:
                    ax2.plot(g["beta"], g[f"{quality}_mean"], marker="^", ms=3, lw=0.7, ls=":", color=colour,
                             alpha=0.8, label=f"switch {'MSE' if quality == 'mse_switch' else 'acc.'}, {lab}")
            if len(g_task):
                ax.axhline(g_task["exact_te"].iloc[0], color="black", lw=0.9, label="exact TE")
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_xlabel(r"$\beta$ (weight of the reconstruction term)")
            ax.set_ylabel("nats")
            ax.set_title(TASK_LABEL.get(task, task))
            if ax2 is not None:
                ax2.set_ylabel("switch MSE" if quality == "mse_switch" else "switch accuracy")
        legend: dict[str, object] = {}
        for a in fig.axes:  # the twin axes too: switch quality is on the right
            for handle, label in zip(*a.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=4, fontsize=6)
        return save(fig, Path(out_dir) / "teb_beta_sweep")


def fig_switch(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    tasks = [t for t in summary["task"].unique() if summary.loc[summary["task"] == t, "kind"].iloc[0] != "ar"]
    variants = [v for v in VARIANTS if v in set(summary["variant"])]
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(2.9 * max(len(tasks), 1), 3.0), squeeze=False,
                                 layout="constrained")
        for ax, task in zip(axes[0], tasks):
            s = summary[summary["task"] == task].set_index("variant")
            kind = s["kind"].iloc[0]
            metric = "mse" if kind == "sines" else "accuracy"
            xs = np.arange(len(variants))
            for j, (ev, lab) in enumerate((("switch", "switch events"), ("noswitch", "no switch"))):
                vals = [s.loc[v, f"{metric}_{ev}_mean"] if v in s.index else np.nan for v in variants]
                sds = [s.loc[v, f"{metric}_{ev}_sd"] if v in s.index else np.nan for v in variants]
                ax.bar(xs + (j - 0.5) * 0.38, vals, width=0.38, color=OKABE_ITO[j * 4], label=lab,
                       yerr=np.nan_to_num(sds), capsize=2)
            ax.set_xticks(xs, [VARIANT_LABEL[v].replace(" (from context)", "") for v in variants], rotation=40, ha="right")
            ax.set_ylabel("MSE (lower is better)" if metric == "mse" else "accuracy (higher is better)")
            ax.set_title(TASK_LABEL.get(task, task))
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside upper center", ncols=2)
        if not tasks:
            axes[0][0].text(0.5, 0.5, "no switch tasks enabled", ha="center", transform=axes[0][0].transAxes)
        return save(fig, Path(out_dir) / "teb_switch")


def make_figures(teb_dir: Path, out_dir: Path) -> list[Path]:
    _, summary, defaults = read_aggregate(teb_dir)
    paths = fig_te_vs_exact(read_te_sweep(teb_dir), out_dir)
    paths += fig_beta_sweep(summary, out_dir)
    paths += fig_switch(at_default_beta(summary, defaults), out_dir)
    return paths
