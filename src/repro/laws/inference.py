"""Small-sample inference for the inverse linear law L_f = a - b L_ft (:mod:`repro.laws.fits`).

The law is fitted over the checkpoints of a handful of fine-tuning runs, and that shapes what an honest
interval or test looks like:

* **Few clusters.** Checkpoints of one run share a trajectory, so runs are the independent units; there
  are usually only 4-6 of them. Cluster-robust (CR1) standard errors with a t(G - 1) reference are
  anti-conservative at that G, worst when the runs differ in size or leverage, because the CR1 variance
  is itself estimated from G scores and is biased down. :func:`wild_cluster_bootstrap` gives intervals
  by the restricted wild cluster bootstrap (WCR; MacKinnon & Webb 2017, Roodman et al. 2019) inverted
  into a confidence set, the method with the best known size at small G. Webb's six-point weights are
  the default because Rademacher weights have only 2^G distinct draws: enumerated with G <= 5, the
  smallest attainable two-sided p-value is 2 / 2^G >= 0.0625, so no 95 % Rademacher interval is bounded.
* **One line, not just b > 0.** Any set of monotone trajectories gives a negative pooled slope; the
  paper's claim is that one common line holds across runs. :func:`common_line_test` tests per-run
  intercepts and slopes against the pooled line. Checkpoints of one run are serially correlated, which
  makes the iid F-test over-reject, so the statistic is a feasible-GLS F under a common AR(1) within
  runs. With runs of 7-13 checkpoints the AR(1) coefficient is itself poorly determined (and the plain
  residual estimate badly biased), so the F reference still over-rejects; the p-value comes from a
  parametric bootstrap under the null that repeats the whole procedure.
* **Curvature.** :func:`curvature` reports the quadratic term of y = a + b x + c x^2 with the same
  bootstrap interval, so a straight line is a finding rather than an assumption.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = ["wild_cluster_bootstrap", "common_line_test", "curvature"]

WEBB = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5), math.sqrt(0.5), 1.0, math.sqrt(1.5)])
# Floating-point slack when comparing bootstrap and sample t statistics: the all-ones draw reproduces
# the sample exactly (and its negation mirrors it), and such ties must count as "at least as extreme".
_TIE = 1e-7
# How far (in CR1 standard errors) the interval search goes before calling an end unbounded. Further
# out, rounding in the affine expansions in the null value breaks those ties and invents crossings.
_SEARCH_SE = 1e6


# ------------------------------------------------------------------------------- wild cluster bootstrap
def _design(x: Any, y: Any, clusters: Any, extra: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    labels = np.asarray(clusters).ravel()
    if not (len(x) == len(y) == len(labels)):
        raise ValueError(f"x, y and clusters differ in length: {len(x)}, {len(y)}, {len(labels)}")
    columns = [np.ones_like(x), x]
    names = ["x"]
    if extra is not None:
        extra = np.asarray(extra, dtype=float)
        extra = extra.reshape(len(extra), -1)
        if len(extra) != len(x):
            raise ValueError(f"extra has {len(extra)} rows, x has {len(x)}")
        columns += list(extra.T)
        names += [f"extra[{j}]" for j in range(extra.shape[1])]
    X = np.column_stack(columns)
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("x, y and extra must be finite (drop missing checkpoints first)")
    for name, col in zip(names, X.T[1:]):
        if np.ptp(col) == 0:
            raise ValueError(f"regressor {name} is constant: its coefficient is not identified apart from "
                             "the intercept")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError("the regressors [1, x, extra] are collinear")
    groups, uniques = pd.factorize(pd.Series(labels, dtype=object), sort=True)
    if (groups < 0).any():
        raise ValueError("clusters has missing labels: every observation needs its run")
    n_clusters = len(uniques)
    if n_clusters < 3:
        raise ValueError(f"{n_clusters} clusters: the wild cluster bootstrap needs at least 3 (cluster-robust "
                         "variances are not estimable from fewer)")
    return X, y, groups, n_clusters


def _weights(kind: str, n_clusters: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights, clusters x draws; drawn once so that every null value reuses them."""
    if kind == "rademacher":
        if 2 ** n_clusters <= resamples:
            # Few distinct draws: enumerating them removes simulation noise from the p-value entirely.
            return np.array(list(itertools.product((-1.0, 1.0), repeat=n_clusters))).T
        return rng.choice(np.array([-1.0, 1.0]), size=(n_clusters, resamples))
    if kind == "webb":
        return rng.choice(WEBB, size=(n_clusters, resamples))
    raise ValueError(f"weights must be 'webb' or 'rademacher', not {kind!r}")


def wild_cluster_bootstrap(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    clusters: Sequence[Hashable] | np.ndarray,
    *,
    extra: np.ndarray | None = None,
    coef: int = 1,
    weights: Literal["webb", "rademacher"] = "webb",
    resamples: int = 999,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """OLS of y on [1, x, extra...]; restricted wild cluster bootstrap (WCR) interval for coefficient ``coef``.

    For a null value beta0 of the coefficient the model is re-estimated under the restriction, and
    bootstrap samples y* = restricted fit + v_g * restricted residual (one weight v_g per cluster) give
    the distribution of the CR1 t statistic; the p-value is the share of |t*| at least as large as the
    sample |t|. The interval is the set of beta0 not rejected at 1 - ``level``, its ends found by a root
    finder on either side of the estimate. The weights are drawn once, so the p-value is a deterministic
    function of beta0 and the interval is well defined.

    Every bootstrap statistic is an affine function of beta0 in its numerator and in its cluster scores
    (Roodman et al. 2019), so each p-value evaluation costs O(G x resamples) with no refitting.

    An end is infinite when no beta0 within 1e6 standard errors is rejected on that side (always so at
    level 0.95 when all 2^G Rademacher draws are enumerated and G <= 5). Returns estimate, se_cluster (CR1), ci_low, ci_high, p_value (two-sided,
    H0: coefficient = 0), cr_ci_low, cr_ci_high (CR1 with t(G - 1) reference), n, n_clusters, weights,
    resamples (draws used: 2^G when Rademacher draws are enumerated), enumerated, level and coef.
    """
    import statsmodels.api as sm

    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, not {resamples}")
    X, y, groups, G = _design(x, y, clusters, extra)
    n, k = X.shape
    if not 0 <= coef < k:
        raise ValueError(f"coef {coef} is not a column of the design (0 .. {k - 1})")

    fit = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    estimate, se = float(fit.params[coef]), float(fit.bse[coef])
    cr_low, cr_high = (float(v) for v in fit.conf_int(1 - level)[coef])
    out = {"estimate": estimate, "se_cluster": se, "cr_ci_low": cr_low, "cr_ci_high": cr_high,
           "cr_p_value": float(fit.pvalues[coef]), "n": n, "n_clusters": G, "weights": weights,
           "level": level, "coef": coef}

    # The CR1 small-sample factor, as statsmodels applies it (checked against fit.bse below).
    factor = G / (G - 1) * (n - 1) / (n - k)
    member = np.zeros((G, n))
    member[groups, np.arange(n)] = 1.0
    xtx_inv = np.linalg.inv(X.T @ X)
    a = (xtx_inv @ X.T)[coef]  # beta_coef = a @ y
    # Restricted residuals are affine in beta0: u_r(beta0) = e0 - beta0 * w.
    X_r = np.delete(X, coef, axis=1)
    e0 = y - X_r @ np.linalg.lstsq(X_r, y, rcond=None)[0]
    w = X[:, coef] - X_r @ np.linalg.lstsq(X_r, X[:, coef], rcond=None)[0]
    A = member @ (a[:, None] * X)  # G x k

    def scores(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # c: numerator weights, c @ v = beta*_coef - beta0. K: bootstrap cluster scores, K @ v, i.e. the
        # cluster sums of a * (unrestricted residuals of y*), which is linear in the draw v.
        c = member @ (a * u)
        S = member @ (X * u[:, None])
        return c, np.diag(c) - A @ xtx_inv @ S.T

    c0, K0 = scores(e0)
    c1, K1 = scores(w)
    v = _weights(weights, G, resamples, np.random.default_rng(seed))
    B = v.shape[1]
    N0, N1, P0, P1 = c0 @ v, c1 @ v, K0 @ v, K1 @ v
    se_check = math.sqrt(factor * np.sum((member @ (a * (y - X @ fit.params))) ** 2))
    if not math.isclose(se_check, se, rel_tol=1e-6, abs_tol=1e-300):
        raise RuntimeError(f"CR1 standard error {se_check} disagrees with statsmodels' {se}")

    def extreme_count(beta0: float) -> int:
        # |t*| >= |t| compared squared, so an all-zero score vector (t* = +-inf) needs no division.
        num2 = (N0 - beta0 * N1) ** 2 * se**2
        var = factor * np.sum((P0 - beta0 * P1) ** 2, axis=0)
        return int(np.count_nonzero(num2 >= (estimate - beta0) ** 2 * var * (1 - _TIE)))

    # p <= alpha (reject) iff count <= alpha * B; root of a function that is > 0 exactly where beta0 is
    # accepted and never 0 (the p-value is a step function, so a root is a jump point).
    alpha = 1 - level
    threshold = math.floor(alpha * B + 1e-9) + 0.5

    def accept(beta0: float) -> float:
        return extreme_count(beta0) - threshold

    def end(direction: float) -> float:
        inner, step = estimate, 0.5 * se
        while step <= _SEARCH_SE * se:
            outer = estimate + direction * step
            if accept(outer) < 0:
                return float(optimize.brentq(accept, min(inner, outer), max(inner, outer),
                                             xtol=1e-9 * se, rtol=1e-12))
            inner, step = outer, step * 1.5
        return direction * math.inf

    if se == 0 or accept(estimate) < 0:
        # A perfect fit (se = 0) leaves nothing to bootstrap; the estimate itself rejected cannot happen
        # with |t| = 0 but would leave no interval around it.
        raise ValueError("degenerate fit: zero cluster-robust standard error")
    return {**out, "ci_low": end(-1.0), "ci_high": end(1.0), "p_value": extreme_count(0.0) / B,
            "resamples": B, "enumerated": bool(weights == "rademacher" and 2**G <= resamples)}


# ---------------------------------------------------------------------------------- common line test
# A unit root makes the first-checkpoint scaling sqrt(1 - rho^2) vanish; the bound keeps it defined.
RHO_BOUND = 0.99
_RHO_GRID = np.linspace(-RHO_BOUND, RHO_BOUND, 397)


def _prais_winsten(values: np.ndarray, starts: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Within-run AR(1) transform: ``values`` (1 or B, n, m) rows sorted by run then order, one rho per
    sample (B,). Returns (B, n, m)."""
    r = rho[:, None, None]
    out = np.broadcast_to(values, (len(rho), *values.shape[1:])).copy()
    out[:, 1:] -= r * values[:, :-1]
    # The first checkpoint of a run has no predecessor in it: scaled so its variance matches the rest.
    out[:, starts] = np.sqrt(1 - r**2) * values[:, starts]
    return out


def _rss(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Residual sums of squares of the stacked regressions Y[b] on X[b] (B, n, p) / (B, n, 1)."""
    Q = np.linalg.qr(X)[0]
    resid = Y - Q @ (np.swapaxes(Q, 1, 2) @ Y)
    return np.sum(resid**2, axis=(1, 2))


def _bias_map(x: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Expected lag-1 residual ratio of the per-run-line model under AR(1) errors, on ``_RHO_GRID``.

    Fitting an intercept and slope to each short run absorbs much of the persistence: with 12
    checkpoints per run the plain ratio is about 0.24 when rho is 0.6, and a Prais-Winsten transform
    with that value leaves the F-test rejecting a true common line most of the time. The ratio of the
    expected quadratic forms, tr(S M Sigma M) / tr(D M Sigma M) per run, maps rho to what the plain
    ratio estimates; inverting it gives an approximately unbiased rho from the same residuals.
    """
    num = np.zeros(len(_RHO_GRID))
    den = np.zeros(len(_RHO_GRID))
    for start, size in zip(starts, sizes):
        if size < 3:
            continue  # a line through two points leaves no residual
        X = np.column_stack([np.ones(size), x[start:start + size]])
        M = np.eye(size) - X @ np.linalg.pinv(X)
        lags = np.abs(np.subtract.outer(np.arange(size), np.arange(size))).ravel()
        shift = np.eye(size, k=-1)  # e' shift e = sum_t e_t e_{t-1}
        head = np.diag((np.arange(size) < size - 1).astype(float))  # e' head e = sum_t e_{t-1}^2
        # tr(A M Sigma M) = sum_ij (M A M)_ij rho^|i-j|: a polynomial in rho, its coefficients summed
        # along the diagonals, so the whole grid costs one matrix product.
        powers = _RHO_GRID[:, None] ** np.arange(size)[None, :]
        num += powers @ np.bincount(lags, weights=(M @ shift @ M).ravel(), minlength=size)
        den += powers @ np.bincount(lags, weights=(M @ head @ M).ravel(), minlength=size)
    return num / den


def _ar1_errors(rng: np.random.Generator, starts: np.ndarray, position: np.ndarray, rho: float,
                draws: int) -> np.ndarray:
    """Stationary AR(1) series within each run, unit innovations: (draws, n)."""
    e = rng.standard_normal((draws, len(position)))
    e[:, starts] /= math.sqrt(1 - rho**2)
    for t in range(1, int(position.max()) + 1):
        at = np.flatnonzero(position == t)
        e[:, at] += rho * e[:, at - 1]
    return e


def _f_test(y: np.ndarray, restricted: np.ndarray, unrestricted: np.ndarray) -> tuple[float, int, int, float]:
    import statsmodels.api as sm

    small = sm.OLS(y, restricted).fit()
    big = sm.OLS(y, unrestricted).fit()
    f_stat, p_value, df_num = big.compare_f_test(small)
    return float(f_stat), int(round(df_num)), int(round(big.df_resid)), float(p_value)


def common_line_test(df: pd.DataFrame, *, x: str, y: str, run: str | Sequence[str], order: str,
                     resamples: int = 999, seed: int = 0) -> dict[str, Any]:
    """Do per-run intercepts and slopes improve on one pooled line y = a + b x? A feasible-GLS F-test.

    Checkpoints of one run are serially correlated (ordered by column ``order``, e.g. the step), which
    makes the iid F-test anti-conservative: a slowly wandering run looks like a shifted or tilted line.
    Here the errors are one AR(1) process per run with a common coefficient rho, estimated from the
    within-run lag-1 products of the unrestricted model's residuals (per-run intercept and slope) and
    corrected for the downward bias of short runs (:func:`_bias_map`). y and every regressor are
    Prais-Winsten transformed within each run (the first checkpoint scaled by sqrt(1 - rho^2)), and the
    common line is compared with the unrestricted model by the nested-model F statistic on the
    transformed data (statsmodels ``compare_f_test``).

    The F(df_num, df_den) reference of that statistic (``p_value_f``) treats rho as known. With the
    4-6 runs of 7-13 checkpoints the law is fitted on it is not: rho's sampling error feeds straight
    into the long-run variance that decides whether a run's offset is signal, and the F reference
    rejects a true common line far above the nominal rate (about 20 % at 5 % for 5 runs of 12
    checkpoints, rho 0.6). ``p_value`` therefore calibrates the same statistic by a parametric
    bootstrap under the null: AR(1) errors with rho estimated (REML) under the common line, every draw
    put through the whole procedure, rho estimation included.

    Identification limit: with one run per setting, a genuine run-level shift of the line cannot be told
    apart from an error that persists over the whole run. Only the AR(1) model separates them, by
    fixing how fast errors forget (correlation rho^lag). Under the null-imposed bootstrap, runs offset
    from one another are first read as strong persistence (rho near 1), so moderate offsets are not
    rejected; only offsets or slope differences larger than such persistence can produce are. A
    rejection means "different lines, or errors more persistent than AR(1) allows"; a non-rejection
    with few short runs is weak evidence for one line.

    Returns f_stat, df_num, df_den, p_value (bootstrap) and p_value_f (F reference) for the common line
    against per-run intercepts and slopes; the same (f_stat_intercepts, df_num_intercepts,
    p_value_intercepts, p_value_intercepts_f) against per-run intercepts with a common slope;
    f_stat_naive and p_value_naive, the iid F-test without the transform; rho (bias-corrected), rho_raw
    (the plain residual ratio), rho_null (REML under the common line, the bootstrap's), n, n_runs,
    resamples, and run_lines (each run's own OLS intercept and slope: how far apart the lines are, which
    a p-value alone does not say).
    """
    keys = [run] if isinstance(run, str) else list(run)
    missing = [c for c in dict.fromkeys([*keys, x, y, order]) if c not in df.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, not {resamples}")
    data = df.dropna(subset=[*keys, x, y, order]).sort_values([*keys, order], kind="stable")
    if data.duplicated([*keys, order]).any():
        raise ValueError(f"repeated values of {order!r} within a run: the serial order is ambiguous")
    runs = data.groupby(keys, sort=False).ngroup().to_numpy()
    n, R = len(data), int(runs.max() + 1) if len(data) else 0
    if R < 2:
        raise ValueError(f"{R} run(s): a common line needs at least 2 runs to be tested")
    xs, ys = data[x].to_numpy(float), data[y].to_numpy(float)
    sizes = np.bincount(runs, minlength=R)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.arange(n) - np.repeat(starts, sizes)
    flat = [r for r in range(R) if np.ptp(xs[runs == r]) == 0]
    if flat:
        raise ValueError(f"{len(flat)} run(s) with a constant {x}: per-run slopes are not identified")
    if n - 2 * R < 1:
        raise ValueError(f"{n} checkpoints in {R} runs leave no residual degrees of freedom for per-run "
                         "lines (need more than 2 per run on average)")

    dummies = (runs[:, None] == np.arange(R)[None, :]).astype(float)
    designs = {"common": np.column_stack([np.ones(n), xs]), "intercepts": np.column_stack([dummies, xs]),
               "full": np.column_stack([dummies, dummies * xs[:, None]])}
    full = designs["full"]
    residual_maker = np.eye(n) - full @ np.linalg.pinv(full)
    lagged = np.flatnonzero(position > 0)  # lag pairs never cross from one run to the next
    # np.interp needs increasing abscissae; the map is increasing in rho up to rounding.
    expected = np.maximum.accumulate(_bias_map(xs, starts, sizes))

    def rho_of(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        resid = Y @ residual_maker
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.sum(resid[:, lagged] * resid[:, lagged - 1], 1) / np.sum(resid[:, lagged - 1] ** 2, 1)
        return raw, np.interp(raw, expected, _RHO_GRID)

    def f_stats(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The F statistics of samples Y (B, n), rho estimated in each: vectorised over the samples."""
        rho = rho_of(Y)[1]
        tY = _prais_winsten(Y[:, :, None], starts, rho)
        rss = {name: _rss(_prais_winsten(X[None], starts, rho), tY) for name, X in designs.items()}
        f_full = (rss["common"] - rss["full"]) / (2 * R - 2) / (rss["full"] / (n - 2 * R))
        f_int = (rss["common"] - rss["intercepts"]) / (R - 1) / (rss["intercepts"] / (n - R - 1))
        return f_full, f_int

    raw, rho = (float(v[0]) for v in rho_of(ys[None]))
    if not np.isfinite(raw):
        raise ValueError("the per-run lines fit exactly: no residual to estimate the serial correlation from")
    # The observed statistics go through the same vectorised code as the bootstrap draws, so the two are
    # the same function of the data (the tests check it against statsmodels' compare_f_test).
    f_stat, f_int = (float(v[0]) for v in f_stats(ys[None]))
    df_num, df_den, df_int = 2 * R - 2, n - 2 * R, R - 1
    f_naive, _, _, p_naive = _f_test(ys, designs["common"], full)

    def null_deviance(r: float) -> float:
        # -2 x REML log-likelihood of the common line under AR(1), the error variance profiled out.
        tX = _prais_winsten(designs["common"][None], starts, np.array([r]))[0]
        ty = _prais_winsten(ys[None, :, None], starts, np.array([r]))[0, :, 0]
        ssr = float(np.sum((ty - tX @ np.linalg.lstsq(tX, ty, rcond=None)[0]) ** 2))
        return -R * math.log(1 - r**2) + float(np.linalg.slogdet(tX.T @ tX)[1]) + (n - 2) * math.log(ssr)

    rho_null = float(optimize.minimize_scalar(null_deviance, bounds=(-RHO_BOUND, RHO_BOUND),
                                              method="bounded", options={"xatol": 1e-6}).x)
    # F is invariant to the common line's coefficients and to the error scale (the residuals behind rho
    # and every RSS are), so under the null the draws need only the AR(1) errors themselves.
    errors = _ar1_errors(np.random.default_rng(seed), starts, position, rho_null, resamples)
    boot_full, boot_int = f_stats(errors)
    # A draw whose statistic is undefined (nan) counts as at least as extreme: conservative.
    p_value = (1 + np.sum(~(boot_full < f_stat))) / (resamples + 1)
    p_int = (1 + np.sum(~(boot_int < f_int))) / (resamples + 1)
    labels = data[keys].astype(str).agg("/".join, axis=1).to_numpy()[starts]
    coefs = np.linalg.lstsq(full, ys, rcond=None)[0]
    run_lines = [{"run": str(label), "n": int(size), "intercept": float(a), "slope": float(b)}
                 for label, size, a, b in zip(labels, sizes, coefs[:R], coefs[R:])]
    return {"f_stat": f_stat, "df_num": df_num, "df_den": df_den, "p_value": float(p_value),
            "p_value_f": float(stats.f.sf(f_stat, df_num, df_den)),
            "f_stat_intercepts": f_int, "df_num_intercepts": df_int, "p_value_intercepts": float(p_int),
            "p_value_intercepts_f": float(stats.f.sf(f_int, df_int, n - R - 1)),
            "f_stat_naive": f_naive, "p_value_naive": p_naive,
            "rho": rho, "rho_raw": raw, "rho_null": rho_null, "n": n, "n_runs": R, "resamples": resamples,
            "run_lines": run_lines}


# ---------------------------------------------------------------------------------------- curvature
def curvature(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    clusters: Sequence[Hashable] | np.ndarray,
    **kw: Any,
) -> dict[str, Any]:
    """Quadratic coefficient c of y = a + b x + c x^2 with the wild cluster bootstrap interval.

    x is centred first: c is unchanged, but b and c are then far less collinear, which keeps the
    restricted fits well conditioned. Keyword arguments go to :func:`wild_cluster_bootstrap`. Returns its
    result (estimate, ci_low, ci_high, p_value for H0: c = 0, ...) with x_mean added.
    """
    xc = np.asarray(x, dtype=float).ravel()
    x_mean = float(np.mean(xc)) if len(xc) else math.nan
    xc = xc - x_mean
    return {**wild_cluster_bootstrap(xc, y, clusters, extra=xc**2, coef=2, **kw), "x_mean": x_mean}

