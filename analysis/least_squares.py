"""Weighted nonlinear least squares, batched: many starts or bootstrap replicates solved at once.

A bootstrap replicate is the same problem with integer weights (how often each point was drawn), so
1,000 replicates are one (1000, n_points) weight array and one Levenberg-Marquardt loop in numpy,
not 1,000 calls into scipy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# residuals_and_jacobian(theta (B, k)) -> residuals (B, n), jacobian (B, n, k)
ResidualFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def levenberg_marquardt(residuals_and_jacobian: ResidualFn, theta0: np.ndarray,
                        weights: np.ndarray | None = None, max_iter: int = 300,
                        rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Minimise sum_i w_i r_i(theta)^2 for every row of theta0; returns (theta (B, k), cost (B,)).

    Marquardt's damping (lambda times the diagonal of J^T W J) makes steps scale-invariant; a row
    stops when a step lowers its cost by less than `rtol` relative, or its damping explodes.
    """
    theta = np.array(theta0, dtype=float, copy=True)
    n_batch, n_theta = theta.shape
    r, jac = residuals_and_jacobian(theta)
    w = np.broadcast_to(np.ones(r.shape[1]) if weights is None else weights, r.shape)
    cost = _cost(r, w)
    damping = np.full(n_batch, 1e-3)
    active = np.isfinite(cost)
    eye = np.eye(n_theta)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        jw = jac[idx] * w[idx, :, None]
        hess = np.einsum("bnk,bnj->bkj", jw, jac[idx])
        grad = np.einsum("bnk,bn->bk", jw, r[idx])
        diag = np.einsum("bkk->bk", hess)
        scale = diag + 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
        system = hess + damping[idx, None, None] * scale[:, :, None] * eye
        try:
            step = -np.linalg.solve(system, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = -np.einsum("bkj,bj->bk", np.linalg.pinv(system), grad)
        trial = theta[idx] + step
        r_new, jac_new = residuals_and_jacobian(trial)
        cost_new = _cost(r_new, w[idx])
        better = np.isfinite(cost_new) & (cost_new <= cost[idx])
        gain = (cost[idx] - cost_new) / np.maximum(cost[idx], 1e-300)
        ok = idx[better]
        theta[ok], r[ok], jac[ok], cost[ok] = trial[better], r_new[better], jac_new[better], cost_new[better]
        damping[ok] /= 3
        damping[idx[~better]] *= 4
        done = (better & (gain < rtol)) | (damping[idx] > 1e12)
        active[idx[done]] = False
    return theta, cost


def _cost(r: np.ndarray, w: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        cost = np.einsum("bn,bn->b", w, r * r)
    return np.where(np.isfinite(cost), cost, np.inf)


def log_sum_exp_weights(*terms: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum exp(t)) over the given arrays and the softmax weight of each (its derivative)."""
    top = np.maximum.reduce(terms)
    exps = [np.exp(t - top) for t in terms]
    total = np.sum(exps, axis=0)
    return top + np.log(total), [e / total for e in exps]
