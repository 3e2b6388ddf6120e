"""Kaplan et al. 2020, "Scaling Laws for Neural Language Models": L(N), L(D), L(C_min) and L(N, D).

    L(N)     = (N_c / N)^alpha_N          per model size, its best final loss       (eq. 1.1)
    L(D)     = (D_c / D)^alpha_D          per data size, its best final loss        (eq. 1.2)
    L(C_min) = (C_c / C_min)^alpha_C      the compute-efficient frontier            (eq. 1.3)
    L(N, D)  = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D                          (eq. 1.5)

N is non-embedding parameters and C = 6 N D by default, as in the paper (Sec. 1.2, 2.1); both are
arguments. Every law is fitted by least squares on ln L.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pandas as pd

from analysis.fit_result import (DEFAULT_BOOTSTRAP, Fit, FitSet, dropped_frame, enough_points,
                                 intervals_from, log_quality, require, resample_counts)
from analysis.least_squares import levenberg_marquardt, log_sum_exp_weights
from analysis.power_law import _solve_pure, _to_params, fit_power_law
from analysis.seeds import cell_codes, cell_weights, two_stage_counts
from analysis.select import (best_per_group, compute_column, final_rows, is_history, param_column,
                             summary_of_dropped, usable)

LAWS = ("L(N)", "L(D)", "L(C_min)", "L(N,D)")
POINTS = ("ends", "curves")
_ALIASES = {"N": "L(N)", "D": "L(D)", "C": "L(C_min)", "C_min": "L(C_min)", "ND": "L(N,D)",
            "joint": "L(N,D)", "L(N, D)": "L(N,D)", "L(C)": "L(C_min)"}


def fit_kaplan(records: pd.DataFrame, *, laws=None, param_count: str = "nonembed",
               loss: str = "val_loss", compute: str = "flops_6nd", bootstrap: int = DEFAULT_BOOTSTRAP,
               seed: int = 0, statuses=("complete",), warmup_fraction: float = 0.1,
               keep_edge_models: bool = False, points: str = "ends") -> FitSet:
    """Fit Kaplan's laws to runs (`load_runs`) or learning curves (`load_history`).

    laws: any of "L(N)", "L(D)", "L(C_min)", "L(N,D)" (or "N", "D", "C", "ND"). None fits every law
        the data supports and lists the others in `.skipped` with the reason; a law asked for by
        name that cannot be fitted raises ValueError.
    param_count: "nonembed" (Kaplan's N, default) or "all".
    compute: "flops_6nd" (Kaplan's C = 6ND, default) or "flops" (this project's exact count).
    warmup_fraction: history rows before this fraction of a run's steps are left out of the
        frontier (the loss there reflects warmup, not the model's capacity).
    keep_edge_models: by default frontier points on the smallest or largest model are dropped:
        there, a model outside the grid might have been better, so they are not the frontier.

    points: "ends" (default): every law is fitted on runs' final rows only, each the end of its own
        schedule (with WSD and branching, of its own cool-down: Hägele et al. 2024), the one honest
        point per (N, D). "curves": mid-schedule points too, as Kaplan et al. read L(D) and L(C_min)
        off learning curves: with a single data size, L(D) becomes the envelope of the curves and
        L(N, D) every curve point after warmup, and L(C_min) the frontier of every curve row. A
        point read mid-schedule sits above what a run cooled down to that D would reach, so such a
        fit is biased by the schedule; every fit says which it used in `settings["points"]`, and
        what its points are in `settings["point_source"]`.

    Runs that differ only in seed form one cell (N, D) and count once, at their mean (of ln L);
    the bootstrap resamples cells and, within each, its seeds (analysis.seeds).
    """
    require(points in POINTS, f"points must be one of {POINTS}, got {points!r}")
    wanted = list(LAWS) if laws is None else [_ALIASES.get(name, name) for name in laws]
    unknown = [name for name in wanted if name not in LAWS]
    require(not unknown, f"unknown Kaplan law(s) {unknown}; choose from {list(LAWS)}")
    n_col, c_col = param_column(param_count), compute_column(compute)
    rows, dropped = usable(records, [n_col, "tokens", c_col, loss], statuses, "fit_kaplan",
                           positive=[n_col, "tokens", c_col, loss])
    require(len(rows) > 0, f"fit_kaplan: no usable runs ({_reasons(dropped)})")
    settings = {"N": n_col, "D": "tokens", "C": c_col, "loss": loss, "bootstrap": bootstrap, "seed": seed,
                "curves": bool(is_history(rows)), "points": points}
    if points == "ends":
        rows = final_rows(rows)
    dropped = summary_of_dropped(dropped)
    fitters = {"L(N)": _fit_l_n, "L(D)": _fit_l_d, "L(C_min)": _fit_l_c, "L(N,D)": _fit_joint}
    fits, skipped = {}, {}
    for name in wanted:
        try:
            fit = fitters[name](rows, n_col, c_col, loss, bootstrap, seed,
                                warmup_fraction=warmup_fraction, keep_edge_models=keep_edge_models, points=points)
        except ValueError as exc:
            if laws is not None:
                raise
            skipped[name] = str(exc)
            continue
        fits[name] = dataclasses.replace(
            fit, dropped=dropped_frame([dropped, fit.dropped]), settings={**settings, **fit.settings,
                                                                          "bootstrap": bootstrap})
    require(bool(fits), "fit_kaplan: no law could be fitted: "
                        + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return FitSet(fits, skipped)


def _reasons(dropped: pd.DataFrame) -> str:
    counts = dropped["reason"].value_counts()
    return ", ".join(f"{n} x {reason}" for reason, n in counts.items()) or "no rows"


def _cells(final: pd.DataFrame, n_col: str) -> np.ndarray:
    """A run's grid cell: its N and D (runs of one cell differ only in seed)."""
    return cell_codes(final, [n_col, _data_column(final)])


def _data_column(final: pd.DataFrame) -> str:
    return "target_tokens" if "target_tokens" in final and final["target_tokens"].notna().all() else "tokens"


def best_cells(final: pd.DataFrame, group: str, loss: str, codes: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """For each value of `group`, the runs of its best cell (least mean ln loss over its seeds), and
    their cell codes."""
    final = final.reset_index(drop=True)
    mean = pd.Series(np.log(final[loss].to_numpy(float))).groupby(codes).transform("mean")
    by_cell = final.assign(_cell=codes, _mean=mean.to_numpy())
    best = by_cell.loc[by_cell.groupby(group, sort=True)["_mean"].idxmin().to_numpy(), "_cell"]
    keep = by_cell["_cell"].isin(best.to_numpy()).to_numpy()
    picked = by_cell.loc[keep].sort_values([group, "_cell"], kind="stable")
    return picked.drop(columns=["_cell", "_mean"]), picked["_cell"].to_numpy()


def _fit_l_n(rows, n_col, c_col, loss, bootstrap, seed, **_):
    final = final_rows(rows)
    best, cells = best_cells(final, n_col, loss, _cells(final, n_col))
    require(best[n_col].nunique() >= 2,
            f"L(N): a single model size ({best[n_col].iloc[0]:.4g} parameters); need at least two")
    fit = fit_power_law(best[n_col], best[loss], bootstrap=bootstrap, seed=seed, x_name="N", y_name="L",
                        law="L(N)", cells=cells)
    return dataclasses.replace(_with_ids(fit, best), settings={**fit.settings,
        "point_source": "final loss per model size (the best cell over data sizes)"})


def _after_warmup(rows: pd.DataFrame, warmup_fraction: float) -> pd.DataFrame:
    last_step = rows.groupby("run_id")["step"].transform("max")
    return rows.loc[rows["step"] >= warmup_fraction * last_step]


def _single_data_size(final: pd.DataFrame) -> bool:
    group = "target_tokens" if "target_tokens" in final and final["target_tokens"].notna().all() else "tokens"
    return final[group].nunique() < 2


def _fit_l_d(rows, n_col, c_col, loss, bootstrap, seed, *, warmup_fraction=0.1, points="ends", **_):
    """Per data size, the best final loss over model sizes. When the grid has one data size and
    learning curves are given, the points are instead the data-limited envelope of the curves: at
    each evaluated token count, the least loss over all models (Kaplan et al. 2020 Sec. 5 read
    L(N, S) off learning curves the same way). Such points come from runs whose learning rate has
    not finished decaying, so they sit slightly above a run trained to exactly D."""
    final = final_rows(rows)
    source, cells = "final loss per data size (the best cell over model sizes)", None
    if points == "curves" and _single_data_size(final) and is_history(rows):
        best = best_per_group(_after_warmup(rows, warmup_fraction), "tokens", loss)
        source = "learning-curve envelope (best loss over models at each token count; mid-schedule points)"
    else:
        best, cells = best_cells(final, _data_column(final), loss, _cells(final, n_col))
    require(best["tokens"].nunique() >= 2,
            f"L(D): a single data size ({best['tokens'].iloc[0]:.4g} tokens); need at least two "
            + ("(a grid of data sizes, or points=\"curves\" with learning curves from load_history)"
               if points == "ends" else "(or pass learning curves from load_history)"))
    fit = fit_power_law(best["tokens"], best[loss], bootstrap=bootstrap, seed=seed, x_name="D", y_name="L",
                        law="L(D)", cells=cells)
    return dataclasses.replace(_with_ids(fit, best), settings={**fit.settings, "point_source": source})


def _with_ids(fit: Fit, rows: pd.DataFrame) -> Fit:
    data = fit.data.copy()
    if "run_id" in rows:
        data.insert(0, "run_id", rows["run_id"].to_numpy())
    return dataclasses.replace(fit, data=data)


# ---------------------------------------------------------------------------------------------
# L(C_min): the lower envelope of every learning curve against compute.

def frontier_mask(compute: np.ndarray, loss: np.ndarray, include: np.ndarray) -> np.ndarray:
    """Rows (among `include`) whose loss is below every included row of less compute.

    `compute` must be sorted ascending.
    """
    masked = np.where(include, loss, np.inf)
    previous_best = np.concatenate([[np.inf], np.minimum.accumulate(masked)[:-1]])
    return include & (masked < previous_best)


def compute_frontier(rows: pd.DataFrame, n_col: str, c_col: str, loss: str, *, warmup_fraction: float = 0.1,
                     keep_edge_models: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frontier rows, rows dropped before the envelope with a reason), sorted by compute."""
    rows = rows.sort_values([c_col, loss], kind="stable")
    dropped = []
    if is_history(rows) and warmup_fraction > 0:
        last_step = rows.groupby("run_id")["step"].transform("max")
        early = rows["step"] < warmup_fraction * last_step
        dropped.append(rows.loc[early].assign(reason=f"before {warmup_fraction:.0%} of the run (warmup)"))
        rows = rows.loc[~early]
    on_front = frontier_mask(rows[c_col].to_numpy(float), rows[loss].to_numpy(float), np.ones(len(rows), bool))
    front = rows.loc[on_front]
    sizes = rows[n_col].unique()
    if not keep_edge_models and len(sizes) >= 3:
        edge = front[n_col].isin([sizes.min(), sizes.max()])
        dropped.append(front.loc[edge].assign(
            reason="frontier on the smallest or largest model (the optimum may lie outside the grid)"))
        front = front.loc[~edge]
    return front, dropped_frame([d[[c for c in ("run_id", "step", n_col, c_col, loss, "reason") if c in d]]
                                 for d in dropped])


def _fit_l_c(rows, n_col, c_col, loss, bootstrap, seed, *, warmup_fraction, keep_edge_models, points="ends"):
    front, dropped = compute_frontier(rows, n_col, c_col, loss, warmup_fraction=warmup_fraction,
                                      keep_edge_models=keep_edge_models)
    require(len(front) >= 2, f"L(C_min): {len(front)} frontier point(s) after dropping warmup and edge "
                             f"models; need at least 2 (try keep_edge_models=True, or more model sizes)")
    fit = fit_power_law(front[c_col], front[loss], bootstrap=0, x_name="C", y_name="L", law="L(C_min)")
    fit = _with_ids(fit, front)
    if bootstrap:
        samples = _frontier_bootstrap(rows, n_col, c_col, loss, bootstrap, seed, warmup_fraction,
                                      keep_edge_models)
        fit = dataclasses.replace(fit, samples=samples, intervals=intervals_from(samples, fit.params))
    source = ("the frontier of every learning-curve row (mid-schedule points)" if is_history(rows) else
              "the frontier of the runs' end points")
    return dataclasses.replace(fit, dropped=dropped, settings={
        "warmup_fraction": warmup_fraction, "point_source": source, "keep_edge_models": keep_edge_models})


def _frontier_bootstrap(rows, n_col, c_col, loss, bootstrap, seed, warmup_fraction, keep_edge_models):
    """Resample whole runs (a learning curve's points are not independent) and refit the frontier."""
    rows = rows.sort_values([c_col, loss], kind="stable")
    if is_history(rows) and warmup_fraction > 0:
        rows = rows.loc[rows["step"] >= warmup_fraction * rows.groupby("run_id")["step"].transform("max")]
    run_codes, run_ids = pd.factorize(rows["run_id"] if "run_id" in rows else pd.Series(np.arange(len(rows))))
    counts = resample_counts(len(run_ids), bootstrap, seed)
    compute, losses = rows[c_col].to_numpy(float), rows[loss].to_numpy(float)
    sizes = rows[n_col].to_numpy(float)
    weights = np.zeros((bootstrap, len(rows)))
    for b in range(bootstrap):
        row_counts = counts[b, run_codes]
        mask = frontier_mask(compute, losses, row_counts > 0)
        if not keep_edge_models:
            present = np.unique(sizes[row_counts > 0])
            if len(present) >= 3:
                mask &= (sizes != present[0]) & (sizes != present[-1])
        if np.unique(compute[mask]).size >= 2:
            weights[b, mask] = row_counts[mask]
    theta = np.full((bootstrap, 2), np.nan)
    good = weights.sum(axis=1) > 0
    theta[good] = _solve_pure(np.log(compute), np.log(losses), weights[good])
    return pd.DataFrame(_to_params(theta, irreducible=False), columns=["C_c", "alpha_C"])


# ---------------------------------------------------------------------------------------------
# Joint L(N, D), eq. 1.5, fitted as ln L = alpha_D * logaddexp(u - p ln N, v - ln D)
# with p = alpha_N / alpha_D, u = p ln N_c, v = ln D_c (linear in u and v, so LM is well behaved).

JOINT_NAMES = ["N_c", "D_c", "alpha_N", "alpha_D"]


def _joint_residuals(theta, ln_n, ln_d, ln_l):
    u, v, p, alpha_d = (theta[:, i:i + 1] for i in range(4))
    lse, (s1, s2) = log_sum_exp_weights(u - p * ln_n, v - ln_d)
    jac = np.stack([alpha_d * s1, alpha_d * s2, -alpha_d * s1 * ln_n, lse], axis=-1)
    return alpha_d * lse - ln_l, jac


def _joint_params(theta: np.ndarray) -> np.ndarray:
    u, v, p, alpha_d = theta.T
    alpha_n = p * alpha_d
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n_c = np.exp(u / p)
        a_opt = alpha_d / (alpha_n + alpha_d)  # N_opt ∝ C^a_opt at C = 6ND (minimise L(N, C/6N) over N)
        alpha_c = alpha_n * alpha_d / (alpha_n + alpha_d)  # the L(C_min) exponent the law implies
    return np.column_stack([n_c, np.exp(v), alpha_n, alpha_d, a_opt, alpha_c])


def joint_loss(params, N, D):
    p = params["alpha_N"] / params["alpha_D"]
    return ((params["N_c"] / np.asarray(N, float)) ** p + params["D_c"] / np.asarray(D, float)) ** params["alpha_D"]


def joint_allocation(params, C):
    """N_opt, D_opt minimising L(N, D) at C = 6 N D: d/dN of the bracket is zero where
    N^(p+1) = p N_c^p C / (6 D_c)."""
    p = params["alpha_N"] / params["alpha_D"]
    n_opt = (p * params["N_c"] ** p * C / (6 * params["D_c"])) ** (1 / (p + 1))
    return n_opt, C / (6 * n_opt)


def _fit_joint(rows, n_col, c_col, loss, bootstrap, seed, *, warmup_fraction=0.1, points="ends", **_):
    """Final losses of an N x D grid, each cell once (its seeds averaged); with points="curves", one
    data size and learning curves given, every curve's points after warmup (each point is (N, tokens
    so far, loss); see `_fit_l_d` for the caveat)."""
    final = final_rows(rows)
    source, cells = "final loss of each run (one point per cell)", _cells(final, n_col)
    if points == "curves" and _single_data_size(final) and is_history(rows):
        final, cells = _after_warmup(rows, warmup_fraction), None
        source = "learning-curve points after warmup (mid-schedule points)"
    n, d, l = (final[c].to_numpy(float) for c in (n_col, "tokens", loss))
    n_cells = len(final) if cells is None else np.unique(cells).size
    enough_points(n_cells, 4, "L(N,D)")
    require(np.unique(n).size >= 2, f"L(N,D): a single model size ({n[0]:.4g} parameters); need at least two")
    require(np.unique(d).size >= 2, f"L(N,D): a single data size ({d[0]:.4g} tokens); need at least two")
    ln_n, ln_d, ln_l = np.log(n), np.log(d), np.log(l)
    residuals = partial(_joint_residuals, ln_n=ln_n[None, :], ln_d=ln_d[None, :], ln_l=ln_l[None, :])
    starts = []
    for p in (0.5, 0.8, 1.25, 2.0):
        for alpha_d in (0.03, 0.1, 0.3):
            starts.append([np.median(ln_l / alpha_d + p * ln_n), np.median(ln_l / alpha_d + ln_d), p, alpha_d])
    weights = None if cells is None else cell_weights(cells)
    theta, cost = levenberg_marquardt(residuals, np.array(starts), weights)
    best = theta[np.argmin(cost)]
    samples = None
    if bootstrap and n_cells > 4:  # 4 points, 4 parameters: an exact fit, no interval
        if cells is not None:
            counts = two_stage_counts(cells, bootstrap, seed)  # cells, then the seeds within each
        else:
            # Learning-curve points of one run are not independent: resample whole runs.
            codes, ids = pd.factorize(final["run_id"] if "run_id" in final else pd.Series(np.arange(len(n))))
            counts = resample_counts(len(ids), bootstrap, seed)[:, codes]
        boot, _ = levenberg_marquardt(residuals, np.repeat(best[None], bootstrap, axis=0), counts)
        samples = pd.DataFrame(_joint_params(boot), columns=JOINT_NAMES + ["a_opt", "alpha_C"])
    values = _joint_params(best[None])[0]
    params = dict(zip(JOINT_NAMES + ["a_opt", "alpha_C"], map(float, values)))
    log_pred = np.log(joint_loss(params, n, d))
    data = pd.DataFrame({"run_id": final["run_id"].to_numpy() if "run_id" in final else np.arange(len(n)),
                         "N": n, "D": d, "L": l, "residual": ln_l - log_pred})
    return Fit(
        law="L(N,D)",
        formula="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D; N_opt ∝ C^a_opt",
        inputs=("N", "D"), params=params, intervals=intervals_from(samples, params),
        data=data, dropped=dropped_frame([]), quality=log_quality(ln_l, log_pred), settings={"point_source": source},
        model=joint_loss, allocation=joint_allocation, samples=samples, n_fitted=4,
    )
