"""Emergence as a number and as a picture; confidence; the fitted floor against the true one.

Probe columns are `probe/<task>/<metric>` with chance levels in `probe/<task>/chance_<metric>`
(scaling/science/probes.py). A metric's *transition* is the scale at which it crosses halfway between chance
and its best possible value, read off a monotone (isotonic) fit of the metric against log scale, with
a bootstrap interval over runs; a task that never crosses has no transition (NaN), which is an
answer too. Figures put a discontinuous metric (exact match) beside a continuous one (target
log-probability, edit distance) of the same outputs, as Schaeffer et al. 2023 ("Are emergent
abilities a mirage?") argue one should.

    locate_transition(x, y, chance=..., best=...)       one metric of any table -> Transition
    transition_figure(table, x=..., y=..., chance=...)  that table's score against its scale, the
                                                        transition and its interval marked
    transitions(runs, x="n_params")                     every task across sizes -> DataFrame
    transitions(history, x="step", by="run_id")         every task along each run's training
    seed_spread(along)                                  how far the seed moves each step (>= 2 seeds)
    emergence_figure(history, task)                     2 x 3: metrics against FLOPs, N, val loss
    emergence_figure(history, task, xs=("step", "tokens"))  the same along training, per model size
    confidence_figure(runs)                             val_entropy and val_ece against N
    reliability_figure(calibration)                     reliability diagrams (15 bins)
    load_calibration(path)                              every run's calibration.parquet
    optimal_loss_gap(E, runs)                           a fitted irreducible loss against the truth

Needs numpy, pandas, pyarrow and matplotlib only.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from analysis.records import record_files

# Best attainable value of each probe metric (exact match 1, log-prob 0, distance 0, Brier 0).
BEST = {"exact_match": 1.0, "token_accuracy": 1.0, "target_logprob": 0.0, "edit_distance": 0.0, "brier": 0.0}
METRIC_LABELS = {"exact_match": "Exact match (greedy)", "token_accuracy": "Per-token accuracy",
                 "target_logprob": "Target log-prob (nats/token)", "edit_distance": "Token edit distance",
                 "brier": "Brier score (per token)"}
X_LABELS = {"flops": "Training FLOPs", "n_params": "Parameters (all)", "n_params_nonembed": "Parameters N",
            "tokens": "Training tokens", "val_loss": "Validation loss (nats/token)",
            "step": "Training step (linear: transitions along training)"}
MIN_BIN_SHARE = 0.005  # reliability diagrams draw bins holding at least this share of the tokens
LOG_X = {"flops", "n_params", "n_params_nonembed", "tokens", "flops_6nd"}
PROPORTIONS = {"exact_match", "token_accuracy"}  # shares of items: their noise is binomial


def probe_tasks(frame: pd.DataFrame) -> list[str]:
    """Task names that have probe columns in `frame`."""
    return sorted({c.split("/")[1] for c in frame.columns if c.startswith("probe/") and c.count("/") == 2})


# ----------------------------------------------------------------------------------------------
# Transitions


@dataclass(frozen=True)
class Transition:
    metric: str
    threshold: float  # chance + (best - chance) / 2
    x: float  # where the monotone fit crosses the threshold; NaN if it never does
    ci_low: float  # bootstrap percentile interval of x, over resamples that crossed
    ci_high: float
    crossed_fraction: float  # share of bootstrap resamples that crossed at all
    censored: bool  # already past the threshold at the smallest scale: x is an upper bound
    n_points: int
    # The two measured scales the crossing lies between (x is interpolated inside them): the
    # resolution of the measurements, which no bootstrap narrows. NaN where there is no crossing.
    between_low: float = math.nan
    between_high: float = math.nan

    def __str__(self) -> str:
        if math.isnan(self.x):
            return f"{self.metric}: no transition (never crosses {self.threshold:.3g})"
        bound = "<= " if self.censored else ""
        return (f"{self.metric}: crosses {self.threshold:.3g} at {bound}{self.x:.3g} "
                f"[{self.ci_low:.3g}, {self.ci_high:.3g}] ({self.crossed_fraction:.0%} of resamples cross)")


def isotonic(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence nearest y in weighted least squares (pool adjacent violators)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(y, w):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, m) for m, _, n in blocks])


def _crossing(x: np.ndarray, y: np.ndarray, threshold: float, log_x: bool, bracket: bool = False):
    """(x where the isotonic fit of y first reaches threshold, censored); y oriented increasing.
    With `bracket`, also the two measured x the crossing lies between."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ux, inverse = np.unique(x, return_inverse=True)
    means = np.bincount(inverse, weights=y) / np.bincount(inverse)
    counts = np.bincount(inverse).astype(np.float64)
    fit = isotonic(means, counts)
    above = np.flatnonzero(fit >= threshold)
    if not len(above):
        return (math.nan, False, (math.nan, math.nan)) if bracket else (math.nan, False)
    i = above[0]
    if i == 0:
        return (float(ux[0]), True, (math.nan, float(ux[0]))) if bracket else (float(ux[0]), True)
    t = (threshold - fit[i - 1]) / (fit[i] - fit[i - 1])
    if log_x:
        at = float(np.exp(np.log(ux[i - 1]) + t * (np.log(ux[i]) - np.log(ux[i - 1]))))
    else:
        at = float(ux[i - 1] + t * (ux[i] - ux[i - 1]))
    return (at, False, (float(ux[i - 1]), float(ux[i]))) if bracket else (at, False)


def locate_transition(x, y, *, chance: float, best: float = 1.0, groups=None, n_items=None, n_boot: int = 1000,
                      level: float = 0.9, log_x: bool = True, seed: int = 0, metric: str = "") -> Transition:
    """Where y crosses halfway from `chance` to `best` as x grows (y may improve downwards: an edit
    distance has best 0 below its chance). Any table works: x a scale (parameters, FLOPs, steps), y
    a score. The bootstrap resamples whole `groups` (e.g. run ids, so the points of one learning
    curve move together), or single points when None; with `n_items` (a proportion scored on that
    many items at each point, scalar or per point) it redraws each point's score as a binomial
    proportion of its items instead: the noise of one learning curve along training, where there
    are no runs to resample."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
    x, y = x[keep], y[keep]
    items = None if n_items is None else np.broadcast_to(np.asarray(n_items, dtype=np.float64), keep.shape)[keep]
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)[keep]
    sign = 1.0 if best >= chance else -1.0  # orient so that larger is better
    threshold = chance + (best - chance) / 2
    if len(x) == 0:
        return Transition(metric, threshold, math.nan, math.nan, math.nan, 0.0, False, 0)
    at, censored, between = _crossing(x, sign * y, sign * threshold, log_x, bracket=True)
    rng = np.random.default_rng(seed)
    labels, members = np.unique(groups, return_inverse=True)
    index_of = [np.flatnonzero(members == g) for g in range(len(labels))]
    crossings = []
    for _ in range(n_boot):
        if items is not None:  # item noise: each score a binomial proportion of its items
            n = np.maximum(items.round().astype(np.int64), 1)
            redrawn = rng.binomial(n, np.clip(y, 0.0, 1.0)) / n
            crossings.append(_crossing(x, sign * redrawn, sign * threshold, log_x)[0])
            continue
        pick = np.concatenate([index_of[g] for g in rng.integers(0, len(labels), size=len(labels))])
        crossings.append(_crossing(x[pick], sign * y[pick], sign * threshold, log_x)[0])
    crossings = np.array(crossings)
    crossed = crossings[np.isfinite(crossings)]
    tail = (1 - level) / 2
    low, high = (np.quantile(crossed, [tail, 1 - tail]) if len(crossed) else (math.nan, math.nan))
    return Transition(metric, threshold, at, float(low), float(high), len(crossed) / max(n_boot, 1), censored,
                      int(len(x)), *between)


def transitions(frame: pd.DataFrame, *, x: str = "n_params", metrics=("exact_match", "target_logprob"),
                by: str | None = None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (task, metric) with its Transition, from summary rows (or history rows).

    by: a column (e.g. "run_id") to locate the transition within each of its groups, one row per
    group (a column `by` names it): with x="step" on history rows, where along its own training
    each run crosses. Exact match and token accuracy are then bootstrapped over their items
    (`probe/<task>/items`, binomial), other metrics over evaluation points."""
    if by is not None:
        parts = [transitions(rows, x=x, metrics=metrics, n_boot=n_boot, seed=seed).assign(**{by: key})
                 for key, rows in frame.groupby(by, sort=True)]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    rows = []
    one_curve = "run_id" in frame and frame["run_id"].nunique() == 1
    for task in probe_tasks(frame):
        for metric in metrics:
            column, chance_column = f"probe/{task}/{metric}", f"probe/{task}/chance_{metric}"
            if column not in frame or chance_column not in frame:
                continue
            chance = float(frame[chance_column].dropna().iloc[0]) if frame[chance_column].notna().any() else math.nan
            if math.isnan(chance):
                continue
            items_column = f"probe/{task}/items"
            n_items = (frame[items_column] if one_curve and metric in PROPORTIONS and items_column in frame
                       else None)
            tr = locate_transition(frame[x], frame[column], chance=chance, best=BEST[metric],
                                   groups=frame["run_id"] if "run_id" in frame and not one_curve else None,
                                   n_items=n_items, n_boot=n_boot, log_x=x in LOG_X, seed=seed, metric=metric)
            rows.append({"task": task, "x": x, "chance": chance, **tr.__dict__})
    return pd.DataFrame(rows)


def cell_label(run_id: str) -> str:
    """A run's id without its seed and hash (L2-d64-t6e6-s1-0a1b2c3d -> L2-d64-t6e6): the runs of one
    cell, which differ only in seed, share it."""
    return re.sub(r"-s\d+-[0-9a-f]+$", "", str(run_id))


def seed_spread(along: pd.DataFrame) -> pd.DataFrame:
    """How far the initialisation moves a transition: from `transitions(history, x="step",
    by="run_id")`, one row per (cell, task) trained with at least two seeds, with the step at which
    each seed crosses, their mean, sample standard deviation and range, beside the mean width of
    the seeds' own intervals (the items' binomial noise, which one run can measure). A seed whose
    run never crosses counts in `seeds` and not among the steps; the spread needs two that cross."""
    if along.empty or "run_id" not in along:
        return pd.DataFrame()
    frame = along.assign(cell=along["run_id"].map(cell_label))
    rows = []
    for (cell, task), group in frame.groupby(["cell", "task"], sort=True):
        if group["run_id"].nunique() < 2:
            continue
        steps = np.sort(group["x"].to_numpy(float)[np.isfinite(group["x"].to_numpy(float))])
        widths = (group["ci_high"] - group["ci_low"]).to_numpy(float)
        widths = widths[np.isfinite(widths)]
        two = len(steps) >= 2
        rows.append({"cell": cell, "task": task, "seeds": int(group["run_id"].nunique()), "crossed": len(steps),
                     "steps": ", ".join(f"{s:.0f}" for s in steps),
                     "mean": float(steps.mean()) if len(steps) else math.nan,
                     "sd": float(steps.std(ddof=1)) if two else math.nan,
                     "range": float(steps[-1] - steps[0]) if two else math.nan,
                     "item_interval": float(widths.mean()) if len(widths) else math.nan})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Figures


def _log_x(ax) -> None:
    """A log x axis labelled at powers of ten only once it spans a decade (minor labels collide)."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    if hi > lo > 0 and math.log10(hi / lo) >= 1:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _sizes(frame: pd.DataFrame) -> tuple[list, object]:
    sizes = sorted(frame["n_params"].unique())
    norm = LogNorm(vmin=min(sizes), vmax=max(sizes) * 1.0001) if sizes else None
    return sizes, norm


def emergence_figure(history: pd.DataFrame, task: str, *, discontinuous: str = "exact_match",
                     continuous: str = "target_logprob", xs=("flops", "n_params", "val_loss")) -> Figure:
    """Rows: the discontinuous and the continuous metric of the same greedy/teacher-forced outputs.
    Columns: against training FLOPs, parameters and validation loss. Against FLOPs and loss each run
    is a line along training (coloured by size, end point marked); against parameters, the end-of-
    training points, one line per training length. Dashed: chance."""
    cmap = colormaps["viridis"]
    sizes, norm = _sizes(history)
    last = history.sort_values("step").groupby("run_id").tail(1)
    fig = Figure(figsize=(5 * len(xs), 8), layout="constrained")
    axes = fig.subplots(2, len(xs), squeeze=False)
    for r, metric in enumerate((discontinuous, continuous)):
        column, chance_column = f"probe/{task}/{metric}", f"probe/{task}/chance_{metric}"
        for c, x in enumerate(xs):
            ax = axes[r, c]
            if column not in history:
                ax.set_visible(False)
                continue
            if x == "n_params" or x == "n_params_nonembed":
                for tokens, group in last.groupby("target_tokens" if "target_tokens" in last else "tokens"):
                    group = group.sort_values(x)
                    ax.plot(group[x], group[column], "o-", label=f"D = {tokens:.3g}", alpha=0.85)
                ax.legend(fontsize=7)
            else:
                for run_id, run in history.sort_values("step").groupby("run_id"):
                    color = cmap(norm(run["n_params"].iloc[0])) if norm else None
                    ax.plot(run[x], run[column], "-", color=color, alpha=0.7, lw=1.2)
                    ax.plot(run[x].iloc[-1:], run[column].iloc[-1:], "o", color=color, ms=5)
            if chance_column in history and history[chance_column].notna().any():
                ax.axhline(float(history[chance_column].dropna().iloc[0]), ls="--", color="gray", lw=1, label="chance")
            if x in LOG_X:
                _log_x(ax)
            if x == "val_loss":
                ax.invert_xaxis()  # better models to the right, as along the other axes
            ax.set_xlabel(X_LABELS.get(x, x))
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.grid(alpha=0.3)
    if norm:
        from matplotlib.cm import ScalarMappable
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:, [i for i, x in enumerate(xs)
                                                                         if x not in ("n_params", "n_params_nonembed")]],
                     label="Parameters (all)")
    fig.suptitle(f"Task {task!r}: {METRIC_LABELS.get(discontinuous)} vs {METRIC_LABELS.get(continuous)}\n"
                 "of the same held-out items (dashed: chance)")
    return fig


def transition_figure(table: pd.DataFrame, *, x: str, y: str, chance: float, best: float = 1.0,
                      group: str | None = None, n_items=None, log_x: bool = True, n_boot: int = 1000,
                      level: float = 0.9, x_label: str | None = None, y_label: str | None = None,
                      seed: int = 0) -> Figure:
    """Any table's score `y` against its scale `x` (say public models' benchmark accuracy against
    training FLOPs), one line per `group` value where given, chance dashed, and the transition that
    `locate_transition` finds over all the rows: a vertical line at it, its bootstrap interval
    shaded (resampling groups where given, else redrawing each point from `n_items`, else
    resampling points), the halfway threshold dotted. Needs no run ids, probe columns or records."""
    for column in (x, y) + ((group,) if group else ()):
        if column not in table:
            raise ValueError(f"transition_figure: the table has no column {column!r} (it has {list(table.columns)})")
    items = table[n_items].to_numpy(float) if isinstance(n_items, str) else n_items
    tr = locate_transition(table[x].to_numpy(float), table[y].to_numpy(float), chance=chance, best=best,
                           groups=None if group is None else table[group].to_numpy(), n_items=items,
                           n_boot=n_boot, level=level, log_x=log_x, seed=seed, metric=y)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, rows in ([(None, table)] if group is None else table.groupby(group, sort=True)):
        rows = rows.sort_values(x)
        ax.plot(rows[x], rows[y], "o-", ms=4, lw=1.2, alpha=0.85, label=None if label is None else str(label))
    ax.axhline(chance, ls="--", color="gray", lw=1, label=f"chance ({chance:.3g})")
    ax.axhline(tr.threshold, ls=":", color="gray", lw=1, label=f"halfway ({tr.threshold:.3g})")
    if math.isfinite(tr.x):
        if math.isfinite(tr.ci_low) and math.isfinite(tr.ci_high):
            ax.axvspan(tr.ci_low, tr.ci_high, color="C3", alpha=0.15, lw=0)
        bound = "<= " if tr.censored else ""
        ax.axvline(tr.x, color="C3", lw=1.5, label=f"transition {bound}{tr.x:.3g}, {level:.0%} interval "
                                                    f"[{tr.ci_low:.3g}, {tr.ci_high:.3g}]")
    if log_x:
        _log_x(ax)
    ax.set_xlabel(x_label or X_LABELS.get(x, x))
    ax.set_ylabel(y_label or METRIC_LABELS.get(y, y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    crossed = "no transition" if math.isnan(tr.x) else f"{tr.crossed_fraction:.0%} of resamples cross"
    ax.set_title(f"{y} against {x}: halfway from chance to {best:g} ({crossed})", fontsize=10)
    return fig


def confidence_figure(runs: pd.DataFrame, *, x: str = "n_params") -> Figure:
    """Final predictive entropy (beside the loss and, where known, the optimal loss) and ECE against
    model size: one line per training length (an IsoFLOP sweep: per compute budget), coloured by it."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_h, ax_e = fig.subplots(1, 2)
    budgets = pd.to_numeric(runs["flops_budget"], errors="coerce") if "flops_budget" in runs else None
    if budgets is not None and np.isfinite(budgets).all():
        by, by_label = "flops_budget", "IsoFLOP budget C (FLOPs)"
    else:
        by, by_label = ("target_tokens" if "target_tokens" in runs else "tokens"), "Training tokens D"
    values = runs[by].astype(float)
    norm = LogNorm(vmin=values.min(), vmax=values.max() * 1.0001)
    cmap = ListedColormap(colormaps["plasma"](np.linspace(0, 0.85, 256)))  # no pale yellow
    for value, group in runs.sort_values(x).groupby(by):
        color = cmap(norm(value))
        ax_h.plot(group[x], group["val_entropy"], "o-", color=color, ms=4)
        ax_h.plot(group[x], group["val_loss"], "s:", color=color, alpha=0.6, ms=3)
        ax_e.plot(group[x], group["val_ece"], "o-", color=color, ms=4)
    handles = [Line2D([], [], color="0.3", marker="o", ls="-", label="predictive entropy"),
               Line2D([], [], color="0.3", marker="s", ls=":", label="validation loss")]
    if "val_loss_optimal" in runs and runs["val_loss_optimal"].notna().any():
        optimal = float(runs["val_loss_optimal"].dropna().mean())
        ax_h.axhline(optimal, ls="--", color="gray")
        handles.append(Line2D([], [], color="gray", ls="--", label=f"true optimal loss {optimal:.3f}"))
    ax_h.legend(handles=handles, fontsize=7, loc="upper right")
    for ax, label in ((ax_h, "nats/token"), (ax_e, "ECE (top-1, 15 bins)")):
        _log_x(ax)
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_h.set_title("Predictive entropy vs cross-entropy (end of training)")
    ax_e.set_title("Calibration error (end of training)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax_h, ax_e], label=by_label)
    return fig


def load_calibration(path: str | os.PathLike) -> pd.DataFrame:
    """Every run's reliability tables (one row per evaluation step and bin)."""
    frames = [pq.read_table(f).to_pandas() for f in record_files(path, "calibration.parquet")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reliability_figure(calibration: pd.DataFrame, runs: pd.DataFrame | None = None, *, step: str = "last") -> Figure:
    """Accuracy against confidence per bin at each run's last (or first) evaluation, one line per
    run coloured by size (when `runs` gives sizes), the diagonal of perfect calibration, and the
    share of tokens per bin below."""
    fig = Figure(figsize=(6, 6.5), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    pick = calibration.groupby("run_id")["step"].transform("max" if step == "last" else "min")
    chosen = calibration[calibration["step"] == pick]
    sizes = runs.set_index("run_id")["n_params"] if runs is not None and "n_params" in runs else None
    norm = LogNorm(vmin=sizes.min(), vmax=sizes.max() * 1.0001) if sizes is not None and len(sizes) else None
    cmap = colormaps["viridis"]
    for run_id, table in chosen.groupby("run_id"):
        table = table.sort_values("bin")
        color = cmap(norm(sizes[run_id])) if norm is not None and run_id in sizes else None
        # A bin with a handful of tokens has an accuracy too noisy to read: drawn from 0.5% of the tokens.
        filled = table["count"] >= max(1.0, MIN_BIN_SHARE * table["count"].sum())
        centres = (table["bin_lower"] + table["bin_upper"]) / 2
        ax.plot(table.loc[filled, "confidence"], table.loc[filled, "accuracy"], "o-", color=color, ms=3, alpha=0.8)
        ax_n.plot(centres, table["count"] / table["count"].sum(), "-", color=color, alpha=0.8)
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    ax.legend(fontsize=8, loc="upper left")
    if norm is not None:
        from matplotlib.cm import ScalarMappable
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax, ax_n], label="Parameters (all)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy (top-1)")
    ax.set_title(f"Reliability at each run's {step} evaluation\n"
                 f"(bins holding >= {MIN_BIN_SHARE:.1%} of the tokens)", fontsize=10)
    ax_n.set_xlabel("Confidence (top-1 probability)")
    ax_n.set_ylabel("Share of tokens")
    for a in (ax, ax_n):
        a.grid(alpha=0.3)
    return fig


# ----------------------------------------------------------------------------------------------
# A fitted floor against the truth


@dataclass(frozen=True)
class OptimalGap:
    E_fit: float
    optimal: float  # val_loss_optimal: the source's own cross-entropy on the validation windows
    gap: float  # E_fit - optimal (nats/token); > 0: the fit's floor is above the truth
    relative: float  # gap / optimal
    best_observed: float  # the lowest final val_loss of the runs
    n_runs: int

    def __str__(self) -> str:
        return (f"fitted E = {self.E_fit:.4f}, true optimal loss = {self.optimal:.4f} nats/token: gap "
                f"{self.gap:+.4f} ({self.relative:+.1%}); best run reached {self.best_observed:.4f}")


def optimal_loss_gap(E: float, runs: pd.DataFrame) -> OptimalGap:
    """Compare a fitted irreducible loss E (e.g. Chinchilla approach 3) with the recorded
    `val_loss_optimal` of a synthetic-source sweep (the same for every run that scores the same
    validation windows; their mean is used)."""
    if "val_loss_optimal" not in runs or not runs["val_loss_optimal"].notna().any():
        raise ValueError("these runs record no val_loss_optimal (not a source with a known distribution)")
    optimal = float(runs["val_loss_optimal"].dropna().mean())
    best = float(runs["val_loss"].min()) if "val_loss" in runs else math.nan
    return OptimalGap(E_fit=float(E), optimal=optimal, gap=float(E) - optimal, relative=(float(E) - optimal) / optimal,
                      best_observed=best, n_runs=int(runs["val_loss_optimal"].notna().sum()))
