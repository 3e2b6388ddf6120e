"""The `Fit` object every fitter returns, and the checks and bootstrap helpers they share.

A Fit follows scipy.optimize / statsmodels result objects: one object holds the parameters, their
95% bootstrap intervals, the points used (and the ones dropped, with the reason), goodness of fit,
residuals and `predict(...)`. Plotting lives in `analysis.plots`, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 1000


class Prediction(NamedTuple):
    """A law's prediction with its 95% interval (`Fit.predict(..., interval=True)`)."""

    predicted: Any
    lower: Any
    upper: Any


@dataclass(frozen=True, eq=False, repr=False)
class Fit:
    """A fitted law.

    law: short name ("L(N)", "Chinchilla approach 3", ...); formula: the law as text.
    inputs: the names `predict` takes, in order (e.g. ("N", "D")).
    params: point estimates, fitted parameters first, then quantities derived from them.
    intervals: the 95% percentile bootstrap interval of every entry of `params` (NaN when the fit
        was made with bootstrap=0).
    data: the points the fit used, one row each, with a `residual` column (ln observed - ln
        predicted; allocation fits have `residual_N_opt` and `residual_D_opt`).
    dropped: the records or points left out, with a `reason` column.
    quality: goodness of fit (r2_log and rmse_log in log space; the fitter's objective where it
        has one).
    settings: how the fit was made: which parameter count is N, which loss and FLOP columns,
        bootstrap replicates, seed, ...
    samples: the bootstrap replicates, one row each, columns as `params`.
    n_fitted: how many entries of `params` (the first) are free parameters; the rest are derived.
    sensitivity: how the fit moves when its choices change (`analysis.sensitivity`), or None;
        `repr` says in a line when it finds the fit fragile.
    """

    law: str
    formula: str
    inputs: tuple[str, ...]
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    data: pd.DataFrame
    dropped: pd.DataFrame
    quality: dict[str, float]
    settings: dict[str, Any]
    model: Callable[..., Any] = field(repr=False)
    allocation: Callable[..., Any] | None = field(default=None, repr=False)
    samples: pd.DataFrame | None = field(default=None, repr=False)
    n_fitted: int | None = None
    sensitivity: Any = field(default=None, repr=False)

    def predict(self, *args, interval: bool | str = False, **kwargs):
        """The law at the given inputs, by position or by name: `fit.predict(N=1e6, D=2e7)`.

        interval=True returns a `Prediction` (predicted, lower, upper) with the 95% prediction
        interval: the percentiles over bootstrap replicates of the replicate's law at the inputs
        times a residual drawn from the fit's (ln observed - ln predicted), scaled by
        sqrt(n / (n - n_fitted)) because fitted residuals are smaller than fresh ones. So the
        interval holds the parameters' uncertainty and the scatter of a new run about the law;
        interval="parameters" leaves the scatter out (where the law itself lies).
        """
        values = self._bind(args, kwargs)
        point = self.model(self.params, *values)
        if interval is False:
            return point
        require(interval in (True, "prediction", "parameters"),
                f"interval must be True, \"prediction\" or \"parameters\", got {interval!r}")
        lower, upper = self._bounds(values, scatter=interval != "parameters")
        return Prediction(point, lower, upper)

    @property
    def fragile(self) -> bool:
        """True when the sensitivity checks found a reason not to trust the fit (see `repr`)."""
        return self.sensitivity is not None and bool(self.sensitivity.fragile_reasons(self))

    def optimal_allocation(self, C):
        """(N_opt, D_opt) at compute C, for laws that imply a compute-optimal allocation."""
        if self.allocation is None:
            raise ValueError(f"{self.law} implies no compute-optimal allocation")
        return self.allocation(self.params, np.asarray(C, dtype=float))

    @property
    def residuals(self) -> pd.Series | pd.DataFrame:
        """ln(observed / predicted) of every point used."""
        cols = [c for c in self.data.columns if c.startswith("residual")]
        return self.data[cols[0]] if len(cols) == 1 else self.data[cols]

    @property
    def n_points(self) -> int:
        return len(self.data)

    def to_frame(self) -> pd.DataFrame:
        """One row: law, parameters with interval bounds (`<p>_lo`, `<p>_hi`), quality, settings."""
        row: dict[str, Any] = {"law": self.law, "formula": self.formula,
                               "n_points": self.n_points, "n_dropped": len(self.dropped)}
        for name, value in self.params.items():
            lo, hi = self.intervals[name]
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = value, lo, hi
        row.update(self.quality)
        row.update({k: v for k, v in self.settings.items() if np.isscalar(v) or v is None})
        return pd.DataFrame([row])

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items()
                             if k in ("N", "D", "C", "loss", "bootstrap"))
        lines = [f"{self.law}: {self.formula}",
                 f"  {self.n_points} points ({len(self.dropped)} dropped); {settings}",
                 f"  {'parameter':<12}{'value':>12}   95% interval"]
        for name, value in self.params.items():
            lo, hi = self.intervals[name]
            ci = "" if np.isnan(lo) else f"[{lo:.4g}, {hi:.4g}]"
            lines.append(f"  {name:<12}{value:>12.4g}   {ci}")
        lines.append("  " + ", ".join(f"{k}={v:.4g}" for k, v in self.quality.items()))
        if self.sensitivity is not None:
            reasons = self.sensitivity.fragile_reasons(self)
            if reasons:
                lines.append("  fragile: " + "; ".join(reasons))
        return "\n".join(lines)

    def _bounds(self, values: list[np.ndarray], scatter: bool) -> tuple[Any, Any]:
        require(self.samples is not None, f"{self.law}: no bootstrap replicates, so no interval "
                                          f"(fitted with bootstrap=0, or on too few points for one)")
        require("residual" in self.data, f"{self.law} predicts an allocation, not a loss: no prediction interval")
        shape = np.broadcast_shapes(*(v.shape for v in values))
        flat = [np.broadcast_to(v, shape).ravel()[None, :] for v in values]
        samples = self.samples.to_numpy(float)
        samples = samples[np.isfinite(samples[:, :self.n_fitted or samples.shape[1]]).all(axis=1)]
        require(len(samples) >= 2, f"{self.law}: fewer than 2 usable bootstrap replicates")
        replicates = {name: samples[:, i:i + 1] for i, name in enumerate(self.samples.columns)}
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_predicted = np.log(self.model(replicates, *flat))  # (replicates, points)
        if scatter:
            residual = self.data["residual"].to_numpy(float)
            residual = residual[np.isfinite(residual)]
            n, k = len(residual), self.n_fitted or 0
            inflation = np.sqrt(n / (n - k)) if n > k else 1.0
            rng = np.random.default_rng(int(self.settings.get("seed", 0) or 0))
            log_predicted = log_predicted + inflation * rng.choice(residual, size=log_predicted.shape)
        tail = 100 * (1 - CONFIDENCE) / 2
        lo, hi = np.exp(np.nanpercentile(log_predicted, [tail, 100 - tail], axis=0))
        if shape == ():
            return float(lo[0]), float(hi[0])
        return lo.reshape(shape), hi.reshape(shape)

    def _bind(self, args, kwargs) -> list[np.ndarray]:
        if len(args) > len(self.inputs):
            raise TypeError(f"{self.law} takes {len(self.inputs)} inputs {self.inputs}, got {len(args)}")
        values = dict(zip(self.inputs, args))
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise TypeError(f"{self.law} takes inputs {self.inputs}, not {name!r}")
            if name in values:
                raise TypeError(f"{name!r} given twice")
            values[name] = value
        missing = [n for n in self.inputs if n not in values]
        if missing:
            raise TypeError(f"{self.law} needs {missing}")
        return [np.asarray(values[n], dtype=float) for n in self.inputs]


class FitSet(Mapping):
    """Several fits of one data set (Kaplan's L(N), L(D), L(C_min), L(N, D)), by name.

    `skipped` holds the laws the data could not support, with the reason.
    """

    def __init__(self, fits: dict[str, Fit], skipped: dict[str, str] | None = None):
        self._fits = dict(fits)
        self.skipped = dict(skipped or {})

    def __getitem__(self, name: str) -> Fit:
        return self._fits[name]

    def __iter__(self):
        return iter(self._fits)

    def __len__(self) -> int:
        return len(self._fits)

    def to_frame(self) -> pd.DataFrame:
        """One row per fit."""
        return pd.concat([f.to_frame() for f in self._fits.values()], ignore_index=True)

    def __repr__(self) -> str:
        parts = [repr(f) for f in self._fits.values()]
        parts += [f"{name}: skipped ({reason})" for name, reason in self.skipped.items()]
        return "\n\n".join(parts)


def as_fit_list(fits: Fit | Iterable[Fit] | Mapping[str, Fit]) -> list[Fit]:
    if isinstance(fits, Fit):
        return [fits]
    if isinstance(fits, Mapping):
        return list(fits.values())
    return list(fits)


# ---------------------------------------------------------------------------------------------
# Checks shared by the fitters: every message names the problem, so a user can fix the data.

def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def positive_finite(name: str, values) -> np.ndarray:
    """`values` as a 1-D float array; a ValueError naming `name` if any is non-finite or <= 0."""
    array = np.asarray(values, dtype=float).ravel()
    bad = ~np.isfinite(array)
    require(not bad.any(), f"{name} has {bad.sum()} non-finite value(s)")
    require((array > 0).all(), f"{name} must be positive to be fitted in log space, "
                               f"got minimum {array.min():.4g}")
    return array


def enough_points(n_points: int, n_params: int, what: str) -> None:
    require(n_points >= n_params,
            f"{what}: {n_points} point(s) for {n_params} parameters; need at least {n_params}")


# ---------------------------------------------------------------------------------------------
# Bootstrap helpers

def resample_counts(n_items: int, n_replicates: int, seed: int) -> np.ndarray:
    """How many times each item is drawn in each bootstrap replicate: (n_replicates, n_items).

    Counts instead of index arrays: a resample is a weighted fit, which vectorises.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_replicates).astype(float)


def intervals_from(samples: pd.DataFrame | None, names: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Percentile intervals at CONFIDENCE; NaN when there are fewer than 2 good replicates."""
    tail = 100 * (1 - CONFIDENCE) / 2
    out = {}
    for name in names:
        column = np.array([]) if samples is None else samples[name].to_numpy(dtype=float)
        column = column[np.isfinite(column)]
        if len(column) < 2:
            out[name] = (np.nan, np.nan)
        else:
            lo, hi = np.percentile(column, [tail, 100 - tail])
            out[name] = (float(lo), float(hi))
    return out


def log_quality(log_observed: np.ndarray, log_predicted: np.ndarray) -> dict[str, float]:
    """r2 and root-mean-square error of the fit in log space (where every law here is fitted)."""
    residual = log_observed - log_predicted
    total = np.sum((log_observed - log_observed.mean()) ** 2)
    r2 = 1 - np.sum(residual ** 2) / total if total > 0 else np.nan
    return {"r2_log": float(r2), "rmse_log": float(np.sqrt(np.mean(residual ** 2)))}


def dropped_frame(rows: list[pd.DataFrame]) -> pd.DataFrame:
    rows = [r for r in rows if len(r)]
    if not rows:
        return pd.DataFrame({"reason": pd.Series(dtype=str)})
    return pd.concat(rows, ignore_index=True)
