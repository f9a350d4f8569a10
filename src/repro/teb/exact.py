"""Exact transfer entropy of linear-Gaussian VAR(1) streams.

TE(k, l, H) = I(X_{t-k+1..t}; Y_{t+1..t+H} | Y_{t-l+1..t}) for the coupled pair
X_t = a X_{t-1} + eps_t, Y_t = b Y_{t-1} + c X_{t-1} + eta_t. Everything is Gaussian, so the TE is
half the log-ratio of two conditional (Schur-complement) covariance determinants, built from the
stationary autocovariances (discrete Lyapunov equation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solve_discrete_lyapunov


def _check_lags(k, l, H):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"source lags k must be an integer >= 1, got {k!r}")
    if l != math.inf and (not isinstance(l, (int, np.integer)) or l < 1):
        raise ValueError(f"target lags l must be an integer >= 1 or inf, got {l!r}")
    if not isinstance(H, (int, np.integer)) or H < 1:
        raise ValueError(f"horizon H must be an integer >= 1, got {H!r}")


def check_ar_params(a: float, b: float, c: float, sigma_x: float, sigma_y: float) -> None:
    for name, v in (("a", a), ("b", b), ("c", c), ("sigma_x", sigma_x), ("sigma_y", sigma_y)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if abs(a) >= 1:
        raise ValueError(f"|a| must be < 1 for a stationary source, got a={a}")
    if abs(b) >= 1:
        raise ValueError(f"|b| must be < 1 for a stationary target, got b={b}")
    if sigma_x <= 0:
        raise ValueError(f"sigma_x (source noise standard deviation) must be > 0, got {sigma_x}")
    if sigma_y <= 0:
        raise ValueError(f"sigma_y (target noise standard deviation) must be > 0, got {sigma_y}")


def ar_matrices(a, b, c, sigma_x, sigma_y):
    """VAR(1) transition and noise covariance of the state (X_t, Y_t)."""
    A = np.array([[a, 0.0], [c, b]])
    Q = np.diag([sigma_x**2, sigma_y**2])
    return A, Q


def var1_window_cov(A: np.ndarray, Q: np.ndarray, length: int) -> np.ndarray:
    """Covariance of the stacked states (Z_{s}, Z_{s+1}, ..., Z_{s+length-1}) of a stationary VAR(1)."""
    if np.max(np.abs(np.linalg.eigvals(A))) >= 1:
        raise ValueError("the VAR(1) transition has an eigenvalue of modulus >= 1 (not stationary)")
    n = A.shape[0]
    sigma0 = solve_discrete_lyapunov(A, Q)
    gammas = [sigma0]  # gammas[h] = Cov(Z_{t+h}, Z_t) = A^h Sigma0
    for _ in range(1, length):
        gammas.append(A @ gammas[-1])
    cov = np.empty((n * length, n * length))
    for i in range(length):
        for j in range(length):
            block = gammas[i - j] if i >= j else gammas[j - i].T
            cov[i * n:(i + 1) * n, j * n:(j + 1) * n] = block
    return cov


def _cond_logdet(cov: np.ndarray, target: list[int], given: list[int]) -> float:
    s_tt = cov[np.ix_(target, target)]
    if given:
        s_tg = cov[np.ix_(target, given)]
        s_gg = cov[np.ix_(given, given)]
        s_tt = s_tt - s_tg @ np.linalg.solve(s_gg, s_tg.T)
    sign, logdet = np.linalg.slogdet(s_tt)
    if sign <= 0:
        raise ValueError("conditional covariance is not positive definite")
    return float(logdet)


def exact_te_var1(A, Q, source: int, target: int, k: int = 1, l: int = 1, H: int = 1) -> float:
    """TE from state component ``source`` to ``target`` of a VAR(1), in nats, for finite windows."""
    _check_lags(k, l, H)
    if l == math.inf:
        raise ValueError("exact_te_var1 needs a finite target history; use exact_te_inf for l = inf")
    A, Q = np.asarray(A, float), np.asarray(Q, float)
    n = A.shape[0]
    m = max(k, l)
    cov = var1_window_cov(A, Q, m + H)
    # Window times 0..m-1 are the past (time m-1 is "t"), m..m+H-1 the future.
    idx = lambda time, comp: time * n + comp  # noqa: E731
    y_future = [idx(m + h, target) for h in range(H)]
    y_past = [idx(m - 1 - j, target) for j in range(l)]
    x_past = [idx(m - 1 - j, source) for j in range(k)]
    te = 0.5 * (_cond_logdet(cov, y_future, y_past) - _cond_logdet(cov, y_future, y_past + x_past))
    return max(te, 0.0)  # rounding can leave -1e-16 where the TE is exactly 0


def exact_te_inf(a, b, c, sigma_x, sigma_y) -> float:
    """TE(k >= 1, l = inf, H = 1) of the coupled AR(1) pair from the spectral factorisation of Y.

    (1-aL)(1-bL) Y_t = c eps_{t-1} + eta_t - a eta_{t-1} is an MA(1) with lag-0/lag-1 autocovariances
    A and -a sigma_y^2; its innovation variance is Y's one-step prediction error from its full past,
    while given X_t too the error is sigma_y^2.
    """
    check_ar_params(a, b, c, sigma_x, sigma_y)
    A = c**2 * sigma_x**2 + sigma_y**2 * (1 + a**2)
    B = a * sigma_y**2
    innovation = 0.5 * (A + math.sqrt(A**2 - 4 * B**2))
    return 0.5 * math.log(innovation / sigma_y**2)


def exact_te(a, b, c, sigma_x, sigma_y, k: int = 1, l: int | float = 1, H: int = 1) -> float:
    """Exact TE X -> Y of the coupled AR(1) pair in nats; ``l = math.inf`` uses the closed form (H = 1)."""
    check_ar_params(a, b, c, sigma_x, sigma_y)
    _check_lags(k, l, H)
    if l == math.inf:
        if H != 1:
            raise ValueError("the closed form for an infinite target history needs horizon H = 1")
        return exact_te_inf(a, b, c, sigma_x, sigma_y)
    A, Q = ar_matrices(a, b, c, sigma_x, sigma_y)
    return exact_te_var1(A, Q, source=0, target=1, k=k, l=l, H=H)


def exact_te_reverse(a, b, c, sigma_x, sigma_y, k: int = 1, l: int = 1, H: int = 1) -> float:
    """Exact TE Y -> X (0 for this unidirectional coupling)."""
    check_ar_params(a, b, c, sigma_x, sigma_y)
    A, Q = ar_matrices(a, b, c, sigma_x, sigma_y)
    return exact_te_var1(A, Q, source=1, target=0, k=k, l=l, H=H)


def closed_form_te1(a, b, c, sigma_x, sigma_y) -> float:
    """TE(1, 1, 1) written out (reference notes, section 7); kept for cross-checking the general routine."""
    sx = sigma_x**2 / (1 - a**2)
    cxy = a * c * sx / (1 - a * b)
    sy = (c**2 * sx + 2 * b * c * cxy + sigma_y**2) / (1 - b**2)
    g1 = b * sy + c * cxy
    return 0.5 * math.log((sy - g1**2 / sy) / sigma_y**2)


# ==================================================================================================
# Joint Gaussian of the AR windows (for the conditional negative sampler and the true-density critic)


def ar_window_cov(a, b, c, sigma_x, sigma_y, k: int = 1, l: int = 1, H: int = 1) -> tuple[np.ndarray, dict]:
    """Stationary covariance of one window of the coupled AR pair, laid out as ``tasks.ar_windows``.

    Returns ``(cov, idx)`` where ``idx["x"]``, ``idx["y"]`` and ``idx["target"]`` index the source
    window X_{t-k+1..t}, the target history Y_{t-l+1..t} and the future Y_{t+1..t+H}, each oldest
    first, so that a row ``split["x"][i]`` lines up with ``cov[np.ix_(idx["x"], idx["x"])]``.
    """
    check_ar_params(a, b, c, sigma_x, sigma_y)
    _check_lags(k, l, H)
    if l == math.inf:
        raise ValueError("ar_window_cov needs a finite target history")
    A, Q = ar_matrices(a, b, c, sigma_x, sigma_y)
    m = max(k, l)
    cov = var1_window_cov(A, Q, m + H)
    idx = {"x": [2 * t for t in range(m - k, m)],
           "y": [2 * t + 1 for t in range(m - l, m)],
           "target": [2 * t + 1 for t in range(m, m + H)]}
    return cov, idx


def gaussian_conditional(cov: np.ndarray, target: list[int], given: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(coef, cond_cov)`` of a zero-mean Gaussian: E[Z_target | Z_given = g] = g @ coef."""
    s_gg = cov[np.ix_(given, given)]
    s_gt = cov[np.ix_(given, target)]
    coef = np.linalg.solve(s_gg, s_gt)
    cond = cov[np.ix_(target, target)] - s_gt.T @ coef
    return coef, 0.5 * (cond + cond.T)


# ==================================================================================================
# The event tasks (sines, digits, needle)
#
# In each of them the target future F is, given the target history Y, a one-to-one function of an
# "announced event" E (the frequency switch, the next digit, the next colour), and the nuisance
# variables that F also depends on (phases, rotation angle, ball motion) are independent of the source
# X given Y. Then TE = I(X; F | Y) = I(X; E | Y), and H(E | Y) -- the entropy of what the source can
# announce -- is the ceiling of every TE estimate on the task. The functions below compute both exactly
# (sines: the posterior exactly, its average over the source noise by Monte Carlo).

# The generator's constants, defined here because this module must not import torch (tasks.py does,
# and takes them from here).
SINE_MULTIPLIERS = (0.2, 0.4, 0.6, 0.8, 1.0)
NEEDLE_PALETTE = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]])
# Float32 storage moves a label by ~1e-7; the uniform noise's support is widened by this much so that
# a stored value on the edge of its support (or a noise-free label) is still consistent with its source.
_SUPPORT_TOL = 1e-6


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=axis)


def _check_prob(name: str, p: float) -> None:
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")


# ---------------------------------------------------------------------------------------- sines


def sines_events(n_mult: int = len(SINE_MULTIPLIERS)) -> np.ndarray:
    """Event table [1 + n(n-1), 2] of (u, v) multiplier indices; row 0 (-1, -1) is "no change"."""
    pairs = [(u, v) for u in range(n_mult) for v in range(n_mult) if u != v]
    return np.array([(-1, -1), *pairs], dtype=int)


def sines_event_probs(switch_prob: float, n_mult: int = len(SINE_MULTIPLIERS)) -> np.ndarray:
    """P(E): a switch (prob p) picks a component (so its multiplier u) and a new multiplier v, each
    uniformly; v = u is no change. So P(u -> v) = p / n^2 and P(no change) = 1 - p (n - 1) / n."""
    _check_prob("switch_prob", switch_prob)
    pe = np.full(1 + n_mult * (n_mult - 1), switch_prob / n_mult**2)
    pe[0] = 1.0 - switch_prob * (n_mult - 1) / n_mult
    return pe


def _permutations(n: int) -> np.ndarray:
    from itertools import permutations

    return np.array(list(permutations(range(n))), dtype=int)


def sines_event_posterior(x: np.ndarray, label_noise: float, switch_prob: float,
                          multipliers=SINE_MULTIPLIERS, chunk: int = 4096) -> np.ndarray:
    """Exact P(E | X = x) [n, events] for source windows x [n, k, components] of the sines task.

    The hidden variables are the permutation pi (component i carries multiplier pi_i), the event and
    the label noise. The noise is uniform, so p(x | pi, E) is (2a)^{-5k} times an indicator and the
    posterior is P(E) * #{pi consistent with x under E}. With A_i = multipliers within a of every
    earlier step of component i and B_i = those within a of its last step:
    no change counts the pi with pi_i in A_i & B_i for every i, and u -> v counts, over the component
    m = pi^{-1}(u), [u in A_m][v in B_m] times the permanent of the other components' A & B.
    """
    x = np.asarray(x, dtype=float)
    M = np.asarray(multipliers, dtype=float)
    n_mult = len(M)
    if x.ndim != 3 or x.shape[2] != n_mult:
        raise ValueError(f"sines source windows must be [n, k, {n_mult}], got shape {x.shape}")
    prior = sines_event_probs(switch_prob, n_mult)
    ev = sines_events(n_mult)
    perms = _permutations(n_mult)  # [P, n_mult]: perms[j, i] = multiplier index of component i
    onehot = np.zeros((len(perms), n_mult, n_mult))  # [perm, component m, multiplier u] = [perms[j, m] == u]
    onehot[np.arange(len(perms))[:, None], np.arange(n_mult)[None, :], perms] = 1.0
    out = np.empty((len(x), len(ev)))
    for s in range(0, len(x), chunk):
        xb = x[s:s + chunk]
        near = np.abs(xb[..., None] - M) <= label_noise + _SUPPORT_TOL  # [b, k, comp, mult]
        A = near[:, :-1].all(axis=1).astype(float)  # k = 1: no earlier step, every multiplier allowed
        B = near[:, -1].astype(float)
        C = A * B
        G = C[:, np.arange(n_mult)[None, :], perms]  # [b, P, comp]: C[i, pi_i]
        no_change = G.prod(axis=2).sum(axis=1)
        others = np.stack([np.delete(G, m, axis=2).prod(axis=2) for m in range(n_mult)], axis=2)  # [b, P, m]
        W = np.einsum("bpm,pmu->bmu", others, onehot)  # permanent of the minor without (m, u)
        counts = np.einsum("bmu,bmu,bmv->buv", W, A, B)
        lik = np.concatenate([no_change[:, None], counts[:, ev[1:, 0], ev[1:, 1]]], axis=1)
        post = lik * prior
        z = post.sum(axis=1, keepdims=True)
        if np.any(z <= 0):
            raise ValueError("a sines source window is inconsistent with every event (wrong label_noise?)")
        out[s:s + chunk] = post / z
    return out


def draw_sines_source(events: np.ndarray, k: int, label_noise: float, rng: np.random.Generator,
                      multipliers=SINE_MULTIPLIERS) -> np.ndarray:
    """Source windows [n, k, components] given event indices (rows of ``sines_events``), as the
    generator lays them out: a uniform permutation of the multipliers, the switched component's label
    showing v at the last step only, then uniform noise on every label."""
    M = np.asarray(multipliers, dtype=float)
    n_mult, n = len(M), len(events)
    ev = sines_events(n_mult)[events]
    perm = rng.permuted(np.tile(np.arange(n_mult), (n, 1)), axis=1)
    clean = np.repeat(M[perm][:, None, :], k, axis=1)
    rows = np.nonzero(ev[:, 0] >= 0)[0]
    comp = np.argmax(perm[rows] == ev[rows, 0][:, None], axis=1)
    clean[rows, k - 1, comp] = M[ev[rows, 1]]
    return clean + rng.uniform(-label_noise, label_noise, clean.shape)


def source_entropy_sines(switch_prob: float, n_mult: int = len(SINE_MULTIPLIERS)) -> float:
    """H(E | Y) = H(E): the history is independent of the permutation and of the switch."""
    return float(_entropy(sines_event_probs(switch_prob, n_mult)))


def _check_sines_spec(spec: dict, n_mult: int) -> None:
    if spec["history"] < 2 * n_mult:
        # Below 2 x components samples the history does not pin the phases, so the future no longer
        # reveals the event given the history and TE < I(X; E).
        raise ValueError(f"the exact sines TE assumes history >= {2 * n_mult} (phases identified by the "
                         f"history), got {spec['history']}")
    if spec["label_noise"] < 0:
        raise ValueError(f"label_noise must be >= 0, got {spec['label_noise']}")


def exact_te_sines(spec: dict, *, multipliers=SINE_MULTIPLIERS, seed: int = 0, max_se: float = 0.005,
                   draws: int = 20000, max_draws: int = 1_280_000) -> tuple[float, float]:
    """(TE, Monte Carlo standard error) in nats of the sines task: I(X; E) = H(E) - E_x H(E | x).

    H(E | x) is exact (``sines_event_posterior``); only its average over x is Monte Carlo, stratified
    over the events (each stratum gets draws in proportion to P(E)), with a fixed seed, doubling the
    draws until the standard error is at most ``max_se``.
    """
    M = np.asarray(multipliers, dtype=float)
    _check_sines_spec(spec, len(M))
    k, a, p = spec["source_lags"], float(spec["label_noise"]), float(spec["switch_prob"])
    prior = sines_event_probs(p, len(M))
    h_e = float(_entropy(prior))
    live = np.nonzero(prior > 0)[0]
    n = draws
    while True:
        rng = np.random.default_rng([seed, n])
        per = np.maximum(50, np.ceil(prior[live] * n)).astype(int)
        events = np.repeat(live, per)
        h = _entropy(sines_event_posterior(draw_sines_source(events, k, a, rng, M), a, p, M))
        cond, var = 0.0, 0.0
        start = 0
        for e, ne in zip(live, per):
            he = h[start:start + ne]
            start += ne
            cond += prior[e] * he.mean()
            var += prior[e] ** 2 * he.var(ddof=1) / ne
        se = math.sqrt(var)
        if se <= max_se or 2 * n > max_draws:
            return max(float(h_e - cond), 0.0), float(se)
        n *= 2


# ---------------------------------------------------------------------------------------- digits


def digits_next_label_probs(label_counts, switch_prob: float) -> np.ndarray:
    """P(L_next = c' | history label c) [C, C]: the same image w.p. 1 - p, else a uniform draw among
    the pool's images of another label, i.e. label c' != c w.p. p n_c' / (N - n_c)."""
    _check_prob("switch_prob", switch_prob)
    n = np.asarray(label_counts, dtype=float)
    if n.ndim != 1 or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"label_counts must be non-negative counts with a positive total, got {label_counts!r}")
    C = len(n)
    out = np.zeros((C, C))
    for c in range(C):
        rest = n.sum() - n[c]
        if rest == 0 and switch_prob > 0 and n[c] > 0:
            raise ValueError("the digit pool holds a single label: a switch has no other digit to go to")
        if rest > 0:
            out[c] = switch_prob * n / rest
        out[c, c] = 1.0 - switch_prob if rest > 0 else 1.0
    return out


def exact_te_digits(label_counts, switch_prob: float) -> float:
    """TE of the digits task in nats: sum_c (n_c / N) H(L_next | c).

    The history shows the first image (label c, drawn uniformly from the pool); the source's last label
    is the next image's label and the future frame shows that image, so the future reveals all the
    source says beyond the history: TE = H(X | Y) = H(L_next | c).
    """
    n = np.asarray(label_counts, dtype=float)
    P = digits_next_label_probs(n, switch_prob)
    return float((n / n.sum()) @ _entropy(P))


def source_entropy_digits(label_counts, switch_prob: float) -> float:
    """H(L_next | history): equal to the TE, since the future frame reveals the next digit."""
    return exact_te_digits(label_counts, switch_prob)


# ---------------------------------------------------------------------------------------- needle


def needle_colour_prior(switch_prob: float, n_colours: int = len(NEEDLE_PALETTE)) -> np.ndarray:
    """P(next colour | history colour) [C, C]: the same colour w.p. 1 - p, else one of the others uniformly."""
    _check_prob("switch_prob", switch_prob)
    P = np.full((n_colours, n_colours), switch_prob / (n_colours - 1))
    np.fill_diagonal(P, 1.0 - switch_prob)
    return P


def _uniform_cdf(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi > lo:
        return np.clip((t - lo) / (hi - lo), 0.0, 1.0)
    return (t >= lo).astype(float)


def needle_channel_classes(label_noise: float, levels: int | None = 255) -> np.ndarray:
    """[K, 2]: P(observation class | channel level 0), P(class | level 1) of one label-pixel channel.

    A channel at level 0 reads 0 + U(0, a), at level 1 reads 1 - U(0, a); the stored pixel is
    round(255 clip(v, 0, 1)) (``levels=None``: the float value). The colour posterior depends on a
    channel's value only through its likelihood ratio, so values with equal ratio are merged into one
    class -- a sufficient statistic, so the merge is exact.
    """
    a = float(label_noise)
    if a < 0:
        raise ValueError(f"label_noise must be >= 0, got {label_noise}")
    if levels is None:
        # Both supports have density 1/a, so the ratio is 1 on their overlap and 0 or inf elsewhere.
        overlap = max(0.0, min(a, 1.0) - max(0.0, 1.0 - a)) / a if a > 0 else 0.0
        return np.array([[1.0 - overlap, 0.0], [overlap, overlap], [0.0, 1.0 - overlap]])
    edges = np.concatenate([[-np.inf], (np.arange(1, levels + 1) - 0.5) / levels, [np.inf]])
    probs = np.stack([np.diff(_uniform_cdf(edges, 0.0, a)), np.diff(_uniform_cdf(edges, 1.0 - a, 1.0))], axis=1)
    probs = probs[probs.sum(axis=1) > 0]
    ratio = np.round(probs[:, 0] / probs.sum(axis=1), 12)
    keys, inv = np.unique(ratio, return_inverse=True)
    classes = np.zeros((len(keys), 2))
    np.add.at(classes, inv, probs)
    return classes


def needle_colour_given_pixel_entropy(switch_prob: float, label_noise: float, levels: int | None = 255,
                                      palette: np.ndarray = NEEDLE_PALETTE) -> float:
    """H(next colour | history colour, needle pixel), exactly, by summing over the channel classes."""
    palette = np.asarray(palette)
    n_col = len(palette)
    cls = needle_channel_classes(label_noise, levels)  # [K, 2]
    # lik[n, kR, kG, kB] = prod_ch P(k_ch | level of colour n in channel ch)
    lik = (cls[:, palette[:, 0]].T[:, :, None, None] * cls[:, palette[:, 1]].T[:, None, :, None]
           * cls[:, palette[:, 2]].T[:, None, None, :])
    prior = needle_colour_prior(switch_prob, n_col)
    joint = prior[:, :, None, None, None] * lik[None] / n_col  # [colour, next, kR, kG, kB]
    marg = joint.sum(axis=1, keepdims=True)
    ratio = np.where(joint > 0, joint / np.where(marg > 0, marg, 1.0), 1.0)
    return float(-(joint * np.log(ratio)).sum())


def source_entropy_needle(switch_prob: float, n_colours: int = len(NEEDLE_PALETTE)) -> float:
    """H(next colour | history) = h(p) + p ln(C - 1): what the needle can announce."""
    return float(_entropy(needle_colour_prior(switch_prob, n_colours)[0]))


def exact_te_needle(spec: dict, *, levels: int | None = 255) -> float:
    """TE of the needle task in nats: H(next | colour) - H(next | colour, needle pixel).

    The history shows the ball colour and the distractors as exactly the source's pixels, so the
    needle is the source multiset minus the history's; the future shows the next colour, and the ball
    motion is independent of the source. Below label_noise 0.5 the pixel's channels never cross, so
    the TE is h(p) + p ln 6; from 0.5 on the second term is positive.
    """
    p, a = float(spec["switch_prob"]), float(spec["label_noise"])
    te = source_entropy_needle(p) - needle_colour_given_pixel_entropy(p, a, levels)
    return max(te, 0.0)


# ---------------------------------------------------------------------------------------- dispatcher


def exact_te_for_task(kind: str, spec: dict, info: dict | None = None, split: str = "test") -> dict:
    """``{"exact_te", "exact_te_se", "source_entropy"}`` in nats for a task of any kind.

    ``source_entropy`` is H(announced event | target history), the ceiling of the TE; for the AR task
    the source is continuous (its differential entropy is not a ceiling) and it is ``math.inf``.
    ``exact_te_se`` is the Monte Carlo standard error (sines; 0 elsewhere). Digits needs
    ``info["pool_label_counts"][split]`` (from ``tasks.make_digits``).
    """
    if kind == "ar":
        params = {q: spec[q] for q in ("a", "b", "c", "sigma_x", "sigma_y")}
        te = exact_te(**params, k=spec["source_lags"], l=spec["target_lags"], H=spec["horizon"])
        return {"exact_te": te, "exact_te_se": 0.0, "source_entropy": math.inf}
    if kind == "sines":
        mult = tuple((info or {}).get("multipliers", SINE_MULTIPLIERS))
        te, se = exact_te_sines(spec, multipliers=mult)
        return {"exact_te": te, "exact_te_se": se, "source_entropy": source_entropy_sines(spec["switch_prob"], len(mult))}
    if kind == "digits":
        counts = (info or {}).get("pool_label_counts", {}).get(split)
        if counts is None:
            raise ValueError(f"the digits exact TE needs info['pool_label_counts'][{split!r}] (tasks.make_digits)")
        te = exact_te_digits(counts, spec["switch_prob"])
        return {"exact_te": te, "exact_te_se": 0.0, "source_entropy": source_entropy_digits(counts, spec["switch_prob"])}
    if kind == "needle":
        return {"exact_te": exact_te_needle(spec), "exact_te_se": 0.0,
                "source_entropy": source_entropy_needle(spec["switch_prob"])}
    raise ValueError(f"unknown task kind {kind!r} (ar, sines, digits, needle)")
