"""Rank stability of LoRA scaling rules (rsLoRA, arXiv 2312.03732, Thm 3.2): repro.laws.rank_stability."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

torch.set_num_threads(1)

from repro.laws import rank_stability as rs  # noqa: E402
from repro.laws.figures import plot_rank_stability  # noqa: E402

D = 128
RANKS = [1, 2, 4, 8, 16, 32]  # r <= d_in / 4: the regime of the paper's claim
SMALL = dict(d_in=D, d_out=D, alpha=16.0, steps=(1, 2), lr=1e-3, n_inputs=128, n_init_seeds=6, seed=0)
GAMMA = {"lora": lambda r: 16.0 / r, "rslora": lambda r: 16.0 / math.sqrt(r), "constant": lambda r: 16.0}
# Slopes of log(measure) vs log(r) at r << d_in (module docstring): mean squares under Adam, the parameter
# gradient norm under both optimisers, and the SGD mean-field moment that the theorem's proof tracks.
ADAM_MOMENT = {"lora": -1.0, "rslora": 0.0, "constant": 1.0}
GRAD_NORM = {"lora": -0.5, "rslora": 0.0, "constant": 0.5}
SGD_MEANFIELD = {"lora": -2.0, "rslora": 0.0, "constant": 2.0}
SGD_TYPICAL = {"lora": -3.0, "rslora": -1.0, "constant": 1.0}


@pytest.fixture(scope="module")
def adam() -> pd.DataFrame:
    return rs.simulate(RANKS, optimizer="adam", per_seed=True, **SMALL)


@pytest.fixture(scope="module")
def sgd() -> pd.DataFrame:
    return rs.simulate(RANKS, optimizer="sgd", per_seed=True, **SMALL)


@pytest.fixture(scope="module")
def slopes(adam, sgd) -> pd.DataFrame:
    return rs.fitted_slopes(pd.concat([adam, sgd], ignore_index=True))


def _slope(sl, optimizer, rule, measure, step=2) -> pd.Series:
    got = sl[(sl.optimizer == optimizer) & (sl.scaling == rule) & (sl.measure == measure) & (sl.step == step)]
    assert len(got) == 1
    return got.iloc[0]


def _data_M():
    X, G = rs.training_data(SMALL["n_inputs"], D, D, SMALL["seed"])
    return G.T @ X / SMALL["n_inputs"]


def test_table_shape_and_gammas(adam):
    agg = rs.aggregate(adam)
    assert len(adam) == len(RANKS) * 3 * 3 * SMALL["n_init_seeds"]  # ranks x rules x steps {0, 1, 2} x seeds
    assert len(agg) == len(RANKS) * 3 * 3 and set(agg.step) == {0, 1, 2}
    for _, row in agg.iterrows():
        assert row.gamma == pytest.approx(GAMMA[row.scaling](row["rank"]), rel=1e-12)
    assert (agg.optimizer == "adam").all()
    assert set(rs.MEASURES) | {m + "_se" for m in rs.PRIMARY_MEASURES} | {m + "_expected" for m in rs.MEASURES} <= set(agg)


def test_step_zero(adam):
    # B = 0: the adapter is exactly zero, but dL/dB = gamma M A^T is not, and dL/dA = 0.
    s0 = rs.aggregate(adam).query("step == 0")
    for m in ("output_moment", "input_grad_moment", *rs.MEANFIELD_MEASURES):
        assert (s0[m] == 0.0).all(), m
    M = _data_M()
    for _, row in s0.iterrows():
        A = torch.stack([rs.init_lora_A(row["rank"], D, rs._generator(0, 1, row["rank"], s)) for s in range(6)])
        want = (row.gamma * torch.linalg.matrix_norm(M @ A.transpose(1, 2)) / 2).mean().item()
        assert row.param_grad_norm == pytest.approx(want, rel=1e-12)


def test_init_matches_peft():
    g = rs._generator(0, 1, 2)
    for r in (1, 64, 512):
        A = rs.init_lora_A(r, D, g)
        assert A.abs().max() <= 1 / math.sqrt(D)
        if r >= 64:
            assert A.var().item() == pytest.approx(1 / (3 * D), rel=0.1)


def test_adam_primary_slopes_reproduce_the_claim(slopes):
    """Adam, r << d_in: the typical moments and the gradient norm are flat for alpha/sqrt(r) only."""
    for rule in rs.SCALING_RULES:
        for measure in ("output_moment", "input_grad_moment"):
            row = _slope(slopes, "adam", rule, measure)
            assert abs(row.slope - ADAM_MOMENT[rule]) <= 0.15, (rule, measure, row.slope)
            assert row.slope_low <= row.slope <= row.slope_high
            assert abs(row.expected_slope - ADAM_MOMENT[rule]) <= 0.1
        row = _slope(slopes, "adam", rule, "param_grad_norm")
        assert abs(row.slope - GRAD_NORM[rule]) <= 0.08, (rule, row.slope)
        for measure in rs.PRIMARY_MEASURES:
            row = _slope(slopes, "adam", rule, measure)
            assert row.primary and row.optimizer_role == "primary"
            assert row.paper_claim == rs.PAPER_CLAIM[rule] and row.verdict == row.paper_claim and row.reproduces


def test_sgd_contrast_typical_moments_match_closed_form(sgd, slopes):
    # SGD collapses a single rsLoRA adapter like 1/r at r << d_in: E||W_n||^2 ~ gamma^4 r (r + d_in).
    M = _data_M()
    fro2, sigma = float((M**2).sum()), 1 / (3 * D)
    agg = rs.aggregate(sgd)
    for _, row in agg[agg.step > 0].iterrows():
        r = row["rank"]
        pred = row.step**2 * SMALL["lr"] ** 2 * row.gamma**4 * sigma**2 * r * (r + D - 0.2) * fro2 / D
        assert row.output_moment_expected == pytest.approx(pred, rel=1e-12)
        assert row.output_moment == pytest.approx(pred, rel=0.25), (row.scaling, r, row.step)
        assert row.input_grad_moment == pytest.approx(pred, rel=0.25), (row.scaling, r, row.step)
    for rule in rs.SCALING_RULES:
        row = _slope(slopes, "sgd", rule, "output_moment")
        assert abs(row.slope - row.expected_slope) <= 0.08, (rule, row.slope, row.expected_slope)
        assert abs(row.expected_slope - SGD_TYPICAL[rule]) <= 0.1  # tilted up by the r / d_in term
        assert not row.primary and row.optimizer_role == "contrast"
    assert _slope(slopes, "sgd", "rslora", "output_moment").verdict == "collapse"


def test_sgd_contrast_meanfield_slopes(slopes):
    for rule, want in SGD_MEANFIELD.items():
        for measure in rs.MEANFIELD_MEASURES:
            row = _slope(slopes, "sgd", rule, measure)
            assert row.n_ranks == len(RANKS) and row.expected_slope == pytest.approx(want, abs=1e-9)
            assert abs(row.slope - want) <= 0.3, (rule, measure, row.slope)
            assert row.slope_low < want < row.slope_high or abs(row.slope - want) < 0.1


def test_adam_moments_match_closed_form(adam):
    # Step 1 of Adam moves B by lr sign(gamma M A^T) whatever gamma is: E||W_1||^2 = lr^2 gamma^2 sigma d_out r
    # (d_in + (2/pi)(r - 1)); A's later updates add a few per cent by step 2.
    agg = rs.aggregate(adam)
    for _, row in agg[agg.step > 0].iterrows():
        r, sigma = row["rank"], 1 / (3 * D)
        pred = row.step**2 * SMALL["lr"] ** 2 * row.gamma**2 * sigma * r * (D + 2 / math.pi * (r - 1))
        assert row.output_moment_expected == pytest.approx(pred, rel=1e-12)
        assert row.output_moment == pytest.approx(pred, rel=0.1 if row.step == 1 else 0.2), (row.scaling, r)
        assert row.param_grad_norm == pytest.approx(row.param_grad_norm_expected, rel=0.1), (row.scaling, r)


def test_wrong_scaling_rule_is_caught(monkeypatch):
    real = rs.scaling_factor

    def broken(rule, alpha, r):  # rsLoRA mistakenly using alpha / r
        return real("lora" if rule == "rslora" else rule, alpha, r)

    monkeypatch.setattr(rs, "scaling_factor", broken)
    sl = rs.fitted_slopes(rs.simulate(RANKS, scalings=("rslora",), optimizer="adam", per_seed=True, **SMALL))
    row = _slope(sl, "adam", "rslora", "output_moment")
    assert row.slope < -0.8 and row.verdict == "collapse" and not row.reproduces


def test_sgd_in_place_of_adam_is_caught():
    """Were the primary run SGD (as before), rsLoRA's typical moment would not be flat."""
    sl = rs.fitted_slopes(rs.simulate(RANKS, scalings=("rslora",), optimizer="sgd", per_seed=True, **SMALL),
                          primary_optimizer="sgd")
    row = _slope(sl, "sgd", "rslora", "output_moment")
    assert row.primary and not row.reproduces and row.slope < -0.8


def test_meanfield_leave_one_out_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    S = 5
    W = torch.randn(S, 3, 4, generator=g, dtype=torch.float64) + 0.7
    share = rs._measure(W, torch.zeros(S, 1, 4, dtype=torch.float64), torch.zeros(S, 3, 1, dtype=torch.float64))
    df = pd.DataFrame({"rank": 1, "init_seed": range(S), "output_moment_meanfield": share["output_moment_meanfield"]})
    full, loo = rs._seed_averages(df, "output_moment_meanfield", True)

    def u_stat(idx):
        pairs = [(s, t) for s in idx for t in idx if s != t]
        return np.mean([float((W[s] * W[t]).sum()) / 3 for s, t in pairs])

    assert full.iloc[0] == pytest.approx(u_stat(range(S)), rel=1e-12)
    for s in range(S):
        assert loo[0, s] == pytest.approx(u_stat([t for t in range(S) if t != s]), rel=1e-12)


def test_jackknife_interval_on_known_power_law():
    rng = np.random.default_rng(0)
    ranks, S, k = np.array([1, 2, 4, 8, 16, 32, 64]), 10, -0.7
    rows = [{"optimizer": "adam", "scaling": "rslora", "step": 1, "rank": r, "init_seed": s,
             "output_moment": r**k * math.exp(0.2 * rng.standard_normal()), "output_moment_expected": r**k}
            for r in ranks for s in range(S)]
    row = rs.fitted_slopes(pd.DataFrame(rows), measures=("output_moment",)).iloc[0]
    assert row.slope_low < k < row.slope_high and 0 < row.slope_se < 0.1
    assert row.expected_slope == pytest.approx(k) and row.n_init_seeds == S and row.verdict == "collapse"
    # The same noise at every rank moves no slope: the interval shrinks to a point.
    rows = [{**r, "output_moment": r["rank"] ** k * (1 + 0.1 * r["init_seed"])} for r in rows]
    row = rs.fitted_slopes(pd.DataFrame(rows), measures=("output_moment",)).iloc[0]
    assert row.slope == pytest.approx(k) and row.slope_se == pytest.approx(0, abs=1e-12)


def test_verdict():
    assert rs.verdict(-0.1, 0.2, 0.25) == "flat"
    assert rs.verdict(-0.1, 0.3, 0.25) == "inconclusive"
    assert rs.verdict(-1.1, -0.9, 0.25) == "collapse"
    assert rs.verdict(0.9, 1.1, 0.25) == "explode"
    assert rs.verdict(float("nan"), 0.0, 0.25) == "inconclusive"


def test_slopes_table(slopes):
    assert set(slopes.optimizer) == {"adam", "sgd"}
    assert (slopes.slope_low <= slopes.slope).all() and (slopes.slope <= slopes.slope_high).all()
    assert (slopes.confidence == 0.95).all() and (slopes.n_init_seeds == SMALL["n_init_seeds"]).all()
    assert set(slopes[slopes.primary].measure) == set(rs.PRIMARY_MEASURES)
    assert (slopes[slopes.primary].optimizer == "adam").all()
    tol = slopes.set_index("measure").flat_tolerance
    assert (tol["param_grad_norm"] == rs.FLAT_TOLERANCE / 2).all() and (tol["output_moment"] == rs.FLAT_TOLERANCE).all()
    # An aggregated table gives the same slopes, without an interval.
    agg = rs.fitted_slopes(rs.aggregate(pd.concat([rs.simulate(RANKS, optimizer="adam", **SMALL)])))
    adam = slopes[slopes.optimizer == "adam"].reset_index(drop=True)
    np.testing.assert_allclose(agg.slope, adam.slope, rtol=1e-9)
    assert agg.slope_low.isna().all()


def test_deterministic(adam):
    pd.testing.assert_frame_equal(rs.simulate(RANKS, optimizer="adam", per_seed=True, **SMALL), adam)
    other = rs.simulate(RANKS, optimizer="adam", per_seed=True, **{**SMALL, "seed": 1})
    assert not np.allclose(other.output_moment, adam.output_moment)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_matches_autograd_and_torch_optim(optimizer):
    """simulate's hand-written updates and measures equal torch autograd + torch.optim on one adapter."""
    r, steps, lr, alpha, n, seed = 8, 3, 1e-3, 16.0, 64, 3
    df = rs.simulate([r], scalings=("rslora",), d_in=D, d_out=D, alpha=alpha, steps=(steps,), lr=lr,
                     n_inputs=n, n_init_seeds=1, optimizer=optimizer, seed=seed)
    X, G = rs.training_data(n, D, D, seed)
    A = torch.nn.Parameter(rs.init_lora_A(r, D, rs._generator(seed, 1, r, 0)))
    B = torch.nn.Parameter(torch.zeros(D, r, dtype=torch.float64))
    gamma = alpha / math.sqrt(r)
    opt = torch.optim.SGD([A, B], lr=lr) if optimizer == "sgd" else torch.optim.Adam([A, B], lr=lr)
    for k in range(steps + 1):
        opt.zero_grad()
        ((gamma * X @ A.T @ B.T) * G).sum().div(n).backward()
        if k < steps:
            opt.step()
    with torch.no_grad():
        W = gamma * B @ A
        x, g = torch.randn(20000, D, dtype=torch.float64), torch.randn(20000, D, dtype=torch.float64)
        mc_out, mc_in = (x @ W.T).pow(2).mean().item(), (g @ W).pow(2).mean().item()
        grad_norm = (A.grad.norm() + B.grad.norm()).item() / 2
    row = df[df.step == steps].iloc[0]
    assert row.output_moment == pytest.approx(W.pow(2).sum().item() / D, rel=1e-9)
    assert row.param_grad_norm == pytest.approx(grad_norm, rel=1e-9)
    # The exact moments are the expectations over fresh unit-variance inputs and output gradients.
    assert row.output_moment == pytest.approx(mc_out, rel=0.05)
    assert row.input_grad_moment == pytest.approx(mc_in, rel=0.05)


def test_plot_writes_pdf_and_png(adam, sgd, tmp_path):
    for df, name in ((adam, "rank_stability_adam"), (sgd, "rank_stability_sgd")):
        paths = plot_rank_stability(rs.aggregate(df), tmp_path / "sub" / name)
        assert [p.suffix for p in paths] == [".pdf", ".png"]
        assert paths[0].read_bytes()[:5] == b"%PDF-" and paths[0].stat().st_size > 1000
        assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].stat().st_size > 1000


def test_cli_writes_primary_and_contrast(tmp_path, capsys):
    from repro.laws.cli import cmd_rank_stability

    cfg = yaml.safe_load((Path(__file__).parents[1] / "presets" / "test.yaml").read_text())
    cfg["laws"]["rank_stability"] = dict(ranks=[1, 4, 16], d_in=64, d_out=64, steps=[1, 2], n_inputs=64, seeds=3,
                                         optimizers=["sgd", "adam"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = argparse.Namespace(configfile=path, out=tmp_path / "m.csv", slopes_out=tmp_path / "s.csv")
    assert cmd_rank_stability(args) == 0
    moments, sl = pd.read_csv(args.out), pd.read_csv(args.slopes_out)
    assert set(moments.groupby("optimizer").optimizer_role.first().items()) == {("adam", "primary"), ("sgd", "contrast")}
    assert {"slope", "slope_low", "slope_high", "paper_claim", "verdict", "optimizer_role", "primary"} <= set(sl)
    assert set(sl[sl.optimizer_role == "primary"].optimizer) == {"adam"}
    assert "primary (adam)" in capsys.readouterr().out

    # Every rank-stability number the paper's rsLoRA section quotes is written by `repro laws numbers`.
    from repro.laws.numbers import rank_stability_macros
    from repro.report.numbers import Macros

    m = Macros("repro laws numbers")
    rank_stability_macros(m, sl)
    tex = (Path(__file__).parents[1] / "paper" / "sections" / "rslora.tex").read_text()
    body = tex[tex.index(r"\newcommand{\rankstabrows}"):tex.index(r"\paragraph{Results.}")]
    rows = re.findall(r"\\rankstabrows\{.*\}\{(\w+)\}", tex)
    assert rows == ["Lora", "Rslora", "Constant"]
    text = tex + "".join(body.replace("#2", r) for r in rows)
    used = {v for v in re.findall(r"\\val\{(RankStab\w+)\}", text)}
    used |= {c + suffix for c in re.findall(r"\\rankstabci\{(RankStab\w+)\}", text)
             for suffix in ("Slope", "Low", "High")}
    assert len(used) > 40 and sorted(used - set(m.items)) == []
    assert m.items["RankStabPrimaryOptimizer"] == "Adam" and m.items["RankStabReproduced"] in ("yes", "no")
