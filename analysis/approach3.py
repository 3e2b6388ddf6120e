"""Hoffmann et al. 2022 approach 3: the Huber objective over L(N, D) = E + A/N^alpha + B/D^beta and
its minimiser (Sec. 3.3, App. D.2).

The law is fitted as theta = (a, b, e, alpha, beta) = (ln A, ln B, ln E, alpha, beta) by

    min_theta  sum_i Huber_delta(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i),

L-BFGS from a grid of starts, the best kept. `analysis.chinchilla.fit_chinchilla` builds the Fit;
this module holds the arithmetic shared by the fit, its sensitivity checks and its comparisons.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from analysis.lbfgs import minimize_batched

HUBER_DELTA = 1e-3  # Hoffmann et al. App. D.2
# Hoffmann et al. App. D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}.
GRID_AXES = {"a": np.arange(0, 26, 5.0), "b": np.arange(0, 26, 5.0), "e": np.arange(-1, 1.01, 0.5),
             "alpha": np.arange(0, 2.01, 0.5), "beta": np.arange(0, 2.01, 0.5)}
HOFFMANN_GRID = np.array(list(itertools.product(*GRID_AXES.values())))  # (4500, 5): a, b, e, alpha, beta
APPROACH3_NAMES = ["E", "A", "B", "alpha", "beta", "a", "b"]


def approach3_loss(params, N, D):
    return (params["E"] + params["A"] / np.asarray(N, float) ** params["alpha"]
            + params["B"] / np.asarray(D, float) ** params["beta"])


def approach3_allocation(params, C):
    """N_opt, D_opt minimising L(N, D) under C = 6 N D (Hoffmann et al. eq. 4)."""
    alpha, beta = params["alpha"], params["beta"]
    G = (alpha * params["A"] / (beta * params["B"])) ** (1 / (alpha + beta))
    C = np.asarray(C, float)
    return G * (C / 6) ** (beta / (alpha + beta)), (C / 6) ** (alpha / (alpha + beta)) / G


def huber_objective(theta, ln_n, ln_d, ln_l, weights=None, delta: float = HUBER_DELTA):
    """Hoffmann et al.'s objective and its gradient at theta = (a, b, e, alpha, beta):

        sum_i w_i Huber_delta(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i).

    theta of shape (5,) gives a number and a (5,) gradient; (B, 5) gives one per row, with
    `weights` (B, n_points) or shared (n_points,) or None (all ones).
    """
    theta = np.asarray(theta, float)
    single = theta.ndim == 1
    a, b, e, alpha, beta = (c[:, None] for c in np.atleast_2d(theta).T)
    t1, t2 = a - alpha * ln_n, b - beta * ln_d
    top = np.maximum(np.maximum(t1, t2), e)
    x1, x2, x3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = x1 + x2 + x3
    r = top + np.log(total) - ln_l
    clipped = np.clip(r, -delta, delta)  # dHuber/dr
    # Huber: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond; both are clipped * (r - clipped/2).
    huber = clipped * (r - 0.5 * clipped)
    dr = clipped / total  # divided by the LSE's denominator, shared by every term's derivative
    if weights is not None:
        huber, dr = huber * weights, dr * weights
    g1, g2 = dr * x1, dr * x2
    grad = np.stack([g1.sum(1), g2.sum(1), (dr * x3).sum(1), -(g1 @ ln_n), -(g2 @ ln_d)], axis=1)
    value = huber.sum(1)
    return (value[0], grad[0]) if single else (value, grad)


def grid_objective(starts: np.ndarray, ln_n, ln_d, ln_l, delta: float = HUBER_DELTA) -> np.ndarray:
    """The objective at every start, vectorised (in chunks to bound memory)."""
    return np.concatenate([huber_objective(starts[lo:lo + 500], ln_n, ln_d, ln_l, None, delta)[0]
                           for lo in range(0, len(starts), 500)])


def lbfgs(theta0, ln_n, ln_d, ln_l, weights=None, delta: float = HUBER_DELTA):
    """L-BFGS from every row of theta0 (B, 5), each with its row of `weights` (B, n) or shared
    weights; returns (theta (B, 5), objective (B,)).

    The objective is minimised divided by delta: the minimiser is the same, but a stopping rule
    on the decrease of f relative to max(|f|, 1) (scipy's `ftol`, ours) is absolute when |f| < 1,
    and the summed Huber loss with delta = 1e-3 is ~1e-3 here, so unscaled the optimiser stops
    early (Besiroglu et al. 2024 found such early stops in the original fit).

    It is minimised in centred coordinates, a - alpha (ln N - mean ln N) for a - alpha ln N (and
    the same for D): the same function, but a and alpha are no longer almost collinear (ln N is
    11-18 with a spread of ~1), so L-BFGS needs about half the steps.
    """
    theta0 = np.atleast_2d(np.asarray(theta0, float))
    per_row = weights is not None and np.ndim(weights) == 2
    centre_n, centre_d = float(np.mean(ln_n)), float(np.mean(ln_d))
    shift = np.zeros((5, 5))
    shift[3, 0], shift[4, 1] = centre_n, centre_d  # centred a = a - alpha centre_n: theta @ (I - shift)

    def scaled(theta, rows):
        w = weights[rows] if per_row else weights
        value, grad = huber_objective(theta, ln_n - centre_n, ln_d - centre_d, ln_l, w, delta)
        return value / delta, grad / delta

    centred, value, _ = minimize_batched(scaled, theta0 @ (np.eye(5) - shift))
    return centred @ (np.eye(5) + shift), value * delta


def refine_candidates(starts: np.ndarray, values: np.ndarray, n_refine: int | None) -> np.ndarray:
    """Indices of the starts L-BFGS runs from: the best of every (alpha, beta) cell (the exponents
    decide which basin a start falls in) plus the n_refine best overall; all when None."""
    if n_refine is None:
        return np.arange(len(starts))
    cells = pd.DataFrame({"alpha": starts[:, 3], "beta": starts[:, 4], "value": values})
    per_cell = cells.groupby(["alpha", "beta"])["value"].idxmin().to_numpy()
    return np.union1d(per_cell, np.argsort(values)[:n_refine])


def params_of(theta: np.ndarray) -> np.ndarray:
    """Rows of theta (a, b, e, alpha, beta) as rows of APPROACH3_NAMES (E, A, B, alpha, beta, a, b),
    where the last two are the allocation exponents N_opt ∝ C^a, D_opt ∝ C^b."""
    a, b, e, alpha, beta = np.atleast_2d(theta).T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.column_stack([np.exp(e), np.exp(a), np.exp(b), alpha, beta,
                                beta / (alpha + beta), alpha / (alpha + beta)])


def theta_of(params) -> np.ndarray:
    """(a, b, e, alpha, beta) of a parameter mapping with E, A, B, alpha, beta (arrays give rows)."""
    with np.errstate(divide="ignore"):
        return np.column_stack([np.log(np.asarray(params["A"], float)), np.log(np.asarray(params["B"], float)),
                                np.log(np.asarray(params["E"], float)), np.asarray(params["alpha"], float),
                                np.asarray(params["beta"], float)])


def log_residuals(theta: np.ndarray, ln_n, ln_d, ln_l) -> np.ndarray:
    """ln L_i - ln L(N_i, D_i) for every row of theta (B, 5): (B, n_points)."""
    a, b, e, alpha, beta = (c[:, None] for c in np.atleast_2d(theta).T)
    return ln_l - np.logaddexp(np.logaddexp(a - alpha * ln_n, b - beta * ln_d), e)


def minimise(starts: np.ndarray, ln_n, ln_d, ln_l, delta: float, n_refine: int | None,
             extra_starts: np.ndarray | None = None) -> tuple[np.ndarray, float, int]:
    """The best of L-BFGS from the pruned grid of `starts` (see `refine_candidates`) and from every
    row of `extra_starts`: (theta (5,), objective, how many starts L-BFGS ran from)."""
    values = grid_objective(starts, ln_n, ln_d, ln_l, delta)
    chosen = starts[refine_candidates(starts, values, n_refine)]
    if extra_starts is not None:
        chosen = np.vstack([chosen, np.atleast_2d(extra_starts)])
    found, objectives = lbfgs(chosen, ln_n, ln_d, ln_l, None, delta)
    best = int(np.nanargmin(objectives))
    return found[best], float(objectives[best]), len(chosen)


# ---------------------------------------------------------------------------------------------
# A Huber delta matched to the residual scale.
#
# Huber's loss is quadratic within delta of the fit and linear beyond: delta is meant to separate
# ordinary scatter from outliers, so it is a multiple of the noise scale, and delta = 1.345 sigma
# keeps 95% of least squares' efficiency when the noise is Gaussian (Huber 1981, "Robust
# Statistics", Sec. 4.6; Holland & Welsch 1977). Hoffmann et al.'s delta = 1e-3 sits far below
# the scatter of small sweeps (rms 0.010-0.024 in ln L here), where every point lies in the linear
# part and the fit becomes a least-absolute-deviation fit, which passes exactly through about as
# many points as it has parameters (Besiroglu et al. 2024 re-fit with the paper's delta and found
# the published intervals implausibly narrow; the choice of delta moves E and alpha by more than
# those intervals on the shipped sweeps).

HUBER_EFFICIENCY_FACTOR = 1.345  # delta / sigma for 95% Gaussian efficiency (Huber 1981)
MAD_TO_SIGMA = 1.4826  # sigma = 1.4826 x median |r| for Gaussian residuals


def robust_scale(residuals: np.ndarray) -> float:
    """sigma estimated from the median absolute residual (robust to the outliers Huber tolerates)."""
    return float(MAD_TO_SIGMA * np.median(np.abs(residuals)))


# A delta far above any residual of a fit that converged: Huber is then least squares, whose
# residuals give the first estimate of sigma (and whose objective L-BFGS minimises in few steps,
# unlike the kinked least-absolute-deviation-like objective at delta = 1e-3).
LEAST_SQUARES_DELTA = 1.0


def matched_delta_fit(starts: np.ndarray, ln_n, ln_d, ln_l, n_refine: int | None, *, max_refits: int = 5,
                      tolerance: float = 0.05) -> dict:
    """Fit by least squares, then at delta = 1.345 sigma of the residuals, re-estimating sigma
    from each new fit until delta moves by less than `tolerance` (relative); one or two refits
    suffice on every sweep here. An exact fit (5 points, 5 parameters) has no residual scale and
    keeps the paper's delta. Returns {"delta", "theta", "objective", "n_refined", "rule"}.
    """
    theta, objective, n_refined = minimise(starts, ln_n, ln_d, ln_l, LEAST_SQUARES_DELTA, n_refine)
    sigma = robust_scale(log_residuals(theta, ln_n, ln_d, ln_l)[0])
    if len(ln_l) <= 5 or not sigma > 1e-9:
        theta, objective, n_refined = minimise(starts, ln_n, ln_d, ln_l, HUBER_DELTA, n_refine, extra_starts=theta)
        return {"delta": HUBER_DELTA, "theta": theta, "objective": objective, "n_refined": n_refined,
                "rule": "the paper's (an exact fit has no residual scale to match)"}
    delta, refits = None, 0
    while refits < max_refits:
        new_delta = HUBER_EFFICIENCY_FACTOR * sigma
        if delta is not None and abs(new_delta / delta - 1) < tolerance:
            break
        delta = new_delta
        theta, objective, n_refined = minimise(starts, ln_n, ln_d, ln_l, delta, n_refine, extra_starts=theta)
        refits += 1
        sigma = robust_scale(log_residuals(theta, ln_n, ln_d, ln_l)[0])
    return {"delta": delta, "theta": theta, "objective": objective, "n_refined": n_refined,
            "rule": f"matched: 1.345 x robust residual scale ({refits} refit{'s' if refits > 1 else ''})"}
