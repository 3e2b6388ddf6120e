"""How far an approach-3 fit moves when the choices behind it change, reported with the fit.

Three checks (SCIENCE.md, "Fitting"):

    Huber's delta    the fit at the paper's delta = 1e-3 (Hoffmann et al. 2022, App. D.2) and at a
                     delta matched to the residual scale (the default; analysis.approach3)
    E profile        the least objective with E held fixed, over 0 <= E < min observed loss. If
                     it stays within the bootstrap's spread over most of that range, the runs do
                     not measure E: a flat profile is why leaving out a few runs can move E by
                     as much as its value (Besiroglu et al. 2024 found the published
                     intervals implausibly narrow for the same reason)
    leave one out    a refit without each group of runs (one model shape, one IsoFLOP budget, or
                     one tenth of the model sizes), and the spread of every parameter over them

`approach3_sensitivity(fit)` runs them; `fit_chinchilla(approach=3)` attaches the result to the
Fit (`fit.sensitivity`) whenever it bootstraps, and `repr(fit)` then says in a line when the fit
is fragile: E not identified, or a parameter that the paper's delta or one left-out group moves
outside its 95% bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.approach3 import (APPROACH3_NAMES, GRID_AXES, HOFFMANN_GRID, HUBER_DELTA, huber_objective,
                                lbfgs, matched_delta_fit, minimise, params_of, theta_of)
from analysis.fit_result import Fit, require
from analysis.lbfgs import minimize_batched

CHECKED = ("E", "alpha", "beta", "a")  # A and B follow the exponents; b = 1 - a
E_PROFILE_POINTS = 24
E_PROFILE_TOP = 0.95  # of the least observed loss: E there leaves almost nothing to the power laws
# E counts as identified when the profile rules out at least half of the values it could take,
# [0, min observed loss): a convention, stated with the range itself wherever it is reported.
E_IDENTIFIED_SHARE = 0.5
# The percentile of the objective's rise at the bootstrap replicates that counts as "within the
# bootstrap's spread". In the quadratic (least-squares) regime the rise at a replicate is about
# sigma^2/2 x chi^2_k for k = 5 free parameters, and a profile's rise at E is sigma^2/2 x z^2 for
# E z standard errors away; the median of chi^2_5 (4.35) is near the 95% point of chi^2_1 (3.84),
# so the E values within the median rise form about a 95% profile interval for E.
TOLERANCE_QUANTILE = 50
N_SIZE_GROUPS = 10
MAX_GROUPS = 30


@dataclass(frozen=True, eq=False)
class Sensitivity:
    """What `approach3_sensitivity` found.

    deltas: one row per Huber delta, the fit's own first ("matched" or "fit", then "paper"; or
        "paper", then "matched"): the rule, the delta, every parameter, the objective.
    e_profile: one row per fixed E: the least objective, its rise above the fit's, the other
        parameters at that minimum.
    e_tolerance: the median rise of the objective (on all the data) at the bootstrap replicates'
        parameters: values of E whose profile stays below it fit the runs as well as a typical
        replicate does. NaN without bootstrap replicates.
    e_plausible: the least and greatest E on the profile within the tolerance.
    e_range: (0, least observed loss), the values E can take.
    e_identified: False when e_plausible spans more than E_IDENTIFIED_SHARE of e_range; None
        without bootstrap replicates.
    group: what one left-out group is ("shape", "flops_budget", "model size decile", a column).
    leave_one_out: one row per left-out group: its label, how many runs it held, every parameter.
    """

    deltas: pd.DataFrame
    e_profile: pd.DataFrame
    e_tolerance: float
    e_plausible: tuple[float, float]
    e_range: tuple[float, float]
    e_identified: bool | None
    group: str
    leave_one_out: pd.DataFrame

    def leave_one_out_spread(self) -> dict[str, tuple[float, float]]:
        """(least, greatest) of every parameter over the leave-one-group-out refits."""
        frame = self.leave_one_out
        return {name: (float(frame[name].min()), float(frame[name].max())) for name in APPROACH3_NAMES
                if name in frame and frame[name].notna().any()}

    def fragile_reasons(self, fit: Fit) -> list[str]:
        """Why the fit should not be trusted as its intervals suggest; empty when none is found."""
        reasons = []
        if self.e_identified is False:
            lo, hi = self.e_plausible
            reasons.append(f"E is not identified (fixing E anywhere in [{lo:.3g}, {hi:.3g}] of the possible "
                           f"[0, {self.e_range[1]:.3g}] raises the objective by less than the bootstrap's spread)")
        paper = self.deltas.set_index("rule").loc["paper"] if "paper" in set(self.deltas["rule"]) else None
        if paper is not None and fit.settings.get("huber_delta") != HUBER_DELTA:
            moved = [f"{name} {fit.params[name]:.3g} -> {paper[name]:.3g}" for name in CHECKED
                     if _outside(paper[name], fit.intervals.get(name))]
            if moved:
                reasons.append(f"the paper's delta {HUBER_DELTA:g} moves {', '.join(moved)}, outside the "
                               f"95% interval")
        # One group moving a parameter over more than its whole 95% interval: the bootstrap, which
        # treats runs as independent, understates what the groups do. (Leaving one of G groups
        # out spreads an estimate over about one standard error when runs are independent, a
        # quarter of the interval; a single refit outside the interval happens by chance.)
        spread = self.leave_one_out_spread()
        moved = [f"{name} over {spread[name][0]:.3g}-{spread[name][1]:.3g}" for name in CHECKED
                 if name in spread and _wider(spread[name], fit.intervals.get(name))]
        if moved:
            reasons.append(f"leaving out one {self.group} moves {', '.join(moved)}, more than the whole "
                           f"95% interval")
        return reasons

    def __repr__(self) -> str:
        lines = ["Sensitivity of Chinchilla approach 3"]
        for _, row in self.deltas.iterrows():
            lines.append(f"  delta {row['delta']:.3g} ({row['rule']}): "
                         + ", ".join(f"{k}={row[k]:.3g}" for k in CHECKED))
        lo, hi = self.e_plausible
        state = {True: "identified", False: "NOT identified", None: "unknown (no bootstrap)"}[self.e_identified]
        lines.append(f"  E profile: within the bootstrap's spread for E in [{lo:.3g}, {hi:.3g}] of "
                     f"[0, {self.e_range[1]:.3g}]: E {state}")
        spread = self.leave_one_out_spread()
        lines.append(f"  leaving out one {self.group} ({len(self.leave_one_out)} refits): "
                     + ", ".join(f"{k} {spread[k][0]:.3g}-{spread[k][1]:.3g}" for k in CHECKED if k in spread))
        return "\n".join(lines)


def _wider(spread, interval) -> bool:
    if interval is None or not np.all(np.isfinite(interval)):
        return False
    return spread[1] - spread[0] > interval[1] - interval[0]


def _outside(value: float, interval) -> bool:
    if interval is None or not np.isfinite(value) or not np.all(np.isfinite(interval)):
        return False
    return not interval[0] <= value <= interval[1]


def approach3_sensitivity(fit: Fit, *, group: str | None = None, paper_theta: np.ndarray | None = None,
                          n_refine: int | None = 8) -> Sensitivity:
    """The three checks of this module on an approach-3 fit (`fit_chinchilla(approach=3)`).

    group: what to leave out: "shape" (n_layer x d_model; the default where the records have 3
        to 10 shapes), "flops_budget", "size" (up to ten groups of neighbouring model sizes, the
        default otherwise) or a column of `fit.data`.
    paper_theta: the fit's optimum at the paper's delta, where the caller has it (saves a refit).
    """
    require(fit.law == "Chinchilla approach 3", f"sensitivity checks apply to Chinchilla approach 3, not {fit.law}")
    ln_n, ln_d, ln_l = (np.log(fit.data[c].to_numpy(float)) for c in ("N", "D", "L"))
    delta = float(fit.settings["huber_delta"])
    theta = theta_of(fit.params)[0]
    deltas = _delta_rows(fit, theta, ln_n, ln_d, ln_l, paper_theta, n_refine)
    tolerance = _objective_tolerance(fit, theta, ln_n, ln_d, ln_l, delta)
    profile = e_profile(theta, ln_n, ln_d, ln_l, delta)
    e_range = (0.0, float(np.exp(ln_l.min())))
    plausible = plausible_range(profile, fit.params["E"], tolerance)
    identified = None
    if np.isfinite(tolerance):
        identified = bool(plausible[1] - plausible[0] <= E_IDENTIFIED_SHARE * e_range[1])
    label, labels = _groups(fit.data, group)
    logo = leave_one_group_out(theta, ln_n, ln_d, ln_l, delta, labels)
    return Sensitivity(deltas=deltas, e_profile=profile, e_tolerance=tolerance, e_plausible=plausible,
                       e_range=e_range, e_identified=identified, group=label, leave_one_out=logo)


def _delta_rows(fit, theta, ln_n, ln_d, ln_l, paper_theta, n_refine) -> pd.DataFrame:
    """The fit at its own delta and at the other rule's (the paper's, or the matched one)."""
    delta = float(fit.settings["huber_delta"])
    rows = [("matched" if str(fit.settings.get("huber_delta_rule", "")).startswith("matched") else "fit",
             delta, theta, fit.quality.get("huber_objective", np.nan))]
    if delta != HUBER_DELTA:
        if paper_theta is None:
            paper_theta, _, _ = minimise(HOFFMANN_GRID, ln_n, ln_d, ln_l, HUBER_DELTA, n_refine)
        value = huber_objective(paper_theta, ln_n, ln_d, ln_l, None, HUBER_DELTA)[0]
        rows.append(("paper", HUBER_DELTA, paper_theta, value))
    else:
        matched = matched_delta_fit(HOFFMANN_GRID, ln_n, ln_d, ln_l, n_refine)
        rows = [("paper", delta, theta, rows[0][3]),
                ("matched", matched["delta"], matched["theta"], matched["objective"])]
    frame = pd.DataFrame(params_of(np.array([r[2] for r in rows])), columns=APPROACH3_NAMES)
    frame.insert(0, "delta", [r[1] for r in rows])
    frame.insert(0, "rule", [r[0] for r in rows])
    frame["objective"] = [float(r[3]) for r in rows]
    return frame


def _objective_tolerance(fit, theta, ln_n, ln_d, ln_l, delta) -> float:
    """How much the objective on all the data rises at the bootstrap replicates' parameters (its
    TOLERANCE_QUANTILE-th percentile): the scale below which the data cannot tell fits apart."""
    if fit.samples is None:
        return float("nan")
    boot = theta_of(fit.samples)
    boot = boot[np.isfinite(boot).all(axis=1)]
    if len(boot) < 2:
        return float("nan")
    best = huber_objective(theta, ln_n, ln_d, ln_l, None, delta)[0]
    rises = huber_objective(boot, ln_n, ln_d, ln_l, None, delta)[0] - best
    return float(np.percentile(rises, TOLERANCE_QUANTILE))


# ---------------------------------------------------------------------------------------------
# The profile of the objective over a fixed E

# Starts for (a, b, alpha, beta) at each fixed E besides the fit's own optimum: Hoffmann et al.'s
# grid without its e axis and its extreme exponents (0 and 2), 324 points, a third of the cost.
PROFILE_GRID = np.array([(a, b, alpha, beta) for a in GRID_AXES["a"] for b in GRID_AXES["b"]
                         for alpha in GRID_AXES["alpha"][1:-1] for beta in GRID_AXES["beta"][1:-1]])


def e_profile(theta: np.ndarray, ln_n, ln_d, ln_l, delta: float, n_points: int = E_PROFILE_POINTS,
              n_starts: int = 2) -> pd.DataFrame:
    """min over (A, B, alpha, beta) of the objective with E fixed, for E from 0 to E_PROFILE_TOP of
    the least observed loss (and at the fit's own E). Each E starts L-BFGS from the fit's optimum
    and from the `n_starts` best points of the grid at that E."""
    top = E_PROFILE_TOP * float(np.exp(ln_l.min()))
    fitted_e = float(np.exp(theta[2]))
    values = np.linspace(0.0, top, n_points)
    values = np.unique(np.append(values, fitted_e) if fitted_e < top else values)
    with np.errstate(divide="ignore"):
        e = np.log(values)  # E = 0 is e = -inf: the LSE's third term vanishes
    starts, owner = [], []
    for i, e_i in enumerate(e):
        grid = np.insert(PROFILE_GRID, 2, e_i, axis=1)
        best = np.argsort(huber_objective(grid, ln_n, ln_d, ln_l, None, delta)[0])[:n_starts]
        starts += [theta[[0, 1, 3, 4]], *PROFILE_GRID[best]]
        owner += [i] * (1 + len(best))
    owner = np.array(owner)
    found, objective = _fixed_e_lbfgs(np.array(starts), e[owner], ln_n, ln_d, ln_l, delta)
    frame = pd.DataFrame({"owner": owner, "objective": objective, "a": found[:, 0], "b": found[:, 1],
                          "alpha": found[:, 2], "beta": found[:, 3]})
    best = frame.loc[frame.groupby("owner")["objective"].idxmin()].sort_values("owner")
    fitted = huber_objective(theta, ln_n, ln_d, ln_l, None, delta)[0]
    return pd.DataFrame({"E": values[best["owner"].to_numpy()], "objective": best["objective"].to_numpy(),
                         "rise": np.maximum(best["objective"].to_numpy() - fitted, 0.0),
                         "A": np.exp(best["a"].to_numpy()), "B": np.exp(best["b"].to_numpy()),
                         "alpha": best["alpha"].to_numpy(), "beta": best["beta"].to_numpy()})


def plausible_range(profile: pd.DataFrame, fitted_e: float, tolerance: float) -> tuple[float, float]:
    """The E values around the fit's own whose profile rises by at most `tolerance`: the run of
    profile points within it that holds the fitted E, its ends interpolated linearly to where the
    rise crosses the tolerance. (fitted E, fitted E) when the tolerance is unknown."""
    if not np.isfinite(tolerance):
        return fitted_e, fitted_e
    e, rise = profile["E"].to_numpy(float), profile["rise"].to_numpy(float)
    centre = int(np.argmin(np.abs(e - fitted_e)))
    lo = hi = centre
    while lo > 0 and rise[lo - 1] <= tolerance:
        lo -= 1
    while hi < len(e) - 1 and rise[hi + 1] <= tolerance:
        hi += 1

    def crossing(inside: int, outside: int) -> float:
        share = (tolerance - rise[inside]) / (rise[outside] - rise[inside])
        return float(e[inside] + share * (e[outside] - e[inside]))

    return (crossing(lo, lo - 1) if lo > 0 else float(e[0]),
            crossing(hi, hi + 1) if hi < len(e) - 1 else float(e[-1]))


def _fixed_e_lbfgs(theta4: np.ndarray, e: np.ndarray, ln_n, ln_d, ln_l, delta: float):
    """L-BFGS over (a, b, alpha, beta) with row i's e held at e[i]; scaled by 1/delta and in
    centred coordinates, as analysis.approach3.lbfgs is (its docstring says why)."""
    centre_n, centre_d = float(np.mean(ln_n)), float(np.mean(ln_d))
    shift = np.zeros((4, 4))
    shift[2, 0], shift[3, 1] = centre_n, centre_d

    def scaled(x, rows):
        full = np.insert(x, 2, e[rows], axis=1)
        value, grad = huber_objective(full, ln_n - centre_n, ln_d - centre_d, ln_l, None, delta)
        return value / delta, np.delete(grad, 2, axis=1) / delta

    centred, value, _ = minimize_batched(scaled, theta4 @ (np.eye(4) - shift))
    return centred @ (np.eye(4) + shift), value * delta


# ---------------------------------------------------------------------------------------------
# Leave one group out

def _groups(data: pd.DataFrame, group: str | None) -> tuple[str, pd.Series]:
    """(what a group is, the group label of every point)."""
    if group is None:  # shapes where a sweep repeats a few of them, else neighbouring sizes
        shapes = data[["n_layer", "d_model"]].drop_duplicates() if {"n_layer", "d_model"} <= set(data) else []
        group = "shape" if 2 < len(shapes) <= N_SIZE_GROUPS else "size"
    if group == "shape":
        require({"n_layer", "d_model"} <= set(data), "group=\"shape\" needs n_layer and d_model in the records")
        return "shape", "L" + data["n_layer"].astype(str) + "-d" + data["d_model"].astype(str)
    if group == "size":
        # Ten groups of neighbouring model sizes (fewer where there are fewer sizes).
        ranks = pd.Series(np.log(data["N"].to_numpy(float))).rank(method="dense")
        n_groups = min(N_SIZE_GROUPS, int(ranks.max()))
        code = np.minimum((ranks.to_numpy() - 1) * n_groups // ranks.max(), n_groups - 1).astype(int)
        n = data["N"].to_numpy(float)
        bounds = {c: f"N {n[code == c].min():.3g}-{n[code == c].max():.3g}" for c in np.unique(code)}
        return "group of model sizes", pd.Series([bounds[c] for c in code], index=data.index)
    require(group in data, f"group must be \"shape\", \"size\" or a column of the fit's data {list(data)}, "
                           f"got {group!r}")
    return group, data[group]


def leave_one_group_out(theta: np.ndarray, ln_n, ln_d, ln_l, delta: float, labels) -> pd.DataFrame:
    """Refit without each group (from the full fit's optimum, all groups in one batched L-BFGS).
    A group whose removal leaves fewer than 6 points, or one model or data size, is skipped (NaN)."""
    codes, groups = pd.factorize(pd.Series(np.asarray(labels)), use_na_sentinel=False)
    require(len(groups) <= MAX_GROUPS, f"{len(groups)} groups to leave out; at most {MAX_GROUPS}")
    weights = (codes[None, :] != np.arange(len(groups))[:, None]).astype(float)
    kept = weights > 0
    enough = (kept.sum(axis=1) >= 6) & np.array([
        np.unique(ln_n[k]).size >= 2 and np.unique(ln_d[k]).size >= 2 for k in kept])
    found = np.full((len(groups), 5), np.nan)
    if enough.any():
        found[enough], _ = lbfgs(np.repeat(theta[None], enough.sum(), axis=0), ln_n, ln_d, ln_l,
                                 weights[enough], delta)
    frame = pd.DataFrame(params_of(found), columns=APPROACH3_NAMES)
    frame.insert(0, "n_left_out", (~kept).sum(axis=1))
    frame.insert(0, "left_out", list(groups))
    return frame
