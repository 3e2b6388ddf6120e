"""Fitting scaling laws to run records: the public entry points.

    fit_power_law(x, y, irreducible=False)      y = (x_c / x)^alpha [+ E]
    fit_kaplan(runs_or_history, ...)            L(N), L(D), L(C_min), joint L(N, D)   (Kaplan et al. 2020)
    fit_chinchilla(runs, approach=1|2|3, ...)   compute-optimal allocation            (Hoffmann et al. 2022)

Each returns a `Fit` (fit_kaplan: a `FitSet` of them) holding parameters, 95% bootstrap intervals,
the points used and dropped, goodness of fit, residuals and `predict(...)`.
"""

from analysis.chinchilla import fit_chinchilla
from analysis.fit_result import Fit, FitSet
from analysis.kaplan import fit_kaplan
from analysis.power_law import fit_power_law

__all__ = ["Fit", "FitSet", "fit_chinchilla", "fit_kaplan", "fit_power_law"]
