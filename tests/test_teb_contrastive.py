"""Conditional InfoNCE bound: the AR task with the true density as critic, tempering, and the
negative samplers against each task's generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from repro.config import section_defaults
from repro.teb.contrastive import (
    ar_conditional_log_density,
    choose_tau,
    infonce_bound,
    needle_history_colour,
    sample_marginal_negatives,
    sample_negatives,
    temper,
    tempered_bound,
)
from repro.teb.exact import SINE_MULTIPLIERS, ar_window_cov, digits_next_label_probs, exact_te
from repro.teb.runs import task_specs
from repro.teb.tasks import PATCH_COLOURS, make_needle_split, make_sines_split, make_task

torch.set_num_threads(1)

# k = l = H = 2 so that a misaligned window layout (time order, x/y interleaving) would show.
AR = dict(kind="ar", a=0.8, b=0.3, c=0.5, sigma_x=1.0, sigma_y=0.5, source_lags=2, target_lags=2, horizon=2)
TE = exact_te(0.8, 0.3, 0.5, 1.0, 0.5, k=2, l=2, H=2)


def gaussian_windows(spec: dict, n: int, rng: np.random.Generator) -> dict:
    """Independent windows from the stationary joint law (the split's sliding windows overlap, which
    would make the standard errors too small)."""
    cov, idx = ar_window_cov(*(spec[q] for q in ("a", "b", "c", "sigma_x", "sigma_y")),
                             spec["source_lags"], spec["target_lags"], spec["horizon"])
    z = rng.standard_normal((n, len(cov))) @ np.linalg.cholesky(cov).T
    return {key: torch.tensor(z[:, idx[key]], dtype=torch.float32) for key in ("x", "y", "target")}


@pytest.fixture(scope="module")
def ar_bounds():
    rng = np.random.default_rng(0)
    w = gaussian_windows(AR, 20000, rng)
    pos = ar_conditional_log_density(AR, w["y"], w["x"], w["target"])
    out = {}
    for K in (2, 16, 256):
        neg = sample_negatives("ar", w, AR, None, K - 1, rng)
        out[K] = infonce_bound(pos, ar_conditional_log_density(AR, w["y"], neg, w["target"]))
    marg = sample_marginal_negatives(w, AR, 255, rng)
    out["marginal"] = infonce_bound(pos, ar_conditional_log_density(AR, w["y"], marg, w["target"]))
    return out


# ---------------------------------------------------------------------------------------- the bound


def test_infonce_bound_is_the_stable_log_mean_ratio():
    b = infonce_bound(torch.tensor([math.log(2.0)], dtype=torch.float64),
                      torch.tensor([[0.0, 0.0, math.log(4.0)]], dtype=torch.float64))
    assert b.values.item() == pytest.approx(0.0, abs=1e-15)  # 2 / ((2 + 1 + 1 + 4) / 4)
    assert b.log_k == pytest.approx(math.log(4))
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=50) * 3, rng.normal(size=(50, 9)) * 3
    want = pos - np.log(np.exp(np.concatenate([pos[:, None], neg], 1)).mean(1))
    got = infonce_bound(pos, neg)
    assert np.allclose(got.values.numpy(), want, atol=1e-12)
    assert got.mean == pytest.approx(want.mean()) and got.se == pytest.approx(want.std(ddof=1) / math.sqrt(50))
    big = infonce_bound(pos + 5000.0, neg + 5000.0)  # no overflow: logsumexp
    assert np.allclose(big.values.numpy(), want, atol=1e-9)
    top = infonce_bound(torch.zeros(3), torch.full((3, 7), -math.inf))
    assert torch.allclose(top.values, torch.full((3,), math.log(8), dtype=torch.float64))


def test_constant_critic_and_tau_zero_give_exactly_zero():
    rng = np.random.default_rng(2)
    assert torch.all(infonce_bound(torch.full((5,), 3.7), torch.full((5, 4), 3.7)).values == 0)
    pos, neg = torch.tensor(rng.normal(size=40)), torch.tensor(rng.normal(size=(40, 15)))
    neg[0, 0] = -math.inf  # an impossible negative must not turn tau = 0 into nan
    zero = temper(pos, neg, (0.0,))[0.0]
    assert torch.all(zero.values == 0) and zero.mean == 0.0


def test_true_critic_bound_rises_with_k_towards_the_exact_te(ar_bounds):
    b2, b16, b256 = ar_bounds[2], ar_bounds[16], ar_bounds[256]
    assert b2.mean + 4 * b2.se < b16.mean and b16.mean + 3 * b16.se < b256.mean
    assert abs(b256.mean - TE) < 4 * b256.se, (b256.mean, b256.se, TE)
    assert b2.mean < math.log(2) and b16.mean < TE
    for K in (2, 16, 256):
        assert ar_bounds[K].values.max() <= math.log(K) + 1e-12


def test_marginal_negatives_overshoot_the_exact_te(ar_bounds):
    """Negatives that ignore the history do not give a bound on the TE: the control must fail."""
    m = ar_bounds["marginal"]
    assert m.mean - TE > 10 * m.se and m.mean > ar_bounds[256].mean + 0.1
    assert m.values.max() <= math.log(256) + 1e-12


def test_tau_is_chosen_on_validation_and_repairs_an_overconfident_critic():
    rng = np.random.default_rng(3)

    def scores(n, K=64, scale=1.0):
        w = gaussian_windows(AR, n, rng)
        neg = sample_negatives("ar", w, AR, None, K - 1, rng)
        return (scale * ar_conditional_log_density(AR, w["y"], w["x"], w["target"]),
                scale * ar_conditional_log_density(AR, w["y"], neg, w["target"]))

    val, test = scores(4000), scores(4000)
    tau, bounds = choose_tau(*val)
    assert tau >= 0.5 and bounds[tau].mean == max(b.mean for b in bounds.values())
    assert bounds[0.0].mean == 0.0
    # a critic 5x too sharp: tau near 1/5 recovers the true critic's value on fresh test windows
    val5, test5 = scores(4000, scale=5.0), scores(4000, scale=5.0)
    tau5, b5 = tempered_bound(*val5, *test5)
    assert 0.1 <= tau5 <= 0.4
    assert b5.mean > temper(*test5, (1.0,))[1.0].mean + 0.05
    assert abs(b5.mean - temper(*test, (1.0,))[1.0].mean) < 0.03
    # a critic that knows nothing: the chosen tau keeps the bound at (about) 0, never far below
    noise_pos, noise_neg = torch.tensor(rng.normal(size=2000)), torch.tensor(rng.normal(size=(2000, 63)))
    tau0, b0 = tempered_bound(noise_pos, noise_neg, torch.tensor(rng.normal(size=2000)),
                              torch.tensor(rng.normal(size=(2000, 63))))
    assert tau0 <= 0.01 and abs(b0.mean) < 0.01


# ---------------------------------------------------------------------------------------- samplers


def test_ar_negatives_have_the_generators_conditional_law():
    """Regression of x on y in a real make_ar split against the same regression over the negatives."""
    spec = {**AR, "source_lags": 3, "target_lags": 2, "horizon": 1, "n_train": 100, "n_val": 100, "n_test": 20000}
    splits, _ = make_task(spec, 0)
    test = splits["test"]
    x, y = test["x"].double().numpy(), test["y"].double().numpy()
    coef, *_ = np.linalg.lstsq(y, x, rcond=None)
    resid = np.cov((x - y @ coef).T)
    neg = sample_negatives("ar", test, spec, None, 16, np.random.default_rng(4))
    assert neg.shape == (20000, 16, 3) and neg.dtype == test["x"].dtype
    xn = neg.double().numpy().reshape(-1, 3)
    yn = np.repeat(y, 16, axis=0)
    coef_n, *_ = np.linalg.lstsq(yn, xn, rcond=None)
    resid_n = np.cov((xn - yn @ coef_n).T)
    assert np.abs(coef_n - coef).max() < 0.05, (coef, coef_n)
    assert np.abs(resid_n - resid).max() < 0.05 * resid.max(), (resid, resid_n)
    # the marginal sampler ignores y entirely
    marg = sample_marginal_negatives(test, spec, 16, np.random.default_rng(5)).double().numpy().reshape(-1, 3)
    coef_m, *_ = np.linalg.lstsq(yn, marg, rcond=None)
    assert np.abs(coef_m).max() < 0.02 and np.abs(coef).max() > 0.2


def test_sines_negatives_are_draws_of_the_generators_source():
    spec = {**section_defaults("teb")["tasks"]["sines"], "history": 10, "horizon": 1, "label_noise": 0.0}
    n = 4000
    real = make_sines_split(n, spec, np.random.default_rng(6))
    neg = sample_negatives("sines", real, spec, None, 5, np.random.default_rng(7))
    assert neg.shape == (n, 5, spec["source_lags"], 5) and neg.dtype == real["x"].dtype
    M = np.asarray(SINE_MULTIPLIERS)

    def event_freqs(x):  # [m, k, 5] noise-free labels -> (no change, each (u, v)) frequencies
        idx = np.abs(x[..., None] - M).argmin(-1)
        ch = idx[:, 0] != idx[:, -1]
        comp = ch.argmax(1)
        code = np.where(ch.any(1), 1 + 5 * idx[np.arange(len(x)), 0, comp] + idx[np.arange(len(x)), -1, comp], 0)
        assert (np.sort(idx[:, 0], axis=1) == np.arange(5)).all()  # the earlier step is a permutation
        return np.bincount(code, minlength=26) / len(x)

    p = spec["switch_prob"]
    f_neg = event_freqs(neg.numpy().reshape(-1, spec["source_lags"], 5))
    want = np.zeros(26)
    want[0] = 1 - 4 * p / 5
    for u in range(5):
        for v in range(5):
            if u != v:
                want[1 + 5 * u + v] = p / 25
    assert np.abs(f_neg - want).max() < 0.015
    assert np.abs(event_freqs(real["x"].numpy()) - want).max() < 0.02
    # with noise: every label coordinate has the generator's marginal
    noisy = {**spec, "label_noise": 0.15}
    real_n = make_sines_split(n, noisy, np.random.default_rng(8))
    neg_n = sample_negatives("sines", real_n, noisy, None, 2, np.random.default_rng(9)).numpy()
    for step in (0, -1):
        assert stats.ks_2samp(real_n["x"][:, step].numpy().ravel(), neg_n[:, :, step].ravel()).pvalue > 1e-3


def test_digits_negatives_keep_the_history_digit_and_redraw_the_next():
    teb = section_defaults("teb")
    spec = {**task_specs(teb)["digits"], "image_size": 8, "n_train": 100, "n_val": 100, "n_test": 2000}
    splits, info = make_task(spec, 0)
    test = splits["test"]
    neg = sample_negatives("digits", test, spec, info, 50, np.random.default_rng(10))
    assert neg.shape == (2000, 50, 2) and neg.dtype == torch.long
    assert torch.equal(neg[:, :, 0], test["x"][:, None, 0].expand(-1, 50))
    c = test["x"][:, 0].numpy()
    P = digits_next_label_probs(info["pool_label_counts"]["test"], spec["switch_prob"])
    obs = np.zeros((10, 10))
    np.add.at(obs, (np.repeat(c, 50), neg[:, :, 1].numpy().ravel()), 1)
    expected = np.bincount(c, minlength=10)[:, None] * 50 * P
    m = expected > 0
    assert obs[~m].sum() == 0
    assert stats.chi2.sf((((obs - expected) ** 2)[m] / expected[m]).sum(), m.sum() - 10) > 1e-3
    # switching draws come from the test pool's counts, not the training pool's
    P_train = digits_next_label_probs(info["pool_label_counts"]["train"], spec["switch_prob"])
    exp_train = np.bincount(c, minlength=10)[:, None] * 50 * P_train
    assert stats.chi2.sf((((obs - exp_train) ** 2)[m] / exp_train[m]).sum(), m.sum() - 10) < 1e-6
    one = {**test, "x": test["x"][:, -1:]}
    with pytest.raises(ValueError, match="history_labels"):
        sample_negatives("digits", one, {**spec, "source_lags": 1}, info, 4, np.random.default_rng(0))
    neg1 = sample_negatives("digits", one, {**spec, "source_lags": 1}, info, 4, np.random.default_rng(0),
                            history_labels=c)
    assert neg1.shape == (2000, 4, 1)


def _needle_pixels(x: np.ndarray, dis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(needle pixel [3], its slot) of one source window: the pixel the history's copies do not match."""
    rest = [tuple(r) for r in dis]
    for slot, r in enumerate(map(tuple, x)):
        if r in rest:
            rest.remove(r)
        else:
            return np.array(r), slot
    raise AssertionError("no needle: the source equals the history's distractors")


def test_needle_negatives_follow_the_colour_switch_and_keep_the_distractors():
    spec = {**section_defaults("teb")["tasks"]["needle"], "image_size": 8}
    l, nd, p, n, K = spec["history"], spec["distractors"], spec["switch_prob"], 400, 100
    real = make_needle_split(n, spec, np.random.default_rng(11))
    colour = needle_history_colour(real["y"], l)
    assert np.array_equal(colour == real["colour"].numpy(), ~real["switch"].numpy())
    neg = sample_negatives("needle", real, spec, None, K, np.random.default_rng(12))
    assert neg.shape == (n, K, nd + 1, 3, 8, 8) and neg.dtype == torch.uint8
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1, 1] = True
    assert (neg[..., ~mask] == 0).all()
    pix = neg[..., 1, 1].numpy().astype(int)  # [n, K, nd + 1, 3]
    dis = real["y"][:, l:, :, 1, 1].numpy().astype(int)
    same, slots, values = 0, np.zeros(nd + 1), []
    other = np.zeros(len(PATCH_COLOURS))
    for i in range(n):
        for j in range(K):
            needle, slot = _needle_pixels(pix[i, j], dis[i])
            slots[slot] += 1
            values.append(needle / 255)
            col = int(np.nonzero((PATCH_COLOURS == np.round(needle / 255)).all(1))[0][0])
            if col == colour[i]:
                same += 1
            else:
                other[(col - colour[i]) % len(PATCH_COLOURS)] += 1
    total = n * K
    # P(same colour) = 1 - p, each other colour p / 6, uniform slot
    assert abs(same / total - (1 - p)) < 4 * math.sqrt(p * (1 - p) / total)
    assert stats.chisquare(other[1:]).pvalue > 1e-3 and other[0] == 0
    assert stats.chisquare(slots).pvalue > 1e-3
    v = np.array(values)
    dev = np.abs(v - np.round(v))  # one-sided noise U(0, label_noise) from the channel's level
    assert dev.max() <= spec["label_noise"] + 1 / 255 and abs(dev.mean() - spec["label_noise"] / 2) < 0.01
