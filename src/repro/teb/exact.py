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
