"""Fitting scaling laws to run records: the public entry points.

    fit_power_law(x, y, irreducible=False)      y = (x_c / x)^alpha [+ E]
    fit_kaplan(runs_or_history, ...)            L(N), L(D), L(C_min), joint L(N, D)   (Kaplan et al. 2020)
    fit_chinchilla(runs, approach=1|2|3, ...)   compute-optimal allocation            (Hoffmann et al. 2022)
    fit_data_constrained(runs, ...)             L(N, D') with repeated data's decay R*_D (Muennighoff et al. 2023)
    fit_conventions(records, law, ...)          a law under each parameter and compute count, side by side
    extrapolation_audit(runs, law=..., holdout_flops=C)   fit below C, predict above, with intervals

Each fitter returns a `Fit` (fit_kaplan: a `FitSet` of them) holding parameters, 95% bootstrap
intervals, the points used and dropped, goodness of fit, residuals and `predict(...)` (with
`interval=True`, the 95% prediction interval). An approach-3 fit also carries `fit.sensitivity`
(analysis.sensitivity): the paper's Huber delta against the matched one, the profile over E, and
leave-one-group-out refits. `analysis.compare(runs_a, runs_b)` gives one sweep's compute
multiplier over another's.
"""

from analysis.audit import audit_summary, extrapolation_audit
from analysis.chinchilla import fit_chinchilla
from analysis.conventions import fit_conventions
from analysis.data_constrained import fit_data_constrained
from analysis.fit_result import Fit, FitSet, Prediction
from analysis.kaplan import fit_kaplan
from analysis.power_law import fit_power_law
from analysis.sensitivity import Sensitivity, approach3_sensitivity

__all__ = ["Fit", "FitSet", "fit_conventions", "Prediction", "Sensitivity", "approach3_sensitivity", "audit_summary",
           "extrapolation_audit", "fit_chinchilla", "fit_data_constrained", "fit_kaplan", "fit_power_law"]
