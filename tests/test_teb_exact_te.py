"""Exact TE of the event tasks (sines, digits, needle) against independent brute-force computations.

Each reference below is written from the generator's description alone -- an explicit joint table,
an enumeration of every hypothesis, or the generator's own output -- and shares no code with
repro.teb.exact beyond the palette constants.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from repro.config import section_defaults
from repro.teb import exact as ex
from repro.teb.runs import task_specs
from repro.teb.tasks import (
    PATCH_COLOURS,
    SINE_MULTIPLIERS,
    make_needle_split,
    make_sines_split,
    make_task,
)

torch.set_num_threads(1)


def cond_mi(joint: np.ndarray) -> float:
    """I(X; F | H) in nats of a joint table p[h, x, f]."""
    p = joint / joint.sum()
    ph = p.sum(axis=(1, 2), keepdims=True)
    phx = p.sum(axis=2, keepdims=True)
    phf = p.sum(axis=1, keepdims=True)
    m = p > 0
    return float((p[m] * np.log((p * ph)[m] / (phx * phf)[m])).sum())


def h2(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log(p) - (1 - p) * math.log(1 - p)


# ---------------------------------------------------------------------------------------- digits


def digits_brute_te(labels: list[int], p: float, k: int = 2) -> float:
    """Enumerate (first image, next image) of a pool of distinct images: H = the first image, X = the k
    labels (k-1 copies of the first's label, then the next's), F = the next image (its frame)."""
    lab = np.array(labels)
    P = len(lab)
    xs = list(itertools.product(range(10), repeat=k))
    joint = np.zeros((P, len(xs), P))
    for j in range(P):
        others = np.nonzero(lab != lab[j])[0]
        for f in range(P):
            pf = (1 - p) * (f == j) + (p / len(others) if f in others else 0.0)
            if pf:
                joint[j, xs.index((lab[j],) * (k - 1) + (lab[f],)), f] += pf / P
    return cond_mi(joint)


@pytest.mark.parametrize("labels,p", [([0, 0, 1, 2, 2, 2], 0.5), ([3, 1, 1, 1, 7, 7, 7, 7, 9], 0.3),
                                      ([0, 1], 0.9), ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9], 1.0),
                                      ([4, 4, 5], 0.0)])
def test_digits_exact_te_equals_the_enumerated_joint(labels, p):
    counts = np.bincount(labels, minlength=10)
    te = ex.exact_te_digits(counts, p)
    assert te == pytest.approx(digits_brute_te(labels, p), abs=1e-12)
    assert te == pytest.approx(ex.source_entropy_digits(counts, p), abs=1e-12)
    if len(set(labels)) < 10 and p > 0:
        # a uniform draw over the 10 labels would give another value: the pool's counts matter
        assert abs(te - (h2(p) + p * math.log(9))) > 1e-3


def test_digits_te_increases_with_switch_prob_up_to_uniform_next_label():
    counts = [5, 9, 3, 7, 7, 2, 8, 6, 4, 9]
    ps = np.linspace(0, 0.85, 18)  # H(L | c) grows while P(L = c) = 1 - p is above the others' share
    te = [ex.exact_te_digits(counts, p) for p in ps]
    assert te[0] == 0.0 and np.all(np.diff(te) > 0)
    assert max(te) <= math.log(10)


def test_make_digits_pool_label_counts_are_the_pool_the_split_draws_from():
    teb = section_defaults("teb")
    spec = {**task_specs(teb)["digits"], "image_size": 8, "n_train": 100, "n_val": 100, "n_test": 3000}
    splits, info = make_task(spec, 0)
    counts = info["pool_label_counts"]
    assert sum(map(sum, counts.values())) == info["n_images"]
    test = splits["test"]
    c, nxt = test["x"][:, 0].numpy(), test["label"].numpy()
    n = np.asarray(counts["test"], float)
    # first labels ~ n_c / N ...
    obs = np.bincount(c, minlength=10)
    assert stats.chisquare(obs, len(c) * n / n.sum()).pvalue > 1e-3
    # ... and (history label, next label) pairs ~ P(c) P(L_next | c) of the formula
    P = ex.digits_next_label_probs(n, spec["switch_prob"])
    pairs = np.zeros((10, 10))
    np.add.at(pairs, (c, nxt), 1)
    expected = obs[:, None] * P
    m = expected > 0
    assert pairs[~m].sum() == 0
    dof = m.sum() - 10
    assert stats.chi2.sf((((pairs - expected) ** 2)[m] / expected[m]).sum(), dof) > 1e-3
    got = ex.exact_te_for_task("digits", spec, info)
    assert got["exact_te"] == pytest.approx(ex.exact_te_digits(counts["test"], spec["switch_prob"]))
    assert got["exact_te"] != pytest.approx(ex.exact_te_digits(counts["train"], spec["switch_prob"]), abs=1e-4)


# ---------------------------------------------------------------------------------------- needle


def channel_table(noise: float, levels: int, grid: int = 400_001) -> dict[int, np.ndarray]:
    """P(stored value | channel level) by integrating the one-sided uniform noise on a fine grid."""
    t = (np.arange(grid) + 0.5) / grid * noise
    out = {}
    for level, v in ((0, t), (1, 1 - t)):
        out[level] = np.bincount(np.round(np.clip(v, 0, 1) * levels).astype(int), minlength=levels + 1) / grid
    return out


def needle_brute_te(p: float, noise: float, levels: int) -> float:
    """Joint table p[history colour, stored needle pixel (3 channels), next colour]."""
    tab = channel_table(noise, levels)
    ncol = len(PATCH_COLOURS)
    pal = PATCH_COLOURS.astype(int)
    L = levels + 1
    joint = np.zeros((ncol, L**3, ncol))
    for c in range(ncol):
        for n in range(ncol):
            prior = (1 - p) if n == c else p / (ncol - 1)
            lik = np.einsum("i,j,k->ijk", tab[pal[n, 0]], tab[pal[n, 1]], tab[pal[n, 2]]).ravel()
            joint[c, :, n] = prior * lik / ncol
    return cond_mi(joint)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("noise", [0.0, 0.25, 0.4, 0.49])
def test_needle_below_half_noise_is_the_full_colour_entropy(p, noise):
    want = h2(p) + p * math.log(6)
    spec = {"switch_prob": p, "label_noise": noise}
    assert ex.exact_te_needle(spec) == pytest.approx(want, abs=1e-12)
    assert ex.exact_te_needle(spec, levels=None) == pytest.approx(want, abs=1e-12)
    assert ex.source_entropy_needle(p) == pytest.approx(want, abs=1e-12)
    assert ex.exact_te_needle(spec, levels=15) == pytest.approx(needle_brute_te(p, noise, 15), abs=1e-9)


@pytest.mark.parametrize("p,noise", [(0.5, 0.6), (0.3, 0.75), (0.5, 0.95), (0.8, 1.3)])
def test_needle_overlapping_noise_equals_the_enumerated_pixel_table(p, noise):
    spec = {"switch_prob": p, "label_noise": noise}
    te = ex.exact_te_needle(spec, levels=15)
    assert te == pytest.approx(needle_brute_te(p, noise, 15), abs=2e-4)
    assert 0 < te < ex.source_entropy_needle(p) - 0.05


def test_needle_te_against_the_generators_own_pixels():
    """Cross-entropy of the exact colour posterior on make_needle_split's stored pixels (noise 0.6)."""
    p, noise, n = 0.5, 0.6, 12000
    # 4-pixel frames: the generator's cost is the frames, the test only needs pixel [1, 1] and the colour
    spec = {**section_defaults("teb")["tasks"]["needle"], "image_size": 4, "label_noise": noise, "switch_prob": p}
    d = make_needle_split(n, spec, np.random.default_rng(5))
    l, nd = spec["history"], spec["distractors"]
    src = d["x"][:, :, :, 1, 1].numpy().astype(int)  # [n, nd + 1, 3]
    dis = d["y"][:, l:, :, 1, 1].numpy().astype(int)
    # the needle is the source's pixels minus the history's copies, as multisets
    needle = np.empty((n, 3), int)
    for i in range(n):
        rest = [tuple(r) for r in dis[i]]
        for r in map(tuple, src[i]):
            if r in rest:
                rest.remove(r)
            else:
                needle[i] = r
    assert nd == 5
    # the history colour: channel pattern at the brightest history pixel
    f = d["y"][:, :l].numpy().astype(float).transpose(0, 1, 3, 4, 2).reshape(n, -1, 3)
    rgb = f[np.arange(n), f.sum(-1).argmax(1)]
    pattern = rgb > (2 / 3) * rgb.max(1, keepdims=True)
    colour = (pattern[:, None] == (PATCH_COLOURS > 0.5)[None]).all(-1).argmax(1)
    nxt = d["colour"].numpy()
    assert np.array_equal(colour == nxt, ~d["switch"].numpy())
    tab = channel_table(noise, 255)
    pal = PATCH_COLOURS.astype(int)
    lik = np.ones((n, 7))
    for ch in range(3):
        lik *= np.stack([tab[pal[m, ch]][needle[:, ch]] for m in range(7)], axis=1)
    prior = np.where(np.arange(7)[None] == colour[:, None], 1 - p, p / 6)
    post = prior * lik / (prior * lik).sum(1, keepdims=True)
    nll = -np.log(post[np.arange(n), nxt])
    mc = ex.source_entropy_needle(p) - nll.mean()
    se = nll.std() / math.sqrt(n)
    te = ex.exact_te_needle(spec)
    assert abs(mc - te) < 4 * se, (mc, se, te)
    assert abs(te - ex.exact_te_needle(spec, levels=None)) < 0.02  # quantisation barely matters


def test_needle_te_is_monotone_in_switch_prob_and_noise():
    ps = np.linspace(0, 6 / 7, 13)  # h(p) + p ln 6 peaks at a uniform next colour, p = 6/7
    assert np.all(np.diff([ex.exact_te_needle({"switch_prob": p, "label_noise": 0.4}) for p in ps]) > 0)
    noises = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    te = [ex.exact_te_needle({"switch_prob": 0.5, "label_noise": a}, levels=None) for a in noises]
    assert np.all(np.diff(te) < 0) and te[-1] == pytest.approx(0.0, abs=1e-12)  # noise 1: pixel says nothing


# ---------------------------------------------------------------------------------------- sines


def sines_events_and_probs(p: float):
    ev = [None] + [(u, v) for u in range(5) for v in range(5) if u != v]
    probs = np.array([1 - 4 * p / 5] + [p / 25] * 20)
    return ev, probs


def clean_labels(perm, event, k: int) -> np.ndarray:
    lab = np.tile(np.asarray(SINE_MULTIPLIERS)[list(perm)], (k, 1))
    if event is not None:
        u, v = event
        lab[-1, list(perm).index(u)] = SINE_MULTIPLIERS[v]
    return lab


def sines_brute_te(p: float, noise: float, k: int = 1) -> float:
    """Exact I(X; E) by enumeration: the posterior is constant between the breakpoints M +- noise, so
    each cell's uniform noise is split into those pieces; every (permutation, event) hypothesis is
    checked explicitly. The outer permutation is the identity: the posterior sums over all of them,
    so relabelling the components changes nothing."""
    M = np.asarray(SINE_MULTIPLIERS)
    ev, probs = sines_events_and_probs(p)
    hyp = [(perm, e) for perm in itertools.permutations(range(5)) for e in range(len(ev))]
    hyp_lab = np.stack([clean_labels(perm, ev[e], k) for perm, e in hyp])  # [nH, k, 5]
    hyp_ev = np.array([e for _, e in hyp])
    bps = np.unique(np.concatenate([M - noise, M + noise]))
    h_cond = 0.0
    for e, pe in enumerate(probs):
        if pe == 0:
            continue
        lab = clean_labels(range(5), ev[e], k).ravel()
        pieces = []
        for w in lab:
            cuts = np.unique(np.concatenate([[w - noise, w + noise], bps[(bps > w - noise) & (bps < w + noise)]]))
            pieces.append([((lo + hi) / 2, (hi - lo) / (2 * noise)) for lo, hi in zip(cuts[:-1], cuts[1:])])
        for combo in itertools.product(*pieces):
            x = np.array([c[0] for c in combo]).reshape(k, 5)
            w = math.prod(c[1] for c in combo)
            ok = (np.abs(x[None] - hyp_lab) <= noise).all(axis=(1, 2))
            post = np.bincount(hyp_ev[ok], minlength=len(ev)) * probs
            post = post / post.sum()
            h_cond += pe * w * -(post[post > 0] * np.log(post[post > 0])).sum()
    return float(-(probs * np.log(probs, where=probs > 0, out=np.zeros_like(probs))).sum() - h_cond)


def closed_form_h_event(p: float) -> float:
    q = 1 - 4 * p / 5
    return -q * math.log(q) - (0 if p == 0 else 4 * p / 5 * math.log(p / 25))


def sines_spec(**kw) -> dict:
    return {**section_defaults("teb")["tasks"]["sines"], **kw}


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_sines_without_label_noise_is_the_event_entropy(k, p):
    te, se = ex.exact_te_sines(sines_spec(source_lags=k, switch_prob=p, label_noise=0.0), draws=2000)
    assert se == 0.0
    assert te == pytest.approx(closed_form_h_event(p), abs=1e-12)
    assert ex.source_entropy_sines(p) == pytest.approx(closed_form_h_event(p), abs=1e-12)


@pytest.mark.parametrize("p,noise", [(0.5, 0.15), (0.9, 0.12)])
def test_sines_monte_carlo_matches_the_enumeration(p, noise):
    te, se = ex.exact_te_sines(sines_spec(source_lags=1, switch_prob=p, label_noise=noise))
    ref = sines_brute_te(p, noise, k=1)
    assert se < 0.005
    assert abs(te - ref) < 4 * se, (te, se, ref)
    assert ref < closed_form_h_event(p) - 0.1  # the noise costs information: not the trivial value


def test_sines_posterior_is_calibrated_on_the_generators_output():
    """make_sines_split draws its hidden variables before the label noise, so the same seed with noise 0
    gives the clean labels and so every window's event; the exact posterior's cross-entropy on the real
    windows then estimates H(E | X)."""
    spec = sines_spec(history=10, horizon=1, label_noise=0.15)
    n = 20000
    noisy = make_sines_split(n, spec, np.random.default_rng(11))
    clean = make_sines_split(n, {**spec, "label_noise": 0.0}, np.random.default_rng(11))
    assert torch.equal(noisy["y"], clean["y"])
    xc = clean["x"].double().numpy()
    M = np.asarray(SINE_MULTIPLIERS)
    idx = np.abs(xc[..., None] - M).argmin(-1)  # [n, k, 5] multiplier indices
    changed = idx[:, 0] != idx[:, -1]  # [n, 5]
    assert np.array_equal(changed.any(1), clean["switch"].numpy()) and changed.sum(1).max() <= 1
    comp = changed.argmax(1)
    u, v = idx[np.arange(n), 0, comp], idx[np.arange(n), -1, comp]
    table = ex.sines_events(5)
    code = {tuple(r): e for e, r in enumerate(table)}
    e_true = np.array([code[(a, b)] if s else 0 for a, b, s in zip(u, v, changed.any(1))])
    post = ex.sines_event_posterior(noisy["x"].numpy(), 0.15, spec["switch_prob"])
    assert (post[np.arange(n), e_true] > 0).all()
    nll = -np.log(post[np.arange(n), e_true])
    mc, mc_se = ex.source_entropy_sines(spec["switch_prob"]) - nll.mean(), nll.std() / math.sqrt(n)
    te, se = ex.exact_te_sines(spec)
    assert abs(mc - te) < 4 * math.hypot(mc_se, se), (mc, mc_se, te, se)
    # the posterior is calibrated: the event frequencies match the mean posterior
    assert np.abs(np.bincount(e_true, minlength=21) / n - post.mean(0)).max() < 0.01


def test_sines_te_orders_and_bounds():
    te = {}
    for k, a, p in [(1, 0.15, 0.5), (2, 0.15, 0.5), (5, 0.15, 0.5), (5, 0.3, 0.5), (5, 0.15, 0.2), (5, 0.15, 0.9)]:
        te[k, a, p] = ex.exact_te_sines(sines_spec(source_lags=k, label_noise=a, switch_prob=p), max_se=0.01)
    gap = lambda x, y: x[0] - y[0] - 4 * math.hypot(x[1], y[1])  # noqa: E731
    # earlier label steps pin the old multipliers: more source lags, more TE
    assert gap(te[2, 0.15, 0.5], te[1, 0.15, 0.5]) > 0 and gap(te[5, 0.15, 0.5], te[2, 0.15, 0.5]) > 0
    assert gap(te[5, 0.15, 0.5], te[5, 0.3, 0.5]) > 0  # more noise, less TE
    assert gap(te[5, 0.15, 0.5], te[5, 0.15, 0.2]) > 0 and gap(te[5, 0.15, 0.9], te[5, 0.15, 0.5]) > 0
    for (_, _, p), (v, _) in te.items():
        assert 0 < v < ex.source_entropy_sines(p)


def test_sines_is_deterministic_and_refuses_a_short_history():
    spec = sines_spec()
    assert ex.exact_te_sines(spec, max_se=0.01) == ex.exact_te_sines(spec, max_se=0.01)
    with pytest.raises(ValueError, match="history >= 10"):
        ex.exact_te_sines(sines_spec(history=6))


# ---------------------------------------------------------------------------------------- dispatcher


def test_dispatcher_covers_every_kind_at_the_default_config():
    teb = section_defaults("teb")
    specs = task_specs(teb)
    for spec in specs.values():
        if spec["kind"] == "ar":
            got = ex.exact_te_for_task("ar", spec)
            assert got["exact_te"] == ex.exact_te(spec["a"], spec["b"], spec["c"], spec["sigma_x"], spec["sigma_y"],
                                                  spec["source_lags"], spec["target_lags"], spec["horizon"])
            assert got["source_entropy"] == math.inf
    sines = ex.exact_te_for_task("sines", specs["sines"], {"multipliers": list(SINE_MULTIPLIERS)})
    assert sines["exact_te_se"] < 0.005 and 0 < sines["exact_te"] < sines["source_entropy"]
    needle = ex.exact_te_for_task("needle", specs["needle"])
    assert needle["exact_te"] == pytest.approx(math.log(2) + 0.5 * math.log(6)) == needle["source_entropy"]
    with pytest.raises(ValueError, match="pool_label_counts"):
        ex.exact_te_for_task("digits", specs["digits"], {})
    with pytest.raises(ValueError, match="unknown task kind"):
        ex.exact_te_for_task("nope", {})
