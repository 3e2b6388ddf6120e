"""The Kaplan grid as a grid: every (N, D) end point with the joint law through it.

    kaplan_grid(history, fits)   loss against D per model size and against N per data size: each
                                 run's end point (the seeds of a cell as small marks, their mean
                                 large), the fitted L(N, D) through them, and the learning curves
                                 faint behind (mid-schedule points, drawn, not fitted)

After Kaplan et al. 2020 Fig. 9 (left): a law of two variables is judged on the grid it was fitted
to, so the figure shows where L(N, D) runs between and beyond its points. It draws with
analysis.plots' labels and axes (so this module imports that one, never the other way).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis.fit_result import FitSet
from analysis.seeds import cell_codes, cell_means
from analysis.select import final_rows, is_history, run_status

DATA_CMAP = "cividis"


def kaplan_grid(records: pd.DataFrame, fits: FitSet, *, loss: str = "val_loss") -> Figure:
    from analysis.plots import (FIT_COLOR, LOSS_LABEL, PARAM_LABELS, SIZE_CMAP, _log_loss_axis, _log_span, _log_x,
                                _size_norm, law_label)
    if "L(N,D)" not in fits:
        raise ValueError(f"no L(N,D) fit to draw ({getattr(fits, 'skipped', {}).get('L(N,D)', 'not fitted')})")
    joint = fits["L(N,D)"]
    n_col = joint.settings["N"]
    complete = records.loc[run_status(records) == "complete"] if "status" in records else records
    final = final_rows(complete)
    cells = cell_means(final, cell_codes(final, [n_col, "tokens"]), loss)
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax_d, ax_n = fig.subplots(1, 2, sharey=True)
    size_norm = _size_norm(final[n_col])
    sizes, datas = np.sort(cells[n_col].unique()), np.sort(cells["tokens"].unique())
    data_norm = LogNorm(datas.min(), datas.max() * (1.0001 if len(datas) == 1 else 1))
    data_cmap = colormaps[DATA_CMAP]

    if is_history(complete):  # learning curves: mid-schedule points, not fitted
        for _, run in complete.groupby("run_id"):
            run = run.sort_values("step")
            ax_d.plot(run["tokens"], run[loss], color=colormaps[SIZE_CMAP](size_norm(run[n_col].iloc[0])),
                      alpha=0.18, lw=0.7)
        ax_d.plot([], [], color="0.5", alpha=0.5, lw=0.7, label="learning curves (mid-schedule, not fitted)")
    d_grid = _log_span(datas, pad=1.4)
    for n in sizes:
        color = colormaps[SIZE_CMAP](size_norm(n))
        row = cells.loc[cells[n_col] == n].sort_values("tokens")
        seeds = final.loc[final[n_col] == n]
        ax_d.scatter(seeds["tokens"], seeds[loss], color=color, s=9, alpha=0.6, zorder=3)
        ax_d.plot(row["tokens"], row[loss], "o", color=color, ms=6, mec="black", mew=0.5, zorder=4,
                  label=f"N = {n:,.0f}")
        ax_d.plot(d_grid, joint.predict(N=np.full_like(d_grid, n), D=d_grid), color=color, lw=1.4, ls="--",
                  zorder=2)
    n_grid = _log_span(sizes, pad=1.4)
    for d in datas:
        color = data_cmap(data_norm(d))
        row = cells.loc[cells["tokens"] == d].sort_values(n_col)
        seeds = final.loc[final["tokens"] == d]
        ax_n.scatter(seeds[n_col], seeds[loss], color=color, s=9, alpha=0.6, zorder=3)
        ax_n.plot(row[n_col], row[loss], "o", color=color, ms=6, mec="black", mew=0.5, zorder=4,
                  label=f"D = {d:.3g}")
        ax_n.plot(n_grid, joint.predict(N=n_grid, D=np.full_like(n_grid, d)), color=color, lw=1.4, ls="--",
                  zorder=2)
    ax_d.plot([], [], "o", color="0.5", mec="black", mew=0.5, label="end of a cool-down (mean over seeds;\n"
              "small marks: each seed)")
    ax_d.plot([], [], color=FIT_COLOR, ls="--", label=law_label(joint))
    ax_d.legend(fontsize=7, loc="lower left", title=PARAM_LABELS.get(n_col, n_col), title_fontsize=7.5)
    ax_n.legend(fontsize=7.5, loc="lower left", title="training tokens", title_fontsize=8)
    # The end points set the range: the learning curves start far above them.
    low, high = float(final[loss].min()), float(final[loss].max())
    ax_d.set_ylim(low / 1.06, high * 1.12)
    ax_d.set_xlim(datas.min() / 8, datas.max() * 1.6)
    ax_d.set_xlabel("Training tokens D")
    ax_n.set_xlabel(PARAM_LABELS.get(n_col, n_col))
    ax_d.set_ylabel(LOSS_LABEL)
    ax_n.tick_params(labelleft=True)
    ax_d.set_title("Loss against D, one line per model size")
    ax_n.set_title("Loss against N, one line per data size")
    for ax in (ax_d, ax_n):
        _log_x(ax)
        _log_loss_axis(ax)
        ax.grid(True, which="major", alpha=0.3)
    n_seeds = int(cells["n_seeds"].max())
    fig.suptitle(f"The N x D grid: {len(cells)} cells, {len(final)} runs (up to {n_seeds} seeds a cell), "
                 "and the joint law L(N, D) fitted to their end points (Kaplan et al. 2020, eq. 1.5)")
    return fig
