"""Law fits: recovery of known parameters from synthetic data, and degenerate inputs reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repro.laws.fits import FAMILIES, fit_all, fit_linear_law, fit_power_law, fits_table, matched_forgetting
from repro.laws.gradnorm import gradient_norm_by_rank, gradient_norm_spread

RANKS = [1, 2, 4, 8, 16, 32]
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]


def synthetic_runs(law, noise=0.002, seed=0, ranks=RANKS, params_per_rank=40_000):
    """Checkpoints whose L_f follows ``law(P, N)`` and L_ft = 3 - 0.5 (L_f - L_f(N=0)) plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in ranks:
        P = r * params_per_rank
        for n in STEPS:
            lf = law(P, n) + (rng.normal(0, noise) if n else 0.0)
            lft = 3.0 - 0.5 * (lf - law(P, 0)) + (rng.normal(0, noise) if n else 0.0)
            rows.append(dict(model="m", dataset="d", method="lora", rank=r, lr=1e-3, seed=0, step=n,
                             trainable_params=P, loss_forget=lf, loss_ft=lft))
    return pd.DataFrame(rows)


def _inside(fit, name, truth):
    lo, hi = fit["ci95"][name]
    return lo <= truth <= hi


def test_joint_power_law_recovered_within_bootstrap_intervals():
    E, alpha, beta = 2.0, 0.3, 0.4
    df = synthetic_runs(lambda P, N: E + 0.05 * (P / 1e5) ** alpha * N**beta)
    fit = fit_power_law(df, "loss_forget", FAMILIES["joint"], holdout_last=1)
    assert fit["status"] == "ok"
    from repro.laws.fits import bootstrap_power_law

    fit.update(bootstrap_power_law(df, "loss_forget", FAMILIES["joint"], fit["params"], fit["p_ref"], fit["n_ref"],
                                   resamples=60, seed=0))
    assert fit["bootstrap_ok"] >= 40
    for name, truth in (("E", E), ("alpha", alpha), ("beta", beta)):
        assert _inside(fit, name, truth), (name, fit["params"][name], fit["ci95"][name])
    assert fit["r2"] > 0.99 and fit["extrapolation_rmse"] < 0.02


def test_shifted_law_recovered_and_preferred_by_aic_over_a_wrong_family():
    E, alpha, beta, n0 = 1.0, 0.2, 0.5, 4.0
    n_ref_free = lambda P, N: E + 0.02 * (P / 1e5) ** alpha * (N + n0) ** beta  # noqa: E731
    df = synthetic_runs(n_ref_free, noise=0.001)
    fits, _ = fit_all(df, ["shifted", "additive"], ["loss_forget"], holdout_last=1, resamples=40, seed=1)
    power = [f for f in fits if f["family"] != "linear"]
    chosen = next(f for f in power if f["chosen"])
    assert chosen["family"] == "shifted"
    assert chosen["params"]["alpha"] == pytest.approx(alpha, abs=0.05)
    assert chosen["params"]["beta"] == pytest.approx(beta, abs=0.1)
    assert _inside(chosen, "alpha", alpha) and _inside(chosen, "beta", beta)


def test_linear_law_slope_and_claim():
    df = synthetic_runs(lambda P, N: 2.0 + 0.05 * (P / 1e5) ** 0.3 * N**0.4)
    fit = fit_linear_law(df)
    assert fit["status"] == "ok"
    # L_ft = 3 - 0.5 (L_f - 2)  =>  L_f = 8 - 2 L_ft: a = 8, b = 2.
    lo, hi = fit["ci95"]["b"]
    assert lo <= 2.0 <= hi and fit["params"]["b"] == pytest.approx(2.0, rel=0.05)
    assert fit["claim_b_positive"] == "supported" and fit["p_value_b_positive"] < 1e-6
    assert fit["r2"] > 0.99
    # The opposite relation must not be called supported.
    flipped = df.assign(loss_ft=6.0 - df["loss_ft"])
    assert fit_linear_law(flipped)["claim_b_positive"] == "not supported"


def test_degenerate_inputs_are_reported_not_crashed_on():
    one_rank = synthetic_runs(lambda P, N: 2.0 + 0.01 * N**0.3, ranks=[4])
    fits, matched = fit_all(one_rank, ["joint", "shifted", "additive"], ["loss_forget", "loss_ft"], 1, 30, 0)
    power = [f for f in fits if f["family"] != "linear"]
    assert all(f["status"].startswith("degenerate: one value of P") for f in power)
    assert not any(f["chosen"] for f in power)
    assert matched.empty
    constant = synthetic_runs(lambda P, N: 2.0, noise=0.0).assign(loss_ft=1.5)
    lin = fit_linear_law(constant)
    assert lin["status"].startswith("degenerate")
    fits, _ = fit_all(constant, ["joint"], ["loss_forget", "loss_ft"], 1, 30, 0)
    assert {f["status"] for f in fits} == {"degenerate: loss_ft is constant", "degenerate: loss_forget is constant"}
    table = fits_table(fits)
    assert len(table) == len(fits) and table["value"].isna().all()


def test_too_few_points_reported():
    df = synthetic_runs(lambda P, N: 2.0 + 0.01 * N**0.3).query("step <= 2")
    fit = fit_power_law(df, "loss_forget", FAMILIES["shifted"], holdout_last=1)
    assert fit["status"].startswith("insufficient points")


def test_matched_forgetting_interpolates_inside_common_range():
    df = synthetic_runs(lambda P, N: 2.0 + 0.05 * (P / 1e5) ** 0.3 * N**0.4)
    m = matched_forgetting(df, levels=4)
    assert len(m) == 4 * len(RANKS)
    # Here L_f depends on L_ft only (L_ft = 3 - (L_f - 2)/2): at a matched L_ft every rank forgets alike.
    spread = m.groupby("loss_ft")["loss_forget"].agg(np.ptp)
    assert (spread < 0.02).all()


def test_gradient_norm_spread_separates_collapse_from_stability():
    rows = []
    for method, power in (("lora", -1.0), ("rslora", 0.0)):
        for r in (1, 4, 16, 64):
            for s in range(1, 6):
                rows.append(dict(model="m", dataset="d", method=method, rank=r, lr=1e-3, seed=0, step=s,
                                 grad_norm=0.1 * r**power * (1 + 0.01 * s)))
    spread = gradient_norm_spread(gradient_norm_by_rank(pd.DataFrame(rows))).set_index("method")
    assert spread.loc["lora", "ratio_max_min"] == pytest.approx(64, rel=1e-6)
    assert spread.loc["rslora", "ratio_max_min"] == pytest.approx(1, rel=1e-6)
