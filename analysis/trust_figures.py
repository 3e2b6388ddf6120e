"""Figures that say how far to trust a fit. Each takes results and returns a matplotlib Figure
(built without pyplot, as in analysis.plots, which re-exports them):

    audit_figure(audit, fit)          observed against predicted loss of the held-out runs of an
                                      extrapolation audit, with their 95% prediction intervals
    e_profile_figure(fit)             approach 3's objective over a fixed E, with the bootstrap's
                                      spread, beside the leave-one-group-out refits
    compare_figure(comparison)        the compute multiplier of one sweep over another per budget
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from analysis.fit_result import Fit
from analysis.sensitivity import CHECKED

FIT_COLOR = "#d62728"
HELD_COLOR = "#1f77b4"
TRAIN_COLOR = "0.6"
TEX = {"E": "E", "alpha": r"\alpha", "beta": r"\beta", "a": "a"}


def audit_figure(audit: pd.DataFrame, fit: Fit | None = None) -> Figure:
    """Observed against predicted loss: every held-out run with its 95% prediction interval (a
    horizontal bar), the runs the law was fitted on in grey when `fit` is given, and the line
    observed = predicted. The title gives the median absolute error and the coverage."""
    loss = audit.columns[4]
    attrs = audit.attrs
    fig = Figure(figsize=(7.2, 6), layout="constrained")
    ax = fig.subplots()
    values = [audit[loss], audit["lower"], audit["upper"]]
    if fit is not None:
        fitted = fit.predict(fit.data["N"], fit.data["D"])
        ax.scatter(fitted, fit.data["L"], s=14, color=TRAIN_COLOR, label=f"points fitted ({fit.n_points})", zorder=2)
        values += [fit.data["L"], pd.Series(fitted)]
    inside = audit["inside"].to_numpy(bool)
    for mask, marker, label in ((inside, "o", "held out, inside its interval"),
                                (~inside, "X", "held out, outside its interval")):
        if not mask.any():
            continue
        rows = audit.loc[mask]
        ax.errorbar(rows["predicted"], rows[loss], xerr=[rows["predicted"] - rows["lower"],
                                                         rows["upper"] - rows["predicted"]],
                    fmt=marker, color=HELD_COLOR, ms=7, capsize=3, lw=1.2, zorder=3,
                    label=f"{label} ({mask.sum()})")
    low = min(float(np.min(v)) for v in values) / 1.02
    high = max(float(np.max(v)) for v in values) * 1.02
    ax.plot([low, high], [low, high], color=FIT_COLOR, ls="--", lw=1.3, label="observed = predicted")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    for axis_scale in (ax.set_xscale, ax.set_yscale):
        axis_scale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(LogFormatter())
        axis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
    ax.set_xlabel("Predicted loss (nats/token), bars: 95% prediction interval")
    ax.set_ylabel("Observed validation loss (nats/token)")
    ax.set_title(f"{attrs.get('law', 'fit')} fitted below {attrs.get('holdout_flops', np.nan):.3g} FLOPs: "
                 f"{attrs.get('n_holdout', len(audit))} held-out runs\nmedian |error| "
                 f"{attrs.get('median_abs_error', np.nan):.1%}, {attrs.get('coverage', np.nan):.0%} inside "
                 f"their 95% interval", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.2)
    return fig


def e_profile_figure(fit: Fit) -> Figure:
    """Left: the least objective with E fixed, less the fit's, over 0 <= E < the least observed
    loss, with the bootstrap's spread (the tolerance), the E values within it, the fitted E and its
    95% bootstrap interval. Right: every checked parameter of each leave-one-group-out refit and
    at the other Huber delta (the paper's, or the matched one), relative to the fit, against the
    fit's 95% interval."""
    sensitivity = fit.sensitivity
    if sensitivity is None:
        raise ValueError(f"{fit.law} has no sensitivity checks (fit approach 3 with bootstrap > 0)")
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax_p, ax_l = fig.subplots(1, 2, width_ratios=[1.3, 1])
    profile = sensitivity.e_profile
    ax_p.plot(profile["E"], profile["rise"], color="black", marker="o", ms=3, lw=1.4,
              label="least objective at fixed E, less the fit's")
    if np.isfinite(sensitivity.e_tolerance):
        ax_p.axhline(sensitivity.e_tolerance, color=HELD_COLOR, ls="--", lw=1.2,
                     label="bootstrap's spread (median rise at the replicates)")
    lo, hi = sensitivity.e_plausible
    ax_p.axvspan(lo, hi, color=HELD_COLOR, alpha=0.12, label=f"E within it: [{lo:.3g}, {hi:.3g}]")
    ax_p.axvline(fit.params["E"], color=FIT_COLOR, lw=1.6, label=f"fitted E = {fit.params['E']:.3g}")
    e_lo, e_hi = fit.intervals["E"]
    if np.isfinite(e_lo):
        for edge in (e_lo, e_hi):
            ax_p.axvline(edge, color=FIT_COLOR, lw=0.9, ls=":")
        ax_p.plot([], [], color=FIT_COLOR, lw=0.9, ls=":", label=f"95% bootstrap interval [{e_lo:.3g}, {e_hi:.3g}]")
    ax_p.set_xlim(0, sensitivity.e_range[1])
    ax_p.set_ylim(bottom=0, top=max(float(profile["rise"].max()), 3 * sensitivity.e_tolerance
                                    if np.isfinite(sensitivity.e_tolerance) else 0) * 1.05 or 1)
    ax_p.set_xlabel(f"Irreducible loss E (nats/token), up to the least observed loss {sensitivity.e_range[1]:.3g}")
    ax_p.set_ylabel(f"Rise of the Huber objective (delta = {fit.settings.get('huber_delta', np.nan):.3g})")
    verdict = {True: "E is identified", False: "E is NOT identified by these runs",
               None: "no bootstrap: identification unknown"}[sensitivity.e_identified]
    ax_p.set_title(f"Profile over a fixed E: {verdict}", fontsize=10)
    ax_p.legend(fontsize=8, loc="upper center")
    ax_p.grid(True, alpha=0.2)

    rows = range(len(CHECKED))
    for i, name in enumerate(CHECKED):
        value = fit.params[name]
        lo, hi = fit.intervals[name]
        if np.isfinite(lo):
            ax_l.plot([lo / value - 1, hi / value - 1], [i, i], color=FIT_COLOR, lw=6, alpha=0.25,
                      solid_capstyle="butt", label="95% bootstrap interval" if i == 0 else None)
        left_out = sensitivity.leave_one_out[name].to_numpy(float) / value - 1
        ax_l.scatter(left_out, np.full(len(left_out), i), color=HELD_COLOR, s=22, zorder=3,
                     label=f"one {sensitivity.group} left out" if i == 0 else None)
        other = sensitivity.deltas.iloc[1]  # row 0 is the fit's own delta
        ax_l.scatter(float(other[name]) / value - 1, i, marker="D", color="black", s=30, zorder=4,
                     label=f"at the {other['rule']} delta = {other['delta']:.3g}" if i == 0 else None)
    ax_l.axvline(0, color="black", lw=0.8)
    ax_l.set_yticks(list(rows), [f"${TEX[name]}$ = {fit.params[name]:.3g}" for name in CHECKED])
    ax_l.set_ylim(len(CHECKED) + 0.3, -0.5)  # top to bottom, with room below the last row for the legend
    ax_l.set_xlabel("Relative to the fit (value / fitted - 1)")
    ax_l.set_title(f"Leave one {sensitivity.group} out ({len(sensitivity.leave_one_out)} refits) and Huber's delta",
                   fontsize=10)
    ax_l.legend(fontsize=8, loc="lower right")
    ax_l.grid(True, axis="x", alpha=0.2)
    return fig


def compare_figure(comparison) -> Figure:
    """The compute multiplier of B over A at each of B's budgets with its 95% interval, and the
    overall multiplier (geometric mean) as a band."""
    frame = comparison.by_budget
    a, b = comparison.names
    fig = Figure(figsize=(7.2, 4.8), layout="constrained")
    ax = fig.subplots()
    upper = np.where(np.isfinite(frame["upper"]), frame["upper"], np.nan)
    ax.errorbar(frame["budget"], frame["multiplier"], yerr=[frame["multiplier"] - frame["lower"],
                                                            np.nan_to_num(upper - frame["multiplier"])],
                fmt="o", color=HELD_COLOR, capsize=3, label="at each budget of " + b)
    lo, hi = comparison.interval
    ax.axhline(comparison.multiplier, color=FIT_COLOR, lw=1.5,
               label=f"overall {comparison.multiplier:.3g}x [{lo:.3g}, {hi:.3g}]")
    if np.isfinite(hi):
        ax.axhspan(lo, hi, color=FIT_COLOR, alpha=0.12)
    ax.axhline(1, color="black", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"Compute C of {b} (FLOPs, read as 6ND)")
    ax.set_ylabel(f"Compute multiplier: C {a} needs / C {b} spent")
    ax.set_title(f"{b} over {a}: the compute {a} needs to reach {b}'s loss", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return fig
