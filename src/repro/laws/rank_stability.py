"""Rank stability of LoRA adapters under the scaling factor gamma_r (rsLoRA, arXiv 2312.03732, Thm 3.2).

A LoRA adapter computes y = gamma_r * B A x with A in R^{r x d_in}, B in R^{d_out x r}, B = 0 at init and A
drawn as peft does (``kaiming_uniform_(a=sqrt(5))``: U(-1/sqrt(d_in), 1/sqrt(d_in)), variance
sigma_A = 1/(3 d_in), independent of r). Three rules are compared: gamma_r = alpha/r (LoRA),
alpha/sqrt(r) (rsLoRA) and alpha (constant).

:func:`simulate` trains one such adapter per (rank, rule, init seed) for a few optimiser steps on the linear
loss L = sum(y * G) / n_inputs, whose gradient with respect to the adapter output is the fixed matrix
G / n_inputs (G iid N(0, 1)), and then measures on fresh N(0, 1) inputs x and fresh N(0, 1) output
gradients g

* ``output_moment``: mean squared entry of y = gamma_r B A x, and
* ``input_grad_moment``: mean squared entry of the per-example input gradient g^T (gamma_r B A), i.e. the
  output gradient back-propagated through the adapter (the gradient of the loss y . g of one example),

each averaged over init seeds (``*_se``: standard error over seeds). At step 0 both are exactly 0 because
B = 0; step 0 is recorded anyway.

Two different "moments" must be told apart (both are returned):

* the *typical* moment E_A[E_x y^2] (columns ``output_moment``, ``input_grad_moment``): what one trained
  adapter does, averaged over inits;
* the *mean-field* moment E_x[(E_A y)^2] (columns ``*_meanfield``): the second moment of the adapter
  averaged over the init first, which is what the proof of Thm 3.2 tracks when it replaces A^T A by
  E[A^T A] = r sigma_A I. It is estimated without bias by the U-statistic over pairs of init seeds that share
  the training data and the evaluation inputs (mean over seed pairs s != t of y_s * y_t), so it is noisy
  where the init fluctuation dominates (small r), and can even come out negative there.

For plain SGD the first step gives exactly W_1 = gamma_r B_1 A = -lr gamma_r^2 M A^T A with
M = G^T X / n_inputs, and with E[(A^T A)^2] = r sigma_A^2 (r + d_in - 1/5) I (uniform entries)

    typical    E_A ||W_1||_F^2   = lr^2 gamma_r^4 sigma_A^2 r (r + d_in - 0.2) ||M||_F^2,
    mean-field ||E_A W_1||_F^2   = lr^2 gamma_r^4 sigma_A^2 r^2 ||M||_F^2,

(mean squared output = ||W||_F^2 / d_out, mean squared input gradient = ||W||_F^2 / d_in); later steps add
n-fold copies of the same term plus corrections of relative size O(n lr^2 gamma_r^2 ||M||^2), negligible here.
Hence for SGD:

* mean-field second moments scale as (gamma_r^2 r)^2: slopes of log(moment) vs log(r) are -2 (LoRA),
  0 (rsLoRA), +2 (constant), i.e. magnitudes (root mean squares) scale as r^-1, r^0, r^+1, as in the paper;
* typical second moments carry the extra factor (r + d_in)/r: for r << d_in the slopes are -3, -1, +1 and
  only for r >~ d_in do they approach -2, 0, +2. So a single rsLoRA adapter trained by SGD from this init is
  rank-stable in the sense of the paper only for r >~ d_in; at r << d_in its update's Frobenius norm
  falls like r^{-1/2} (A^T A is then ~ d_in sigma_A times a rank-r projection, not r sigma_A I).

For Adam (betas 0.9/0.999, eps 1e-8, bias-corrected; A gets no update at step 1 because its gradient is 0
while B = 0) the first update of B is -lr sign(gamma_r M A^T), whose size does not depend on gamma_r, so
W_1 = -lr gamma_r sign(M A^T) A and moments scale as gamma_r^2 r (typical, r << d_in) and gamma_r^2 r^2
(mean-field). Observed on the default setting (d_in = d_out = 256, ranks 1..2048, step 4), not asserted:
typical slopes -0.94 / +0.06 / +1.06 (LoRA / rsLoRA / constant) over r = 1..128 and -0.34 / +0.66 / +1.66
over r = 256..2048 (fit over all ranks: -0.78 / +0.22 / +1.22); mean-field slopes -0.06 / +0.94 / +1.94,
i.e. under Adam the mean-field moment is flat for LoRA, not for rsLoRA, while the typical moment is about
flat for rsLoRA at r << d_in. The derivation above follows SGD; this Adam behaviour lies outside it.

:func:`fitted_slopes` gives the least-squares slope of log(moment) against log(r) per rule and step.
:func:`plot_rank_stability` draws both moments against r.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

DEFAULT_RANKS = tuple(2**k for k in range(12))  # 1 .. 2048
SCALING_RULES = ("lora", "rslora", "constant")
SCALING_LABEL = {
    "lora": r"$\gamma_r=\alpha/r$ (LoRA)",
    "rslora": r"$\gamma_r=\alpha/\sqrt{r}$ (rsLoRA)",
    "constant": r"$\gamma_r=\alpha$ (constant)",
}
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442", "#000000"]
SCALING_COLOUR = {"lora": OKABE_ITO[0], "rslora": OKABE_ITO[1], "constant": OKABE_ITO[3]}
MEASURES = ("output_moment", "input_grad_moment", "output_moment_meanfield", "input_grad_moment_meanfield")

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_DTYPE = torch.float64


def scaling_factor(rule: str, alpha: float, r: int) -> float:
    """gamma_r of a scaling rule: alpha/r (lora), alpha/sqrt(r) (rslora) or alpha (constant)."""
    if rule == "lora":
        return alpha / r
    if rule == "rslora":
        return alpha / math.sqrt(r)
    if rule == "constant":
        return float(alpha)
    raise ValueError(f"unknown scaling rule {rule!r}; expected one of {SCALING_RULES}")


def _generator(*key: int) -> torch.Generator:
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def init_lora_A(r: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """peft's init of lora_A: kaiming_uniform_(a=sqrt(5)) on an (r, d_in) weight, i.e. U(+-1/sqrt(d_in))."""
    A = torch.empty(r, d_in, dtype=_DTYPE)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return A


def _moments(W: torch.Tensor, x_eval: torch.Tensor, g_eval: torch.Tensor) -> dict[str, np.ndarray | float]:
    """Per-seed mean squares of y = x W^T and of g W, and their unbiased cross-seed (mean-field) versions."""
    S = W.shape[0]
    y = torch.matmul(x_eval, W.transpose(1, 2))  # (S, N, d_out)
    gx = torch.matmul(g_eval, W)  # (S, N, d_in)
    out = {}
    for name, v in (("output_moment", y), ("input_grad_moment", gx)):
        per_seed = v.pow(2).mean(dim=(1, 2))
        out[name] = per_seed.numpy()
        if S > 1:  # mean over ordered pairs s != t of y_s * y_t
            cross = (v.sum(0).pow(2).mean() - per_seed.sum()) / (S * (S - 1))
            out[name + "_meanfield"] = float(cross)
        else:
            out[name + "_meanfield"] = float("nan")
    return out


def simulate(
    ranks: Iterable[int],
    scalings: Sequence[str] = SCALING_RULES,
    d_in: int = 256,
    d_out: int = 256,
    alpha: float = 16.0,
    steps: Sequence[int] = (1, 2, 4),
    lr: float = 1e-3,
    n_inputs: int = 512,
    n_init_seeds: int = 4,
    optimizer: str = "sgd",
    seed: int = 0,
    num_threads: int | None = 1,
) -> pd.DataFrame:
    """Train LoRA adapters for a few steps from B = 0 and measure output and input-gradient moments vs rank.

    For every rank r, scaling rule and init seed one adapter (float64) is built: A by peft's
    kaiming-uniform init (variance 1/(3 d_in), independent of r), B = 0. All init seeds and all ranks and
    rules share one draw of the training inputs X (n_inputs x d_in, iid N(0,1)), the output-gradient matrix
    G (n_inputs x d_out, iid N(0,1); loss = sum(y * G) / n_inputs) and the fresh evaluation inputs and
    output gradients (same sizes and law), so seeds differ only in A ("in expectation over initialization").
    The adapter takes max(steps) steps of plain SGD (or Adam, ``optimizer="adam"``) on A and B at learning
    rate ``lr``; the moments are measured after 0 steps and after each n in ``steps`` (n steps of one
    trajectory are the same as n steps of a fresh run). At step 0 every moment is exactly 0 since B = 0.

    Returns one row per (rank, scaling, step) with columns optimizer, rank, scaling, gamma, step,
    output_moment, output_moment_se, input_grad_moment, input_grad_moment_se (seed mean and standard error
    over seeds of the per-adapter mean squares), output_moment_meanfield, input_grad_moment_meanfield
    (unbiased cross-seed estimate of the second moment of the init-averaged adapter; NaN for one seed,
    may be <= 0 from noise), and the setting: d_in, d_out, alpha, lr, n_inputs, n_init_seeds, seed.
    ``num_threads`` (default 1) sets torch's intra-op threads for the call and is restored afterwards
    (None: leave as is); the result does not depend on it beyond float64 rounding.
    """
    args = (ranks, scalings, d_in, d_out, alpha, steps, lr, n_inputs, n_init_seeds, optimizer, seed)
    if num_threads is None:
        return _simulate(*args)
    old = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        return _simulate(*args)
    finally:
        torch.set_num_threads(old)


def _simulate(ranks, scalings, d_in, d_out, alpha, steps, lr, n_inputs, n_init_seeds, optimizer, seed):
    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    for rule in scalings:
        scaling_factor(rule, alpha, 1)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    steps = sorted({int(n) for n in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps}")
    if n_init_seeds < 1:
        raise ValueError("n_init_seeds must be >= 1")
    n_steps = steps[-1]
    record_at = set(steps)

    g = _generator(seed, 0)
    X = torch.randn(n_inputs, d_in, generator=g, dtype=_DTYPE)
    G = torch.randn(n_inputs, d_out, generator=g, dtype=_DTYPE)
    x_eval = torch.randn(n_inputs, d_in, generator=g, dtype=_DTYPE)
    g_eval = torch.randn(n_inputs, d_out, generator=g, dtype=_DTYPE)
    M = G.T @ X / n_inputs  # dL/dW for the effective weight W = gamma B A

    rows = []
    for r in ranks:
        A0 = torch.stack([init_lora_A(r, d_in, _generator(seed, 1, r, s)) for s in range(n_init_seeds)])
        for rule in scalings:
            gamma = scaling_factor(rule, alpha, r)
            A, B = A0.clone(), torch.zeros(n_init_seeds, d_out, r, dtype=_DTYPE)
            if optimizer == "adam":
                state = [torch.zeros_like(t) for t in (A, A, B, B)]  # m_A, v_A, m_B, v_B
            zero = {m: np.zeros(n_init_seeds) for m in ("output_moment", "input_grad_moment")}
            zero.update(output_moment_meanfield=0.0, input_grad_moment_meanfield=0.0)
            measured = {0: zero}
            for n in range(1, n_steps + 1):
                grad_B = gamma * torch.matmul(M, A.transpose(1, 2))  # (S, d_out, r)
                grad_A = gamma * torch.matmul(B.transpose(1, 2), M)  # (S, r, d_in)
                if optimizer == "sgd":
                    A, B = A - lr * grad_A, B - lr * grad_B
                else:
                    b1, b2 = _ADAM_BETAS
                    mA, vA, mB, vB = state
                    mA, mB = b1 * mA + (1 - b1) * grad_A, b1 * mB + (1 - b1) * grad_B
                    vA, vB = b2 * vA + (1 - b2) * grad_A**2, b2 * vB + (1 - b2) * grad_B**2
                    c1, c2 = 1 - b1**n, 1 - b2**n
                    A = A - lr * (mA / c1) / ((vA / c2).sqrt() + _ADAM_EPS)
                    B = B - lr * (mB / c1) / ((vB / c2).sqrt() + _ADAM_EPS)
                    state = [mA, vA, mB, vB]
                if n in record_at:
                    measured[n] = _moments(gamma * torch.matmul(B, A), x_eval, g_eval)
            for n, m in measured.items():
                row = {"optimizer": optimizer, "rank": r, "scaling": rule, "gamma": gamma, "step": n}
                for name in ("output_moment", "input_grad_moment"):
                    per_seed = m[name]
                    row[name] = float(per_seed.mean())
                    se = per_seed.std(ddof=1) / math.sqrt(n_init_seeds) if n_init_seeds > 1 else float("nan")
                    row[name + "_se"] = float(se)
                for name in ("output_moment_meanfield", "input_grad_moment_meanfield"):
                    row[name] = m[name] if n_init_seeds > 1 else float("nan")
                rows.append(row)

    df = pd.DataFrame(rows)
    df = df.assign(d_in=d_in, d_out=d_out, alpha=float(alpha), lr=float(lr), n_inputs=n_inputs,
                   n_init_seeds=n_init_seeds, seed=seed)
    order = {rule: i for i, rule in enumerate(scalings)}
    df = df.sort_values(["scaling", "step", "rank"], key=lambda c: c.map(order) if c.name == "scaling" else c)
    return df.reset_index(drop=True)


def fitted_slopes(df: pd.DataFrame, measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Least-squares slope of log(moment) against log(r), per optimizer, scaling rule, step > 0 and measure.

    Tidy result: optimizer, scaling, step, measure, slope, intercept, r2, n_ranks (ranks with a positive,
    finite moment; the mean-field estimate can be <= 0 at small r and those ranks are left out; NaN slope
    when fewer than 2 remain), rank_min, rank_max.

    Expected for SGD (see the module docstring): mean-field measures -2 / 0 / +2 for lora / rslora /
    constant (magnitudes -1 / 0 / +1); typical measures between -3 / -1 / +1 (r << d_in) and -2 / 0 / +2
    (r >> d_in), so their fitted slope depends on where the ranks lie relative to d_in. For Adam the
    typical measures come out near -1 / 0 / +1 at r << d_in and steeper at larger r (an observation only).
    """
    keys = [k for k in ("optimizer", "scaling", "step") if k in df.columns]
    rows = []
    for key, grp in df[df["step"] > 0].groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for measure in measures:
            if measure not in grp.columns:
                continue
            sub = grp[np.isfinite(grp[measure]) & (grp[measure] > 0)]
            row = dict(zip(keys, key), measure=measure, n_ranks=int(len(sub)))
            if len(sub) >= 2 and sub["rank"].nunique() >= 2:
                lx, ly = np.log(sub["rank"].to_numpy(float)), np.log(sub[measure].to_numpy(float))
                slope, intercept = np.polyfit(lx, ly, 1)
                resid = ly - (slope * lx + intercept)
                ss = float(((ly - ly.mean()) ** 2).sum())
                r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else float("nan")
                row.update(slope=float(slope), intercept=float(intercept), r2=r2,
                           rank_min=int(sub["rank"].min()), rank_max=int(sub["rank"].max()))
            else:
                row.update(slope=float("nan"), intercept=float("nan"), r2=float("nan"),
                           rank_min=float("nan"), rank_max=float("nan"))
            rows.append(row)
    return pd.DataFrame(rows)


def plot_rank_stability(
    df: pd.DataFrame,
    out_path_without_suffix: str | Path,
    step: int | None = None,
    show_smaller_steps: bool = True,
    show_meanfield: bool = True,
) -> list[Path]:
    """Two log-log panels (mean squared adapter output, mean squared input gradient) against rank r.

    One colour per scaling rule (Okabe-Ito). Solid lines with markers: the typical moment (seed mean, with
    a band of +-1 standard error) at ``step`` (default: the largest step in ``df``); faint solid lines: the
    smaller steps (typical moment); dashed: the mean-field moment (second moment of the init-averaged
    adapter) at ``step``, drawn only where the estimate is positive. A dotted vertical line marks r = d_in.
    ``df`` must hold one optimizer. Writes ``<out>.pdf`` (vector) and ``<out>.png`` (dpi 200) and returns
    both paths. Uses the Agg canvas on a standalone Figure; no global matplotlib state is changed.
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
    present = set(df["scaling"])
    scalings = [s for s in SCALING_RULES if s in present] + sorted(present - set(SCALING_RULES))
    colour = dict(SCALING_COLOUR)
    spare = [c for c in OKABE_ITO if c not in colour.values()]
    for s in scalings:
        colour.setdefault(s, spare.pop(0))

    fig = Figure(figsize=(7.0, 3.1), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = (
        ("output_moment", "mean squared adapter output"),
        ("input_grad_moment", "mean squared input gradient"),
    )
    for ax, (measure, ylabel) in zip(axes, panels):
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
            mf = measure + "_meanfield"
            if show_meanfield and mf in sub.columns:
                m = sub[(sub["step"] == step) & np.isfinite(sub[mf]) & (sub[mf] > 0)].sort_values("rank")
                ax.plot(m["rank"], m[mf], color=colour[rule], ls="--", lw=1.2)
        if "d_in" in df.columns:
            ax.axvline(float(df["d_in"].iloc[0]), color="0.5", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rank r")
        ax.set_ylabel(ylabel)
    opt = str(df["optimizer"].iloc[0]).upper() if "optimizer" in df.columns else ""
    for ax in axes:
        ax.set_title(f"{opt}, step {step}".strip(", "), fontsize="medium")
    handles = [Line2D([], [], color=colour[s], lw=1.4, label=SCALING_LABEL.get(s, s)) for s in scalings]
    typical = r"$\mathrm{E}_A[\mathrm{mean}\ y^2]$ (typical)"
    handles.append(Line2D([], [], color="0.3", lw=1.4, marker="o", ms=3, label=typical))
    if show_meanfield:
        meanfield = r"$\mathrm{mean}\,(\mathrm{E}_A y)^2$ (mean-field)"
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2, label=meanfield))
    if show_smaller_steps and len(steps_present) > 1:
        handles.append(Line2D([], [], color="0.3", alpha=0.3, lw=0.8, label="smaller step counts"))
    if "d_in" in df.columns:
        handles.append(Line2D([], [], color="0.5", ls=":", lw=0.8, label=r"$r = d_{in}$"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small", frameon=False)

    base = Path(out_path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.parent / (base.name + ".pdf"), base.parent / (base.name + ".png")]
    fig.savefig(paths[0])
    fig.savefig(paths[1], dpi=200)
    return paths
