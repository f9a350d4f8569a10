"""Reference TE estimators on held-out windows: Gaussian (least squares / Granger) and KSG (ennemi).

Both take the same arrays as the models: source history ``x`` [n, k], target history ``y`` [n, l]
and future ``target`` [n, H], and estimate I(x; target | y) in nats.
"""

from __future__ import annotations

import numpy as np


def _as2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a.reshape(len(a), -1)


def _residual_cov(target: np.ndarray, regressors: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(target)), regressors])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    return np.atleast_2d(resid.T @ resid / (len(target) - design.shape[1]))


def gaussian_te(x, y, target) -> float:
    """½ ln det(residual cov | y) / det(residual cov | y, x): exact in expectation for linear-Gaussian data."""
    x, y, target = _as2d(x), _as2d(y), _as2d(target)
    restricted = np.linalg.slogdet(_residual_cov(target, y))[1]
    full = np.linalg.slogdet(_residual_cov(target, np.column_stack([y, x])))[1]
    return 0.5 * (restricted - full)


def ksg_te(x, y, target, k: int = 4, max_threads: int | None = 1) -> float:
    """KSG conditional MI by the chain rule over future steps and source lags.

    ennemi estimates I(a; b | cond) for scalar a and b, so
    I(X_1..X_K; Y'_1..Y'_H | Y) = sum_h sum_j I(Y'_h; X_j | Y, Y'_<h, X_<j).
    """
    from ennemi import estimate_mi

    x, y, target = _as2d(x), _as2d(y), _as2d(target)
    total = 0.0
    for h in range(target.shape[1]):
        for j in range(x.shape[1]):
            cond = np.column_stack([y, target[:, :h], x[:, :j]])
            mi = estimate_mi(target[:, h], x[:, j], cond=cond, k=k, max_threads=max_threads)
            total += float(np.asarray(mi).ravel()[0])
    return total
