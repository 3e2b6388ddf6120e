"""Fits against the known answers, as a figure (`truth_figure`).

For sweeps on a source whose answers are known (analysis.truth): one panel per kind of known
parameter (the irreducible loss E, the data exponent, the parameter exponent), each fitted value
with its 95% bootstrap interval against its true value, one point per sweep and law, beside the
line fitted = true. Sweeps of one source at several truths (facts at alpha = 0.5 and 0.8) show
whether the fitted exponent moves with the truth, and by how much.

    from analysis.truth import compare_with_truth
    table = compare_with_truth(fits, runs).assign(sweep="facts-a05")
    fig = truth_figure(table)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PANELS = (("val_loss_optimal", "Irreducible loss E (nats/token)"),
          ("true_exponent_data", "Data exponent (of the excess loss)"),
          ("true_exponent_params", "Parameter exponent (of the excess loss)"))
MARKERS = "osD^vP"


def truth_figure(table: pd.DataFrame) -> Figure:
    """`table`: rows of analysis.truth.compare_with_truth (optionally with a `sweep` column), one or
    several sweeps concatenated. Raises ValueError when it has no row."""
    if table.empty:
        raise ValueError("no fitted parameter with a known truth")
    table = table.assign(sweep=table["sweep"] if "sweep" in table else "")
    panels = [(column, label) for column, label in PANELS if (table["truth_column"] == column).any()]
    fig = Figure(figsize=(4.4 * len(panels), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    keys = list(dict.fromkeys(zip(table["sweep"], table["law"])))
    colors = {sweep: f"C{i}" for i, sweep in enumerate(dict.fromkeys(table["sweep"]))}
    for ax, (column, label) in zip(axes, panels):
        rows = table.loc[table["truth_column"] == column]
        values = list(rows["truth"]) + list(rows["fitted"])
        for i, (sweep, law) in enumerate(keys):
            row = rows.loc[(rows["sweep"] == sweep) & (rows["law"] == law)]
            if row.empty:
                continue
            row = row.iloc[0]
            lower, upper = row["lower"], row["upper"]
            has_interval = bool(np.isfinite(lower) and np.isfinite(upper))
            if has_interval:
                values += [lower, upper]
            ax.errorbar([row["truth"]], [row["fitted"]],
                        yerr=[[row["fitted"] - lower], [upper - row["fitted"]]] if has_interval else None,
                        fmt=MARKERS[keys.index((sweep, law)) % len(MARKERS)], color=colors[sweep], ms=7,
                        capsize=4, lw=1.3, label=f"{sweep} {law}".strip() + f": {row['fitted']:.3g} vs "
                                                                             f"{row['truth']:.3g}")
        low, high = min(values), max(values)
        pad = 0.08 * (high - low) or 0.1 * abs(high) or 0.1
        span = [low - pad, high + pad]
        ax.plot(span, span, color="0.4", ls="--", lw=1, label="fitted = true")
        ax.set_xlim(span)
        ax.set_ylim(span)
        ax.set_aspect("equal")
        ax.set_xlabel(f"True value: {label}")
        ax.set_ylabel("Fitted value, bars: 95% bootstrap interval")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle("Fits against the known answers of the source", fontsize=11)
    return fig
