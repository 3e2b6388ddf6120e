"""The learning rate per model size from tuning runs (`scaling tune`), and the rule LR*(N) fitted to it.

Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models") tune the
learning rate per size on a log grid and find the optimum falls as a power law in N; laws fitted off
that tuned frontier mislead. Here:

- `best_lrs`: per size (non-embedding N, Kaplan's count), the learning rate of least final loss on the
  grid, refined by the vertex of the parabola in ln(lr) through it and its two neighbours (loss is
  close to quadratic in ln lr near its optimum), kept inside those neighbours. An optimum at the
  grid's edge is flagged (`interior` False): the grid should be widened there.
- `fit_lr_rule`: ln LR* = ln lr_ref + k ln(N / n_ref), least squares over the sizes, with a bootstrap
  over sizes for the interval of k and lr_ref (n_ref: the geometric mean of the sizes' N).
- `write_rule`: the rule file that `[optimizer] lr = "tuned"` reads (scaling/sweep/tuning.py says its
  format); `tuning_figure`: loss against learning rate per size, the optima, and the rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.fit_result import DEFAULT_BOOTSTRAP

N_COLUMN = "n_params_nonembed"
RULE_FORMAT = 1


LR = "lr_peak"  # the optimizer's learning rate, where the schedule peaks (the records' `lr` is the scheduled one)


def best_lrs(runs: pd.DataFrame, *, loss: str = "val_loss") -> pd.DataFrame:
    """One row per size: n_params_nonembed, lr (refined), lr_grid (the grid's best), loss at it,
    interior (the grid's best has a neighbour on each side), and the number of learning rates tried.
    Learning rates are the runs' peak ones (`lr_peak`)."""
    done = runs[(runs.get("status", "complete") == "complete") & np.isfinite(runs[loss]) & (runs[LR] > 0)]
    if done.empty:
        raise ValueError("no complete tuning runs with a finite loss")
    rows = []
    for n, group in done.groupby(N_COLUMN):
        group = group.sort_values(LR)
        lrs, y = group[LR].to_numpy(float), group[loss].to_numpy(float)
        x = np.log(lrs)
        i = int(np.argmin(y))
        interior = 0 < i < len(x) - 1
        best = float(lrs[i])
        if interior:
            a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
            if a > 0:
                best = float(np.exp(np.clip(-b / (2 * a), x[i - 1], x[i + 1])))
        rows.append({N_COLUMN: int(n), "lr": best, "lr_grid": float(lrs[i]), loss: float(y[i]),
                     "interior": interior, "n_lrs": len(x)})
    return pd.DataFrame(rows)


def fit_lr_rule(best: pd.DataFrame, *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """The power law LR*(N) = lr_ref (N / n_ref)^exponent through the sizes' best learning rates, with
    95% bootstrap intervals (sizes resampled; none with fewer than 3 sizes). One size: a constant."""
    n, lr = best[N_COLUMN].to_numpy(float), best["lr"].to_numpy(float)
    n_ref = float(np.exp(np.mean(np.log(n))))
    exponent, lr_ref = _line(np.log(n / n_ref), np.log(lr))
    intervals = {"exponent": [np.nan, np.nan], "lr_ref": [np.nan, np.nan]}
    if len(n) >= 3 and bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            pick = rng.integers(0, len(n), len(n))
            if len(set(pick)) >= 2:
                draws.append(_line(np.log(n[pick] / n_ref), np.log(lr[pick])))
        draws = np.array(draws)
        intervals = {"exponent": list(np.percentile(draws[:, 0], [2.5, 97.5])),
                     "lr_ref": list(np.exp(np.percentile(draws[:, 1], [2.5, 97.5])))}
    return {"format": RULE_FORMAT, "param_count": N_COLUMN, "law": "lr = lr_ref * (N / n_ref) ** exponent",
            "n_ref": n_ref, "lr_ref": float(np.exp(lr_ref)), "exponent": float(exponent),
            "intervals": {k: [float(v) for v in vs] for k, vs in intervals.items()},
            "per_size": best.to_dict(orient="records")}


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of least squares; a flat line through one distinct x."""
    if np.ptp(x) == 0:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def rule_lr(rule: dict, n) -> np.ndarray:
    return rule["lr_ref"] * (np.asarray(n, float) / rule["n_ref"]) ** rule["exponent"]


def write_rule(path: str | Path, rule: dict) -> Path:
    """The rule as JSON, written whole (a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rule, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    tmp.replace(path)
    return path


def tuning_figure(runs: pd.DataFrame, rule: dict, *, loss: str = "val_loss") -> Figure:
    """Left: final loss against learning rate per size, the chosen optimum marked. Right: the optima
    against N with the fitted rule."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_loss, ax_rule = fig.subplots(1, 2)
    best = pd.DataFrame(rule["per_size"])
    # One colour per size along a sequential map (a cycle of ten repeats on a wider grid), and the
    # rule's points in the same colours, so a size reads across both panels.
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    norm = LogNorm(best[N_COLUMN].min(), best[N_COLUMN].max() * (1.0001 if len(best) == 1 else 1))
    colors = {n: colormaps["viridis"](0.9 * norm(n)) for n in best[N_COLUMN]}
    for n, group in runs.groupby(N_COLUMN):
        group = group.sort_values(LR)
        color = colors.get(n, "grey")
        ax_loss.plot(group[LR], group[loss], "o-", color=color, label=f"N = {n:,}")
        row = best[best[N_COLUMN] == n]
        if len(row):
            ax_loss.axvline(row["lr"].iloc[0], color=color, linestyle=":", linewidth=1)
    ax_loss.set(xscale="log", xlabel="peak learning rate", ylabel="final validation loss (nats/token)",
                title="Tuning runs: loss against learning rate (dotted: chosen)")
    ax_loss.legend(fontsize=8)
    edge = ~best["interior"].astype(bool)
    ax_rule.scatter(best.loc[~edge, N_COLUMN], best.loc[~edge, "lr"], c=[colors[n] for n in best.loc[~edge, N_COLUMN]],
                    edgecolors="black", zorder=3, label="best learning rate per size")
    if edge.any():
        ax_rule.plot(best.loc[edge, N_COLUMN], best.loc[edge, "lr"], "o", mfc="none", color="black",
                     label="at the grid's edge (widen [tune] lrs)")
    grid = np.geomspace(best[N_COLUMN].min() / 1.5, best[N_COLUMN].max() * 1.5, 50)
    lo, hi = rule["intervals"]["exponent"]
    label = f"LR* = {rule['lr_ref']:.3g} (N / {rule['n_ref']:.3g})^{rule['exponent']:.3f}"
    label += f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
    ax_rule.plot(grid, rule_lr(rule, grid), "-", color="C3", label=label)
    values = np.concatenate([best["lr"].to_numpy(float), rule_lr(rule, grid)])
    ax_rule.set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="peak learning rate",
                ylim=(values.min() / 2, values.max() * 2), title="The rule lr = \"tuned\" uses")
    ax_rule.legend(fontsize=8)
    return fig


RULE_FILE = "lr_rule.json"


def save_tuning(folder: str | Path, run_ids=None, *, bootstrap: int = DEFAULT_BOOTSTRAP) -> str:
    """From the tuning runs under `folder` (those of `run_ids`, if given): the best learning rate per
    size, the rule (written to `folder`/lr_rule.json) and its figure (`folder`/figures/lr_tuning.png);
    returns a short report. Raises ValueError where no size has a complete run."""
    from analysis.records import load_runs
    runs = load_runs(folder)
    if runs.empty:
        raise ValueError("no tuning runs")
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(set(run_ids))]
    best = best_lrs(runs)
    rule = fit_lr_rule(best, bootstrap=bootstrap)
    path = write_rule(Path(folder) / RULE_FILE, rule)
    figures = Path(folder) / "figures"
    figures.mkdir(exist_ok=True)
    tuning_figure(runs, rule).savefig(figures / "lr_tuning.png", dpi=150)
    lines = [f"{'N (non-embed)':>14}  {'best lr':>9}  {'grid best':>9}  {'loss':>7}"]
    for row in best.itertuples():
        edge = "" if row.interior else "  at the edge of the learning rates tried: widen [tune] lrs"
        lines.append(f"{row.n_params_nonembed:>14,}  {row.lr:>9.3g}  {row.lr_grid:>9.3g}  {row.val_loss:>7.4f}{edge}")
    lo, hi = rule["intervals"]["exponent"]
    interval = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else " (no interval: fewer than 3 sizes)"
    lines.append(f"LR*(N) = {rule['lr_ref']:.3g} (N / {rule['n_ref']:.3g})^{rule['exponent']:.3f}{interval}; "
                 f"saved to {path} for lr = \"tuned\"")
    return "\n".join(lines) + "\n"
