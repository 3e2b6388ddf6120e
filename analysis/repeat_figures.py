"""Repeated data: loss against epochs at fixed compute, with the data-constrained law through it.

    epochs_figure(runs, fit)   left: each model size's final loss against the epochs over its unique
                               data (D / U_D) at one number of training tokens D (so one compute
                               budget C = 6ND per line), the fitted law's prediction dashed beside
                               the points; right: the effective data D' / U_D that the fit gives
                               repeated tokens, against fresh data's D / U_D

After Muennighoff et al. 2023 Fig. 3 and 5. Draws with analysis.plots' labels and axes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.data_constrained import effective_data
from analysis.fit_result import Fit
from analysis.select import final_rows, run_status

EPOCHS_LABEL = "Epochs over the unique data, D / U_D"


def epochs_figure(runs: pd.DataFrame, fit: Fit | None = None, *, loss: str = "val_loss") -> Figure:
    """`runs` (or curves: each run's final row is drawn); `fit` from `fit_data_constrained` (None:
    points only). A line is one (model size, training tokens) with two or more epoch counts."""
    from analysis.plots import (FIT_COLOR, LOSS_LABEL, PARAM_LABELS, SIZE_CMAP, _log_loss_axis, _log_x, _size_mappable,
                                _size_norm)
    n_col = fit.settings["N"] if fit is not None else "n_params"
    complete = runs.loc[run_status(runs) == "complete"] if "status" in runs else runs
    final = final_rows(complete).dropna(subset=[n_col, "tokens", "unique_tokens", loss])
    final = final.assign(passes=np.maximum(final["tokens"] / final["unique_tokens"], 1.0))
    groups = [(key, rows.sort_values("passes")) for key, rows in final.groupby([n_col, "tokens"], sort=True)
              if rows["passes"].nunique() >= 2]
    if not groups:
        raise ValueError("no model size trained at one number of tokens on two or more amounts of unique data")
    left_out = set(fit.dropped["run_id"]) if fit is not None and "run_id" in fit.dropped else set()
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax, ax_eff = fig.subplots(1, 2)
    norm = _size_norm(final[n_col])
    token_counts = sorted({d for (_, d), _ in groups})
    markers = dict(zip(token_counts, ["o", "s", "^", "D", "v"] * len(token_counts)))
    for (n, d), rows in groups:
        color = colormaps[SIZE_CMAP](norm(n))
        label = f"N = {n:.3g}, D = {d:.3g} (C = 6ND = {6 * n * d:.2g} FLOPs)"
        out = rows["run_id"].isin(left_out) if "run_id" in rows else np.zeros(len(rows), bool)
        ax.plot(rows["passes"][~out], rows[loss][~out], markers[d], color=color, ms=5, ls="none", label=label)
        ax.plot(rows["passes"][out], rows[loss][out], markers[d], color=color, mfc="none", ms=6, ls="none")
        if fit is not None:
            passes = np.geomspace(1, rows["passes"].max() * 1.3, 100)
            ax.plot(passes, fit.predict(N=n, D=d, U=d / passes), ls="--", color=color, lw=1.2, alpha=0.8)
    if fit is not None:
        ax.plot([], [], ls="--", color="0.4", label="fitted law L(N, D')")
    if left_out:
        ax.plot([], [], "o", color="0.4", mfc="none", ls="none", label="left out of the fit (overfitted)")
    _log_x(ax)
    _log_loss_axis(ax)
    ax.set_xlabel(EPOCHS_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("Loss against repetition at fixed compute")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    passes = np.geomspace(1, max(final["passes"].max(), 2) * 1.5, 200)
    ax_eff.plot(passes, passes, color="0.4", ls=":", label="fresh data: D' = D")
    if fit is not None:
        r_star = fit.params["R_D_star"]
        lo, hi = fit.intervals["R_D_star"]
        ci = "" if np.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]"
        ax_eff.plot(passes, effective_data(passes, 1.0, r_star), color=FIT_COLOR,
                    label=f"fitted: R*_D = {r_star:.3g}{ci}")
        if fit.samples is not None:
            draws = fit.samples["R_D_star"].dropna().to_numpy(float)
            if len(draws) >= 2:
                band = np.array([effective_data(passes, 1.0, r) for r in np.percentile(draws, [2.5, 97.5])])
                ax_eff.fill_between(passes, band.min(axis=0), band.max(axis=0), color=FIT_COLOR, alpha=0.15)
    ax_eff.plot(passes, effective_data(passes, 1.0, 15.4), color="0.5", ls="--", lw=1,
                label="Muennighoff et al. 2023: R*_D = 15.4")
    _log_x(ax_eff)
    ax_eff.set_yscale("log")
    ax_eff.set_xlabel(EPOCHS_LABEL)
    ax_eff.set_ylabel("Effective data D' / U_D (fresh-token equivalents per unique token)")
    ax_eff.set_title("What repeated tokens are worth")
    ax_eff.grid(True, which="major", alpha=0.3)
    ax_eff.legend(fontsize=8)
    fig.colorbar(_size_mappable(norm), ax=ax, label=PARAM_LABELS.get(n_col, n_col))
    return fig
