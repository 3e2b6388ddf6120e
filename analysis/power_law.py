"""`fit_power_law`: y = (x_c / x)^alpha [+ E], fitted in log space, with bootstrap intervals.

Kaplan et al. 2020 write every single-variable law this way (L(N) = (N_c/N)^alpha_N, eq. 1.1-1.3),
so x_c is the scale at which the law reaches 1 and alpha > 0 means y falls as x grows.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from analysis.fit_result import (DEFAULT_BOOTSTRAP, Fit, dropped_frame, enough_points, intervals_from,
                                 log_quality, positive_finite, require, resample_counts)
from analysis.least_squares import levenberg_marquardt, log_sum_exp_weights
from analysis.seeds import cell_weights, two_stage_counts


def param_names(x_name: str, irreducible: bool) -> list[str]:
    names = ["x_c", "alpha"] if x_name == "x" else [f"{x_name}_c", f"alpha_{x_name}"]
    return names + (["E"] if irreducible else [])


def fit_power_law(x, y, irreducible: bool = False, *, bootstrap: int = DEFAULT_BOOTSTRAP,
                  seed: int = 0, x_name: str = "x", y_name: str = "y",
                  weights=None, law: str | None = None, cells=None) -> Fit:
    """Fit y = (x_c / x)^alpha (+ E when `irreducible`) by least squares on ln y.

    Without E the fit is linear regression of ln y on ln x (closed form); with E it is nonlinear,
    ln y = logaddexp(alpha (ln x_c - ln x), ln E), solved by Levenberg-Marquardt from several
    starts (E at fractions of min y). `bootstrap` replicates resample the points with replacement
    (seeded by `seed`); `weights` are per-point multiplicities (used by the fitters that bootstrap
    whole runs). `x_name` names the parameters: x_name="N" gives N_c and alpha_N. With as many
    points as parameters the curve passes through every point and the intervals are NaN.
    `cells`: one code per point naming its grid cell (analysis.seeds): the runs of a cell (its
    seeds) are weighted 1/n, so the fit is to each cell's mean, and the bootstrap resamples cells,
    then seeds within them.
    """
    x = positive_finite(x_name, x)
    y = positive_finite(y_name, y)
    require(len(x) == len(y), f"{x_name} and {y_name} differ in length ({len(x)} vs {len(y)})")
    names = param_names(x_name, irreducible)
    what = f"power law {y_name}({x_name})"
    enough_points(len(x), len(names), what)
    n_distinct = np.unique(x).size
    require(n_distinct >= 2, f"{what}: a single distinct {x_name} ({x[0]:.4g}); a power law needs "
                             f"at least two")
    require(n_distinct >= len(names), f"{what}: {n_distinct} distinct {x_name} values for "
                                      f"{len(names)} parameters")
    require(bootstrap >= 0, f"bootstrap must be >= 0, got {bootstrap}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=float)
    if cells is not None:
        cells = np.asarray(cells)
        require(len(cells) == len(x), f"cells and {x_name} differ in length ({len(cells)} vs {len(x)})")
        w = w * cell_weights(cells)
    lx, ly = np.log(x), np.log(y)

    solve = _solve_irreducible if irreducible else _solve_pure
    theta = solve(lx, ly, w[None, :])[0]
    samples = None
    n_points = len(x) if cells is None else np.unique(cells).size
    if bootstrap and n_points > len(names):  # with as many points as parameters the fit is exact: no interval
        counts = (resample_counts(len(x), bootstrap, seed) * w if cells is None
                  else two_stage_counts(cells, bootstrap, seed) * (w / cell_weights(cells)))
        boot = solve(lx, ly, counts, start=theta)
        distinct = np.array([(np.unique(lx[c > 0]).size >= len(names)) for c in counts])
        boot[~distinct] = np.nan
        samples = pd.DataFrame(_to_params(boot, irreducible), columns=names)
    params = dict(zip(names, _to_params(theta[None, :], irreducible)[0]))
    log_pred = np.log(_power_law(params, x, names))
    formula = f"{y_name} = ({names[0]}/{x_name})^{names[1]}" + (" + E" if irreducible else "")
    return Fit(
        law=law or f"{y_name}({x_name})",
        formula=formula,
        inputs=(x_name,),
        params={k: float(v) for k, v in params.items()},
        intervals=intervals_from(samples, names),
        data=pd.DataFrame({x_name: x, y_name: y, "residual": ly - log_pred}),
        dropped=dropped_frame([]),
        quality=log_quality(ly, log_pred),
        settings={"bootstrap": bootstrap, "seed": seed, "irreducible": irreducible,
                  **({"cells": int(np.unique(cells).size)} if cells is not None else {})},
        model=partial(_model, names=tuple(names)),
        samples=samples,
        n_fitted=len(names),
    )


def _model(params, x, names):
    return _power_law(params, x, names)


def _power_law(params, x, names):
    x_c, alpha = params[names[0]], params[names[1]]
    e = params[names[2]] if len(names) == 3 else 0.0
    return (x_c / np.asarray(x, dtype=float)) ** alpha + e


def _to_params(theta: np.ndarray, irreducible: bool) -> np.ndarray:
    """Internal (intercept u = alpha ln x_c, alpha[, ln E]) -> (x_c, alpha[, E])."""
    u, alpha = theta[:, 0], theta[:, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x_c = np.exp(u / alpha)
    cols = [x_c, alpha] + ([np.exp(theta[:, 2])] if irreducible else [])
    return np.column_stack(cols)


def _solve_pure(lx, ly, w, start=None):
    """Weighted linear regression ln y = u - alpha ln x for every row of weights w (B, n)."""
    total = w.sum(axis=1)
    mx = (w @ lx) / total
    my = (w @ ly) / total
    dx = lx[None, :] - mx[:, None]
    var = np.einsum("bn,bn->b", w, dx * dx)
    cov = np.einsum("bn,bn->b", w, dx * (ly[None, :] - my[:, None]))
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(var > 0, cov / var, np.nan)
    return np.column_stack([my - slope * mx, -slope])


def _solve_irreducible(lx, ly, w, start=None):
    """Levenberg-Marquardt on ln y = logaddexp(u - alpha ln x, e), e = ln E, for every row of w."""
    def residuals(theta):
        u, alpha, e = (theta[:, i:i + 1] for i in range(3))
        t1 = u - alpha * lx[None, :]
        t2 = np.broadcast_to(e, t1.shape)
        lse, (s1, s2) = log_sum_exp_weights(t1, t2)
        jac = np.stack([s1, -s1 * lx[None, :], s2], axis=-1)
        return lse - ly[None, :], jac

    if start is None:
        # Starts: E at fractions of min y, the rest by linear regression on ln(y - E).
        y = np.exp(ly)
        starts = []
        for frac in (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99):
            e0 = max(frac, 1e-3) * y.min()
            u, alpha = _solve_pure(lx, np.log(y - frac * y.min()), w)[0]
            starts.append([u, alpha, np.log(e0)])
        theta, cost = levenberg_marquardt(residuals, np.array(starts), w[0])
        return theta[[np.argmin(cost)]]
    theta0 = np.repeat(start[None, :], len(w), axis=0)
    theta, _ = levenberg_marquardt(residuals, theta0, w)
    return theta
