"""Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models": approaches 1, 2 and 3.

    approach 1: for each FLOP level, the run with the least loss (the envelope of the learning
                curves); then N_opt ∝ C^a and D_opt ∝ C^b                           (Sec. 3.1)
    approach 2: per IsoFLOP budget a parabola of loss in ln N and its minimum; then the same
                power laws                                                          (Sec. 3.2)
    approach 3: L(N, D) = E + A/N^alpha + B/D^beta, Huber loss on
                ln L - LSE(a - alpha ln N, b - beta ln D, e), summed over points, L-BFGS from a
                grid of starts, the best kept; a = beta/(alpha+beta), b = alpha/(alpha+beta)
                                                                                    (Sec. 3.3, App. D.2)
                Huber's delta is matched to the residual scale by default (1.345 sigma), not the
                paper's 1e-3: see analysis.approach3.

N counts all parameters by default (the paper's convention); `param_count="nonembed"` switches.
Approach 1 measures C with the records' exact FLOP count (the paper counts attention and
embeddings, App. F); approach 3's `optimal_allocation` uses C = 6 N D, as the paper's eq. 4 does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

# The objective, grid and minimiser of approach 3 live in analysis.approach3; the names below
# (huber_objective, lbfgs, HOFFMANN_GRID, ...) stay importable from here, where they started.
from analysis.approach3 import (APPROACH3_NAMES, GRID_AXES, HOFFMANN_GRID, HUBER_DELTA,  # noqa: F401
                                approach3_allocation, approach3_loss, grid_objective, huber_objective,
                                lbfgs, matched_delta_fit, minimise, params_of, refine_candidates)
from analysis.fit_result import (DEFAULT_BOOTSTRAP, Fit, dropped_frame, enough_points, intervals_from,
                                 log_quality, require, resample_counts)
from analysis.select import (compute_column, final_rows, is_history, param_column, summary_of_dropped,
                             usable)
from analysis.seeds import cell_codes, cell_means, cell_weights, has_replicates, two_stage_counts
from analysis.sensitivity import approach3_sensitivity

ALLOCATION_NAMES = ["a", "b", "k_N", "k_D"]


def fit_chinchilla(records: pd.DataFrame, approach: int = 3, *, param_count: str = "all",
                   loss: str = "val_loss", compute: str = "flops", bootstrap: int = DEFAULT_BOOTSTRAP,
                   seed: int = 0, statuses=("complete",), huber_delta: float | str = "matched",
                   starts: np.ndarray | None = None, n_refine: int | None = 8, n_levels: int = 250,
                   warmup_fraction: float = 0.1, sensitivity: bool | None = None) -> Fit:
    """Fit one of Hoffmann et al.'s three approaches to runs (`load_runs`) or learning curves.

    approach 1 uses learning curves (`load_history`) when given them, else each IsoFLOP budget's
        best run; approaches 2 and 3 use each run's final row.
    param_count: "all" (Hoffmann's N, default) or "nonembed".
    compute: the FLOP column of approach 1 ("flops", the exact count, or "flops_6nd").
    bootstrap: replicates that resample runs (within each budget for approach 2), seeded by `seed`.
    huber_delta: approach 3's Huber delta: "matched" (default) sets it to 1.345 x the residuals'
        robust scale, re-estimated from the fit (analysis.approach3.matched_delta_fit); a number
        fixes it (Hoffmann et al.'s is HUBER_DELTA = 1e-3). Bootstrap replicates keep the delta
        of the full-data fit.
    starts: approach 3's L-BFGS starts, rows of (a, b, e, alpha, beta); default Hoffmann's grid.
    n_refine: approach 3 evaluates the objective at every start, then runs L-BFGS from the best start
        of each (alpha, beta) cell plus the `n_refine` best overall; None runs it from every start.
    n_levels: approach 1's log-spaced FLOP levels.
    sensitivity: approach 3 only: run analysis.sensitivity's checks (the paper's delta, the profile
        over E, leave one shape out) and keep them as `fit.sensitivity`; None (default) runs them
        whenever the fit bootstraps, since they judge the objective against the bootstrap's spread.
    """
    require(approach in (1, 2, 3), f"approach must be 1, 2 or 3, got {approach!r}")
    require(bootstrap >= 0, f"bootstrap must be >= 0, got {bootstrap}")
    n_col = param_column(param_count)
    c_col = compute_column(compute)
    columns = [n_col, "tokens", loss] + ([c_col] if approach == 1 else [])
    rows, dropped = usable(records, columns, statuses, f"approach {approach}", positive=columns)
    dropped = summary_of_dropped(dropped)
    settings = {"approach": approach, "N": n_col, "D": "tokens", "loss": loss, "bootstrap": bootstrap, "seed": seed}
    if approach == 3:
        fit = _approach3(final_rows(rows), n_col, loss, bootstrap, seed, huber_delta, starts, n_refine,
                        sensitivity)
    elif approach == 2:
        fit = _approach2(final_rows(rows), n_col, loss, bootstrap, seed)
    else:
        fit = _approach1(rows, n_col, c_col, loss, bootstrap, seed, n_levels, warmup_fraction)
    return dataclasses.replace(fit, settings={**settings, **fit.settings},
                               dropped=dropped_frame([dropped, fit.dropped]))


# ---------------------------------------------------------------------------------------------
# Approach 3

def _approach3(runs, n_col, loss, bootstrap, seed, delta, starts, n_refine, sensitivity):
    """Fitted to each cell's mean (runs that differ only in seed averaged in ln L); the bootstrap
    resamples cells, then the seeds within each (analysis.seeds)."""
    cells = cell_codes(runs, [n_col, "tokens"])
    final = cell_means(runs, cells, loss)
    n, d, l = (final[c].to_numpy(float) for c in (n_col, "tokens", loss))
    enough_points(len(final), 5, "approach 3")
    require(np.unique(n).size >= 2, f"approach 3: a single model size ({n[0]:.4g} parameters); "
                                    f"L(N, D) needs at least two")
    require(np.unique(d).size >= 2, f"approach 3: a single data size ({d[0]:.4g} tokens); "
                                    f"L(N, D) needs at least two")
    ln_n, ln_d, ln_l = np.log(n), np.log(d), np.log(l)
    starts = HOFFMANN_GRID if starts is None else np.atleast_2d(np.asarray(starts, float))
    require(starts.shape[1] == 5, "starts must be rows of (a, b, e, alpha, beta)")
    if delta == "matched":
        matched = matched_delta_fit(starts, ln_n, ln_d, ln_l, n_refine)
        delta, theta, objective, n_refined = (matched[k] for k in ("delta", "theta", "objective", "n_refined"))
        rule = matched["rule"]
    else:
        require(isinstance(delta, (int, float)) and delta > 0,
                f"huber_delta must be \"matched\" or a number > 0, got {delta!r}")
        theta, objective, n_refined = minimise(starts, ln_n, ln_d, ln_l, float(delta), n_refine)
        rule = "fixed"
    samples = None
    if bootstrap and len(n) > 5:  # 5 points, 5 parameters: an exact fit, no interval
        # Replicates start at the full-data optimum: a resample of the same points shares its basin.
        if has_replicates(cells):  # every run a point, weighted (cell draws) x (seed draws) / n_seeds
            counts = two_stage_counts(cells, bootstrap, seed)
            points = [np.log(runs[c].to_numpy(float)) for c in (n_col, "tokens", loss)]
        else:
            counts, points = resample_counts(len(n), bootstrap, seed), [ln_n, ln_d, ln_l]
        boot, _ = lbfgs(np.repeat(theta[None], bootstrap, axis=0), *points, counts, delta)
        samples = pd.DataFrame(params_of(boot), columns=APPROACH3_NAMES)
    params = dict(zip(APPROACH3_NAMES, map(float, params_of(theta[None])[0])))
    log_pred = np.log(approach3_loss(params, n, d))
    data = pd.DataFrame({"run_id": final["run_id"].to_numpy() if "run_id" in final else np.arange(len(n)),
                         "N": n, "D": d, "L": l, "residual": ln_l - log_pred, "n_seeds": final["n_seeds"].to_numpy()})
    for column in ("flops_budget", "n_layer", "d_model"):  # what the sensitivity checks group runs by
        if column in final:
            data[column] = final[column].to_numpy(float if column == "flops_budget" else None)
    quality = {"huber_objective": float(objective), **log_quality(ln_l, log_pred)}
    fit = Fit(
        law="Chinchilla approach 3", formula="L = E + A/N^alpha + B/D^beta; N_opt ∝ C^a, D_opt ∝ C^b (C = 6ND)",
        inputs=("N", "D"), params=params, intervals=intervals_from(samples, params), data=data,
        dropped=dropped_frame([]), quality=quality,
        settings={"huber_delta": float(delta), "huber_delta_rule": rule, "n_starts": len(starts),
                  "n_refined": n_refined},
        model=approach3_loss, allocation=approach3_allocation, samples=samples, n_fitted=5)
    if sensitivity or (sensitivity is None and samples is not None):
        fit = dataclasses.replace(fit, sensitivity=approach3_sensitivity(fit, n_refine=n_refine))
    return fit


# ---------------------------------------------------------------------------------------------
# Approaches 1 and 2 end the same way: N_opt = k_N C^a and D_opt = k_D C^b, fitted in log space.

def allocation_law(params, C):
    C = np.asarray(C, float)
    return params["k_N"] * C ** params["a"], params["k_D"] * C ** params["b"]


def _log_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares y = intercept + slope x for every row of y and w (B, n)."""
    total = w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (w * x).sum(axis=1) / total
        my = np.nansum(w * y, axis=1) / total
        dx = x - mx[:, None]
        slope = np.nansum(w * dx * (y - my[:, None]), axis=1) / (w * dx * dx).sum(axis=1)
    return my - slope * mx, slope


def _allocation_fit(law: str, points: pd.DataFrame, boot_c: np.ndarray | None, boot_n, boot_d, boot_w,
                    dropped: pd.DataFrame, settings: dict) -> Fit:
    """The Fit of N_opt(C), D_opt(C) from per-level optima `points` (C, N_opt, D_opt) and bootstrap
    replicates of them (B, levels) with weights (0 where a level is missing in a replicate)."""
    enough_points(len(points), 2, law)
    require(points["C"].nunique() >= 2, f"{law}: a single FLOP level; N_opt(C) needs at least two")
    lc, ln, ld = (np.log(points[c].to_numpy(float)) for c in ("C", "N_opt", "D_opt"))
    ones = np.ones((1, len(lc)))
    (kn,), (a,) = _log_line(lc, ln[None], ones)
    (kd,), (b,) = _log_line(lc, ld[None], ones)
    params = {"a": float(a), "b": float(b), "k_N": float(np.exp(kn)), "k_D": float(np.exp(kd))}
    samples = None
    if boot_c is not None:
        enough = (boot_w > 0).sum(axis=1) >= 2
        boot_w = np.where(enough[:, None], boot_w, 0)
        kn_b, a_b = _log_line(np.log(boot_c), np.log(boot_n), boot_w)
        kd_b, b_b = _log_line(np.log(boot_c), np.log(boot_d), boot_w)
        samples = pd.DataFrame({"a": a_b, "b": b_b, "k_N": np.exp(kn_b), "k_D": np.exp(kd_b)})
        samples[~enough] = np.nan
    n_pred, d_pred = allocation_law(params, points["C"].to_numpy(float))
    data = points.assign(residual_N_opt=ln - np.log(n_pred), residual_D_opt=ld - np.log(d_pred))
    quality = {f"{k}_N_opt": v for k, v in log_quality(ln, np.log(n_pred)).items()}
    quality.update({f"{k}_D_opt": v for k, v in log_quality(ld, np.log(d_pred)).items()})
    return Fit(law=law, formula="N_opt = k_N C^a, D_opt = k_D C^b", inputs=("C",), params=params,
               intervals=intervals_from(samples, params), data=data.reset_index(drop=True), dropped=dropped,
               quality=quality, settings=settings, model=allocation_law, allocation=allocation_law,
               samples=samples, n_fitted=4)


# ---------------------------------------------------------------------------------------------
# Approach 2: parabolas in ln N per IsoFLOP budget.

def _parabolas(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares y = c0 + c1 x + c2 x^2 for every row of w (B, n): (B, 3)."""
    powers = np.stack([np.ones_like(x), x, x * x], axis=1)  # (n, 3)
    lhs = np.einsum("bn,nk,nj->bkj", w, powers, powers)
    rhs = np.einsum("bn,nk,n->bk", w, powers, y)
    diag = np.einsum("bkk->bk", lhs)
    det_ok = np.abs(np.linalg.det(lhs)) > 1e-10 * np.prod(np.maximum(diag, 1e-300), axis=1)
    lhs[~det_ok] = np.eye(3)
    coef = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
    coef[~det_ok] = np.nan
    return coef


def _parabola_minimum(coef, x, w):
    """ln N at the minimum; NaN where the parabola is not convex, its minimum lies outside the
    sampled sizes, or fewer than 3 distinct sizes were drawn."""
    c0, c1, c2 = coef.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x_min = -c1 / (2 * c2)
    drawn = w > 0
    distinct = np.array([np.unique(x[row]).size for row in drawn])
    lo = np.where(drawn, x, np.inf).min(axis=1)
    hi = np.where(drawn, x, -np.inf).max(axis=1)
    ok = (c2 > 0) & (x_min >= lo) & (x_min <= hi) & (distinct >= 3)
    return np.where(ok, x_min, np.nan)


def _approach2(final, n_col, loss, bootstrap, seed):
    require("flops_budget" in final and np.isfinite(final["flops_budget"].to_numpy(float)).any(),
            "approach 2 needs IsoFLOP runs (a finite flops_budget column); these records have none")
    runs = final.loc[np.isfinite(final["flops_budget"].to_numpy(float))]
    points, boot_rows, dropped = [], [], []
    for i, (budget, group) in enumerate(runs.groupby("flops_budget", sort=True)):
        # Centred ln N: the normal equations of a parabola in raw ln N (~15) are ill-conditioned.
        center = float(np.log(group[n_col].to_numpy(float)).mean())
        x = np.log(group[n_col].to_numpy(float)) - center
        y = group[loss].to_numpy(float)
        ln_d = np.log(group["tokens"].to_numpy(float))
        # Each cell (a size; its runs differ only in seed) counts once: the parabola of the seeds' means.
        cells = cell_codes(group, [n_col, "tokens"])
        ones = cell_weights(cells)[None]
        x_min = _parabola_minimum(_parabolas(x, y, ones), x, ones)[0] if np.unique(x).size >= 3 else np.nan
        if not np.isfinite(x_min):
            reason = ("fewer than 3 model sizes" if np.unique(x).size < 3 else
                      "parabola not convex or its minimum outside the sampled sizes")
            dropped.append(pd.DataFrame({"flops_budget": [budget], "n_runs": [len(x)], "reason": [reason]}))
            continue
        coef = _parabolas(x, y, ones)[0]
        (d0,), (d1,) = _log_line(x, ln_d[None], ones)  # D along the IsoFLOP curve, at N_opt
        points.append({"C": budget, "N_opt": np.exp(center + x_min), "D_opt": np.exp(d0 + d1 * x_min),
                       "c0": coef[0], "c1": coef[1], "c2": coef[2], "ln_N_center": center,
                       "ln_N_lo": center + x.min(), "ln_N_hi": center + x.max(), "n_runs": len(x),
                       "n_sizes": int(np.unique(x).size)})
        if bootstrap:
            w = two_stage_counts(cells, bootstrap, seed + 1 + i)
            xb = _parabola_minimum(_parabolas(x, y, w), x, w)
            db = _log_line(x, ln_d[None].repeat(bootstrap, 0), w)
            boot_rows.append((budget, center + xb, db[0] + db[1] * xb))
    require(len(points) >= 2, f"approach 2: {len(points)} IsoFLOP budget(s) with a usable parabola minimum; "
                              f"need at least 2 ({_budget_reasons(dropped)})")
    boot_c = boot_n = boot_d = boot_w = None
    if bootstrap:
        boot_c = np.array([[r[0] for r in boot_rows]] * bootstrap)
        boot_n = np.exp(np.column_stack([r[1] for r in boot_rows]))
        boot_d = np.exp(np.column_stack([r[2] for r in boot_rows]))
        boot_w = np.isfinite(boot_n).astype(float)
        boot_n, boot_d = np.nan_to_num(boot_n, nan=1.0), np.nan_to_num(boot_d, nan=1.0)
    return _allocation_fit("Chinchilla approach 2", pd.DataFrame(points), boot_c, boot_n, boot_d, boot_w,
                           dropped_frame(dropped), {"C": "flops_budget"})


def _budget_reasons(dropped: list[pd.DataFrame]) -> str:
    if not dropped:
        return "no budgets"
    frame = pd.concat(dropped)
    return "; ".join(f"C={c:.3g}: {r}" for c, r in zip(frame["flops_budget"], frame["reason"]))


# ---------------------------------------------------------------------------------------------
# Approach 1: the envelope of learning curves over FLOP levels.

def _approach1(rows, n_col, c_col, loss, bootstrap, seed, n_levels, warmup_fraction):
    if not is_history(rows):
        return _approach1_budgets(rows, n_col, loss, bootstrap, seed)
    rows = rows.sort_values(["run_id", "step"])
    last_step = rows.groupby("run_id")["step"].transform("max")
    warm = rows.loc[rows["step"] < warmup_fraction * last_step]
    rows = rows.loc[rows["step"] >= warmup_fraction * last_step]
    curves = [g for _, g in rows.groupby("run_id", sort=True) if len(g) >= 2]
    require(len(curves) >= 2, "approach 1 needs learning curves of at least 2 runs")
    lc_all = np.log(rows[c_col].to_numpy(float))
    levels = np.linspace(lc_all.min(), lc_all.max(), n_levels)
    loss_at = np.full((len(curves), n_levels), np.nan)
    ln_tokens_at = np.full((len(curves), n_levels), np.nan)
    sizes = np.array([g[n_col].iloc[0] for g in curves], float)
    for i, g in enumerate(curves):
        lc = np.log(g[c_col].to_numpy(float))
        curve = g[loss].to_numpy(float)
        if len(lc) >= 4:
            # Hoffmann et al. smooth each curve before interpolating it (Sec. 3.1): here a
            # quadratic in ln C, so eval noise does not pick the envelope's run.
            centred = lc - lc.mean()
            curve = np.polyval(np.polyfit(centred, curve, 2), centred)
        inside = (levels >= lc.min()) & (levels <= lc.max())
        loss_at[i, inside] = np.interp(levels[inside], lc, curve)
        ln_tokens_at[i, inside] = np.interp(levels[inside], lc, np.log(g["tokens"].to_numpy(float)))

    def envelope(include):
        """Per level: the best included run, or -1 where fewer than 2 runs reach the level or the
        best is the smallest or largest model among them (a size outside might have been better)."""
        masked = np.where(include[:, None], loss_at, np.nan)
        reach = np.isfinite(masked)
        covered = reach.sum(axis=0)
        best = np.argmin(np.where(reach, masked, np.inf), axis=0)
        smallest = np.where(reach, sizes[:, None], np.inf).min(axis=0)
        largest = np.where(reach, sizes[:, None], -np.inf).max(axis=0)
        edge = (sizes[best] == smallest) | (sizes[best] == largest)
        return np.where((covered >= 2) & ~edge, best, -1), covered, edge

    best, covered, _ = envelope(np.ones(len(curves), bool))
    ok = best >= 0
    points = pd.DataFrame({"C": np.exp(levels[ok]), "N_opt": sizes[best[ok]],
                           "D_opt": np.exp(ln_tokens_at[best[ok], np.flatnonzero(ok)]),
                           "run_id": [curves[i]["run_id"].iloc[0] for i in best[ok]]})
    reasons = np.where(covered < 2, "fewer than 2 runs reach this compute",
                       "best run is the smallest or largest model reaching this compute (the optimum "
                       "may lie outside)")
    dropped = [pd.DataFrame({"C": np.exp(levels[~ok]), "reason": reasons[~ok]}),
               summary_of_dropped(warm.assign(reason=f"before {warmup_fraction:.0%} of the run (warmup)"))]
    boot = None
    if bootstrap:
        counts = resample_counts(len(curves), bootstrap, seed)
        boot_n = np.ones((bootstrap, n_levels))
        boot_d = np.ones((bootstrap, n_levels))
        boot_w = np.zeros((bootstrap, n_levels))
        cols = np.arange(n_levels)
        for b in range(bootstrap):
            include = counts[b] > 0
            if include.sum() < 3:
                continue
            best_b, _, _ = envelope(include)
            good = best_b >= 0
            boot_n[b, good] = sizes[best_b[good]]
            boot_d[b, good] = np.exp(ln_tokens_at[best_b[good], cols[good]])
            boot_w[b, good] = 1.0
        boot = (np.exp(np.broadcast_to(levels, (bootstrap, n_levels))), boot_n, boot_d, boot_w)
    require(len(points) >= 2, f"approach 1: {len(points)} FLOP level(s) whose best run is an interior "
                              f"model size; need at least 2 (more model sizes per FLOP level)")
    return _allocation_fit("Chinchilla approach 1", points, *(boot or (None,) * 4), dropped_frame(dropped),
                           {"C": c_col, "n_levels": n_levels, "warmup_fraction": warmup_fraction})


def _approach1_budgets(final, n_col, loss, bootstrap, seed):
    """Approach 1 from summaries only: each IsoFLOP budget's best run is its FLOP level's optimum."""
    require("flops_budget" in final and np.isfinite(final["flops_budget"].to_numpy(float)).any(),
            "approach 1 needs learning curves (load_history) or IsoFLOP runs (flops_budget)")
    runs = final.loc[np.isfinite(final["flops_budget"].to_numpy(float))]
    groups = list(runs.groupby("flops_budget", sort=True))
    points, dropped, boot = [], [], []
    for i, (budget, group) in enumerate(groups):
        group = cell_means(group, cell_codes(group, [n_col, "tokens"]), loss)  # seeds averaged per size
        n = group[n_col].to_numpy(float)
        best = int(np.argmin(group[loss].to_numpy(float)))
        if n[best] in (n.min(), n.max()):
            dropped.append(pd.DataFrame({"flops_budget": [budget], "reason": [
                "best run is the budget's smallest or largest model (the optimum may lie outside)"]}))
            continue
        points.append({"C": budget, "N_opt": n[best], "D_opt": float(group["tokens"].iloc[best]),
                       "run_id": group["run_id"].iloc[best] if "run_id" in group else best})
        if bootstrap:
            w = resample_counts(len(n), bootstrap, seed + 1 + i)
            masked = np.where(w > 0, group[loss].to_numpy(float)[None], np.inf)
            pick = masked.argmin(axis=1)
            drawn_n = np.where(w > 0, n[None], np.nan)
            inner = (n[pick] > np.nanmin(drawn_n, axis=1)) & (n[pick] < np.nanmax(drawn_n, axis=1))
            boot.append((budget, n[pick], group["tokens"].to_numpy(float)[pick], inner.astype(float)))
    require(len(points) >= 2, f"approach 1: {len(points)} IsoFLOP budget(s) whose best run is an interior "
                              f"model size; need at least 2")
    args = (None,) * 4
    if bootstrap:
        args = (np.array([[r[0] for r in boot]] * bootstrap), np.column_stack([r[1] for r in boot]),
                np.column_stack([r[2] for r in boot]), np.column_stack([r[3] for r in boot]))
    return _allocation_fit("Chinchilla approach 1", pd.DataFrame(points), *args, dropped_frame(dropped),
                           {"C": "flops_budget"})
