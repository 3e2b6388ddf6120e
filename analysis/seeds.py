"""Seeds in a fit: grid cells, their weights, and the two-stage bootstrap.

A cell is one grid point, (N, D): the runs that differ only in seed. A fit counts every cell once,
its runs weighted 1/n_seeds: for least squares that is exactly the fit to each cell's mean (of ln L
for the laws fitted in log space), since the runs of a cell share their prediction. A cell trained
with two seeds so says more precisely where the law runs, not twice as much.

The bootstrap resamples in two stages, as for any two-level design (Davison & Hinkley 1997,
"Bootstrap Methods and their Application", Sec. 3.8): the cells with replacement, then, within each
cell, its seeds with replacement. A run's weight in a replicate is (times its cell was drawn) x
(times the run was drawn within it) / n_seeds. Seed-to-seed noise so moves the replicates wherever
a cell has several seeds; where every cell has one, the replicates are exactly the one-stage
bootstrap over runs (the same random draws).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fit_result import resample_counts


def cell_codes(rows: pd.DataFrame, keys) -> np.ndarray:
    """One integer per row naming its cell (rows equal in every column of `keys`), in order of first
    appearance."""
    keys = [k for k in keys if k in rows]
    if not keys:
        return np.arange(len(rows))
    frame = rows[keys].astype(float).round(12) if all(pd.api.types.is_numeric_dtype(rows[k]) for k in keys) \
        else rows[keys].astype(str)
    codes, _ = pd.factorize(pd.MultiIndex.from_frame(frame.reset_index(drop=True)))
    return codes


def _dense(codes) -> np.ndarray:
    """Codes renumbered 0..k-1 in order of first appearance (a subset of cells keeps gaps otherwise)."""
    return pd.factorize(np.asarray(codes))[0]


def cell_weights(codes: np.ndarray) -> np.ndarray:
    """1 / (runs in the cell) for every run: each cell counts once."""
    codes = _dense(codes)
    sizes = np.bincount(codes)
    return 1.0 / sizes[codes]


def has_replicates(codes: np.ndarray) -> bool:
    return bool(np.bincount(_dense(codes)).max(initial=0) > 1)


def two_stage_counts(codes: np.ndarray, bootstrap: int, seed: int) -> np.ndarray:
    """Replicate weights (bootstrap, n_runs): cells resampled, then seeds within each cell."""
    codes = _dense(codes)
    n_cells = int(codes.max()) + 1 if len(codes) else 0
    cells = resample_counts(n_cells, bootstrap, seed)  # (B, n_cells): the first stage
    weights = cells[:, codes].copy()
    if not has_replicates(codes):
        return weights
    rng = np.random.default_rng([seed, 1])
    for cell in np.flatnonzero(np.bincount(codes) > 1):
        members = np.flatnonzero(codes == cell)
        within = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=bootstrap)
        weights[:, members] = cells[:, [cell]] * within / len(members)
    return weights


def cell_means(rows: pd.DataFrame, codes: np.ndarray, loss: str) -> pd.DataFrame:
    """One row per cell: its first run's columns, `loss` the geometric mean over its seeds (the mean
    of ln L, what the log-space fits average), and `n_seeds`."""
    codes = _dense(codes)
    frame = rows.reset_index(drop=True).assign(_cell=codes)
    log_mean = np.log(frame[loss].to_numpy(float))
    means = pd.Series(log_mean).groupby(codes).mean()
    first = frame.groupby("_cell", sort=True).head(1).set_index("_cell").sort_index()
    first[loss] = np.exp(means.sort_index().to_numpy())
    first["n_seeds"] = np.bincount(codes)[first.index.to_numpy()]
    return first.reset_index(drop=True)
