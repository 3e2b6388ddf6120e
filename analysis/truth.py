"""A fit against the known answers of its records (`compare_with_truth`).

A source whose optimal loss and exponents are known (the `facts` source, after Hutter 2021,
"Learning Curve Theory", and Michaud et al. 2023, "The Quantization Model of Neural Scaling"; the
`synthetic` source knows its optimal loss only) records them in every row: `val_loss_optimal`,
`true_exponent_data`, `true_exponent_params` (NaN where unknown). Fitting such records and reading
each fitted parameter against its truth tests the whole pipeline, sweep to fit, against a known
answer.

    from analysis.truth import compare_with_truth
    table = compare_with_truth(fit_chinchilla(runs, approach=3), runs)

Which parameter is which truth (`TRUTH`; pass `truth=` for another naming): the irreducible loss
`E` is `val_loss_optimal`; an exponent of the data size (`alpha_D` of L(D) and the joint Kaplan law,
`beta` of Chinchilla's approach 3) is `true_exponent_data`; an exponent of the parameter count
(`alpha_N`; `alpha` of approach 3) is `true_exponent_params`. The exponents are those of the
*excess* loss, so only a law with an irreducible term `E` (approach 3, or `fit_power_law(...,
irreducible=True)`) is compared: a law without one (Kaplan's L(N), L(D) and L(N, D)) is skipped, since
its exponent describes the whole loss, floor included, and reading it against the truth would
measure the floor, not the fitter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from analysis.fit_result import CONFIDENCE, Fit, as_fit_list

TRUTH = {"E": "val_loss_optimal", "alpha_D": "true_exponent_data", "beta": "true_exponent_data",
         "alpha_N": "true_exponent_params", "alpha": "true_exponent_params"}
COLUMNS = ["law", "parameter", "truth_column", "truth", "fitted", "lower", "upper", "error", "relative_error",
           "covered"]


def known_truth(runs: pd.DataFrame, column: str, rtol: float = 1e-6) -> float:
    """The one value of a truth column over the records; NaN when absent or unknown. Raises
    ValueError when the records disagree (runs of different sources or validation windows)."""
    if column not in runs:
        return float("nan")
    values = pd.to_numeric(runs[column], errors="coerce").to_numpy(float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan")
    low, high = values.min(), values.max()
    if high - low > rtol * max(abs(high), abs(low), 1e-300):
        raise ValueError(f"records disagree on {column}: from {low:.6g} to {high:.6g}; compare runs of one "
                         "source and one validation set")
    return float(np.median(values))


def has_known_floor(runs: pd.DataFrame) -> bool:
    """Whether the records know their source's optimal loss (a synthetic or facts sweep): then a
    Kaplan grid is also fitted with Chinchilla's approach 3, whose E, alpha and beta are those of
    the excess loss and can be read against the truth."""
    return "val_loss_optimal" in runs and bool(np.isfinite(pd.to_numeric(runs["val_loss_optimal"],
                                                                          errors="coerce")).any())


def compare_with_truth(fit: Fit | Iterable[Fit] | Mapping[str, Fit], runs: pd.DataFrame, *,
                       truth: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per fitted parameter whose true value the records know: the fitted value, its 95%
    interval (`lower`, `upper`; NaN for a fit made without bootstrap), `error` = fitted - truth,
    `relative_error` = error / truth, and `covered` (whether the interval holds the truth; None
    without an interval). `fit` may be one Fit or several (a FitSet); `truth` maps parameter names
    to truth columns (default `TRUTH`). Fits without an irreducible term `E` are skipped (see the
    module's docstring). Raises ValueError when no parameter's truth is known."""
    mapping = dict(TRUTH if truth is None else truth)
    rows = []
    for f in as_fit_list(fit):
        if "E" not in f.params:  # no irreducible term: its exponents are not those of the excess loss
            continue
        for name, column in mapping.items():
            if name not in f.params:
                continue
            true_value = known_truth(runs, column)
            if not np.isfinite(true_value):
                continue
            fitted = float(f.params[name])
            lower, upper = (float(v) for v in f.intervals.get(name, (np.nan, np.nan)))
            has_interval = np.isfinite(lower) and np.isfinite(upper)
            error = fitted - true_value
            rows.append({"law": f.law, "parameter": name, "truth_column": column, "truth": true_value,
                         "fitted": fitted, "lower": lower, "upper": upper, "error": error,
                         "relative_error": error / true_value if true_value else np.nan,
                         "covered": bool(lower <= true_value <= upper) if has_interval else None})
    if not rows:
        names = sorted({n for f in as_fit_list(fit) for n in f.params})
        raise ValueError(f"no fitted parameter has a known truth in these records (parameters {names}, of laws "
                         f"with an irreducible term E; truth columns {sorted(set(mapping.values()))} absent or NaN)")
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["confidence"] = CONFIDENCE
    return table
