"""How much compute a new recipe is worth: the compute multiplier of sweep B over sweep A.

    m(C) = C_A(L*_B(C)) / C

L*_X(C) is sweep X's compute-optimal loss at compute C by its approach-3 fit (the least of
E + A/N^alpha + B/D^beta over C = 6ND, Hoffmann et al. 2022 eq. 4), and C_A(L) the compute at
which A's frontier reaches loss L. So m(C) = 2 says that A needs twice B's compute to match B's
loss at C: "the new recipe is worth 2x compute". For this law the frontier is closed form,

    L*(C) = E + K (C/6)^(-gamma),  gamma = alpha beta / (alpha + beta),
    K = A G^-alpha + B G^beta,  G = (alpha A / (beta B))^(1 / (alpha + beta)),

and so is its inverse, C(L) = 6 ((L - E) / K)^(-1/gamma); where B's loss is at or below A's E,
no compute is enough and m is infinite. m is reported at each of B's IsoFLOP budgets and overall
(the geometric mean over them), each with a 95% interval from pairing the bootstrap replicates of
the two fits (independent resamples of independent sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.chinchilla import fit_chinchilla
from analysis.fit_result import CONFIDENCE, DEFAULT_BOOTSTRAP, Fit, require
from analysis.select import final_rows

N_DEFAULT_BUDGETS = 5


@dataclass(frozen=True, eq=False)
class Comparison:
    """B against A: `by_budget` has one row per budget C of B (budget, loss_b = B's compute-optimal
    loss at C, compute_a = the compute A needs for it, multiplier = compute_a / C, lower, upper);
    `multiplier` and `interval` are the geometric mean over budgets and its 95% interval;
    `samples` the bootstrap replicates of every budget's multiplier (replicates, budgets)."""

    by_budget: pd.DataFrame
    multiplier: float
    interval: tuple[float, float]
    fit_a: Fit
    fit_b: Fit
    samples: np.ndarray
    names: tuple[str, str] = ("A", "B")

    def to_frame(self) -> pd.DataFrame:
        """`by_budget` with an "overall" row (budget NaN) for the geometric mean."""
        rows = self.by_budget.assign(budget_label=[f"{c:.3g}" for c in self.by_budget["budget"]])
        overall = pd.DataFrame([{"budget": np.nan, "budget_label": "overall (geometric mean)",
                                 "multiplier": self.multiplier, "lower": self.interval[0],
                                 "upper": self.interval[1]}])
        return pd.concat([rows, overall], ignore_index=True)

    def __repr__(self) -> str:
        a, b = self.names
        lines = [f"Compute multiplier of {b} over {a} (the compute {a} needs to reach {b}'s loss, over "
                 f"{b}'s compute; Chinchilla approach 3 fits, C = 6ND)",
                 f"  {'budget C':>12} {'loss ' + b:>10} {'C for ' + a:>12} {'multiplier':>11}   95% interval"]
        for _, row in self.by_budget.iterrows():
            lines.append(f"  {row['budget']:>12.3g} {row['loss_b']:>10.4f} {row['compute_a']:>12.3g} "
                         f"{row['multiplier']:>11.3g}   [{row['lower']:.3g}, {row['upper']:.3g}]")
        lines.append(f"  overall (geometric mean over {len(self.by_budget)} budgets): {self.multiplier:.3g}x "
                     f"[{self.interval[0]:.3g}, {self.interval[1]:.3g}]")
        return "\n".join(lines)


def compare(records_a: pd.DataFrame, records_b: pd.DataFrame, *, budgets=None, bootstrap: int = DEFAULT_BOOTSTRAP,
            seed: int = 0, names: tuple[str, str] = ("A", "B"), **fit_options) -> Comparison:
    """The compute multiplier of sweep B over sweep A (module docstring), from approach-3 fits.

    budgets: the compute values to compare at; default B's IsoFLOP budgets (`flops_budget`), or
        N_DEFAULT_BUDGETS log-spaced values over B's runs' final FLOPs when it has none. They are
        read as C = 6ND, the law's own compute.
    bootstrap: replicates of each fit (A with `seed`, B with `seed + 1`); at least 2.
    fit_options: passed to fit_chinchilla for both sweeps (the sensitivity checks are off unless
        asked for: the multiplier does not use them).
    """
    require(bootstrap >= 2, f"compare's intervals need bootstrap >= 2, got {bootstrap}")
    fit_options = {"sensitivity": False, **fit_options}
    fit_a = fit_chinchilla(records_a, approach=3, bootstrap=bootstrap, seed=seed, **fit_options)
    fit_b = fit_chinchilla(records_b, approach=3, bootstrap=bootstrap, seed=seed + 1, **fit_options)
    budgets = _budgets(records_b) if budgets is None else np.sort(np.asarray(budgets, float).ravel())
    require(len(budgets) > 0 and np.all(np.isfinite(budgets)) and np.all(budgets > 0),
            "budgets must be positive FLOP counts")
    loss_b = frontier_loss(fit_b.params, budgets)
    compute_a = compute_to_reach(fit_a.params, loss_b)
    multiplier = compute_a / budgets

    samples_a, samples_b = (_columns(f.samples) for f in (fit_a, fit_b))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        boot = compute_to_reach(samples_a, frontier_loss(samples_b, budgets[None])) / budgets[None]
        boot = boot[~np.isnan(boot).any(axis=1)]  # replicates whose fit failed (NaN parameters)
        require(len(boot) >= 2, "fewer than 2 bootstrap replicates of both fits are usable")
        overall_boot = np.exp(np.log(boot).mean(axis=1))
        overall = float(np.exp(np.log(multiplier).mean()))
    lower, upper = _percentile_interval(boot)
    by_budget = pd.DataFrame({"budget": budgets, "loss_b": loss_b, "compute_a": compute_a,
                              "multiplier": multiplier, "lower": lower, "upper": upper})
    (overall_lo,), (overall_hi,) = _percentile_interval(overall_boot[:, None])
    return Comparison(by_budget=by_budget, multiplier=overall, interval=(float(overall_lo), float(overall_hi)),
                      fit_a=fit_a, fit_b=fit_b, samples=boot, names=tuple(names))


def frontier_loss(params, C):
    """L*(C): the approach-3 law's least loss at compute C = 6ND (module docstring)."""
    E, gamma, K = _frontier(params)
    return E + K * (np.asarray(C, float) / 6) ** -gamma


def compute_to_reach(params, loss):
    """The compute C at which the approach-3 frontier reaches `loss`; inf where loss <= E."""
    E, gamma, K = _frontier(params)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        reducible = np.asarray(loss, float) - E
        return np.where(reducible > 0, 6 * (np.maximum(reducible, 1e-300) / K) ** (-1 / gamma), np.inf)


def _frontier(params):
    alpha, beta = params["alpha"], params["beta"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        G = (alpha * params["A"] / (beta * params["B"])) ** (1 / (alpha + beta))
        return params["E"], alpha * beta / (alpha + beta), params["A"] * G ** -alpha + params["B"] * G ** beta


def _columns(samples: pd.DataFrame | None) -> dict[str, np.ndarray]:
    require(samples is not None, "compare needs bootstrap replicates of both fits (more than 5 runs each)")
    return {name: samples[name].to_numpy(float)[:, None] for name in ("E", "A", "B", "alpha", "beta")}


def _percentile_interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the 95% percentile interval; "inverted_cdf" picks replicate values, never an
    interpolation, so infinite multipliers (B below A's floor) stay infinite instead of NaN."""
    tail = (1 - CONFIDENCE) / 2
    lower, upper = np.quantile(samples, [tail, 1 - tail], axis=0, method="inverted_cdf")
    return lower, upper


def _budgets(records: pd.DataFrame) -> np.ndarray:
    final = final_rows(records)
    if "flops_budget" in final:
        budgets = np.unique(pd.to_numeric(final["flops_budget"], errors="coerce").dropna())
        if len(budgets):
            return budgets
    flops = pd.to_numeric(final["flops"], errors="coerce").dropna() if "flops" in final else pd.Series([])
    require(len(flops) > 0, "records_b has neither flops_budget nor flops: pass budgets=")
    return np.geomspace(flops.min(), flops.max(), N_DEFAULT_BUDGETS)
