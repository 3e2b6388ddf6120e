"""The extrapolation audit: fit a law on the smaller runs, predict the larger ones.

Predicting runs bigger than any fitted is what a scaling law is for, so it is the check that
matters (SCIENCE.md, "Check by extrapolation"; Hoffmann et al. 2022 Sec. 3.4 and Besiroglu et al.
2024 judge fits the same way). `extrapolation_audit` fits on the runs whose training FLOPs are
below `holdout_flops`, predicts every held-out run with its 95% prediction interval (bootstrap
replicates plus the residual scatter, `Fit.predict(..., interval=True)`), and returns one row per
held-out run. The frame's `attrs` hold the summary: the median absolute relative error and the
share of held-out runs inside their interval (its coverage, nominally 95%).

It takes any records frame with `run_id`, `n_params` (or `n_params_nonembed`), `tokens`, `flops`
and the loss column: this tool's `load_runs` / `load_history`, or a published table of runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.chinchilla import fit_chinchilla
from analysis.fit_result import DEFAULT_BOOTSTRAP, Fit, require
from analysis.kaplan import fit_kaplan
from analysis.select import PARAM_COUNTS, final_rows, param_column, require_columns, usable

AUDIT_COLUMNS = ["run_id", "flops", "N", "tokens", "observed", "predicted", "lower", "upper", "error", "inside"]
LAWS = ("chinchilla", "kaplan")


def extrapolation_audit(records: pd.DataFrame, law: str = "chinchilla", approach: int = 3,
                        holdout_flops: float | None = None, *, param_count: str | None = None,
                        loss: str = "val_loss", bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                        statuses=("complete",), **fit_options) -> pd.DataFrame:
    """Fit `law` on the runs with final training FLOPs below `holdout_flops`; predict the others.

    law: "chinchilla" (approach 3, L = E + A/N^alpha + B/D^beta; approaches 1 and 2 predict an
        allocation, not a loss) or "kaplan" (the joint L(N, D), eq. 1.5 of Kaplan et al. 2020).
    holdout_flops: runs whose final `flops` are at least this are held out; None picks
        `default_holdout_flops(records)` (the largest IsoFLOP budget, else the largest third).
    param_count: which parameter count is N: the law's own convention by default (all parameters
        for Chinchilla, non-embedding for Kaplan, or all where the records lack that column).
    fit_options: passed to fit_chinchilla / fit_kaplan.

    Returns one row per held-out run: run_id, flops, N (the count used), tokens, `loss` (observed),
    predicted, lower, upper (the 95% prediction interval), error (predicted / observed - 1),
    inside (whether the observed loss lies in the interval). attrs: law, holdout_flops, n_train,
    n_holdout, median_abs_error, coverage, and the fit's parameters as "fit_<name>".
    """
    frame, _ = audit_with_fit(records, law, approach, holdout_flops, param_count=param_count, loss=loss,
                              bootstrap=bootstrap, seed=seed, statuses=statuses, **fit_options)
    return frame


def audit_with_fit(records: pd.DataFrame, law: str = "chinchilla", approach: int = 3,
                   holdout_flops: float | None = None, *, param_count: str | None = None,
                   loss: str = "val_loss", bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                   statuses=("complete",), **fit_options) -> tuple[pd.DataFrame, Fit]:
    """`extrapolation_audit` and the Fit it made on the runs below `holdout_flops`."""
    require(law in LAWS, f"law must be one of {LAWS}, got {law!r}")
    require(law == "kaplan" or approach == 3,
            f"approach {approach} fits N_opt(C) and D_opt(C), not a loss: the audit needs approach 3")
    require(bootstrap >= 2, f"the audit's prediction intervals need bootstrap >= 2, got {bootstrap}")
    require(isinstance(records, pd.DataFrame) and len(records) > 0, "extrapolation_audit: no records")
    n_col = _param_column(records, law, param_count)
    columns = ["run_id", n_col, "tokens", "flops", loss]
    require_columns(records, columns, "extrapolation_audit")
    rows, _ = usable(records, columns[1:], statuses, "extrapolation_audit", positive=columns[1:])
    final = final_rows(rows)
    require(len(final) > 0, "extrapolation_audit: no usable runs")
    if holdout_flops is None:
        holdout_flops = default_holdout_flops(final)
    require(np.isfinite(holdout_flops) and holdout_flops > 0, f"holdout_flops must be > 0, got {holdout_flops}")
    held = final["flops"].to_numpy(float) >= holdout_flops
    require(held.any(), f"no run reaches holdout_flops = {holdout_flops:.3g} (the largest has "
                        f"{final['flops'].max():.3g} FLOPs)")
    require((~held).sum() >= 2, f"{(~held).sum()} run(s) below holdout_flops = {holdout_flops:.3g}; "
                                f"the fit needs more")
    train_ids = set(final.loc[~held, "run_id"])
    train = rows.loc[rows["run_id"].isin(train_ids)]
    if law == "chinchilla":
        fit = fit_chinchilla(train, approach=3, param_count=n_col, loss=loss, bootstrap=bootstrap, seed=seed,
                             statuses=statuses, **fit_options)
    else:
        # L(N, D) uses no compute column; "flops" is one every audited frame has.
        fit_options = {"compute": "flops", **fit_options}
        fit = fit_kaplan(train, laws=["L(N,D)"], param_count=n_col, loss=loss, bootstrap=bootstrap, seed=seed,
                         statuses=statuses, **fit_options)["L(N,D)"]
    out = final.loc[held]
    prediction = fit.predict(out[n_col].to_numpy(float), out["tokens"].to_numpy(float), interval=True)
    observed = out[loss].to_numpy(float)
    frame = pd.DataFrame({"run_id": out["run_id"].to_numpy(), "flops": out["flops"].to_numpy(float),
                          "N": out[n_col].to_numpy(float), "tokens": out["tokens"].to_numpy(float),
                          "observed": observed, "predicted": prediction.predicted,
                          "lower": prediction.lower, "upper": prediction.upper})
    frame["error"] = frame["predicted"] / frame["observed"] - 1
    frame["inside"] = (frame["observed"] >= frame["lower"]) & (frame["observed"] <= frame["upper"])
    frame = frame.rename(columns={"observed": loss}).sort_values(["flops", "N"], ignore_index=True)
    frame.attrs.update({"law": fit.law, "N": n_col, "holdout_flops": float(holdout_flops),
                        "n_train": int((~held).sum()), "n_holdout": int(held.sum()), **audit_summary(frame),
                        **{f"fit_{k}": float(v) for k, v in fit.params.items()}})
    return frame, fit


def audit_summary(audit: pd.DataFrame) -> dict[str, float]:
    """median_abs_error (of predicted / observed - 1) and coverage (the share of held-out runs
    inside their 95% prediction interval) of an `extrapolation_audit` frame."""
    return {"median_abs_error": float(np.median(np.abs(audit["error"]))),
            "coverage": float(audit["inside"].mean())}


def default_holdout_flops(runs: pd.DataFrame) -> float:
    """Where to split when no one says: between the two largest IsoFLOP budgets for an IsoFLOP
    sweep (every run of the largest budget held out), else between the smaller two thirds of the
    runs by final FLOPs and the largest third. A geometric midpoint, because runs stop a little
    short of their nominal budget."""
    final = final_rows(runs)
    if "flops_budget" in final:
        budgets = np.unique(pd.to_numeric(final["flops_budget"], errors="coerce").dropna())
        if len(budgets) >= 3:
            return float(np.sqrt(budgets[-2] * budgets[-1]))
    flops = np.sort(final["flops"].to_numpy(float))
    require(len(flops) >= 3, f"{len(flops)} run(s): an audit needs at least 3")
    n_train = max(2, math.ceil(2 * len(flops) / 3))
    n_train = min(n_train, len(flops) - 1)
    return float(np.sqrt(flops[n_train - 1] * flops[n_train]))


def _param_column(records: pd.DataFrame, law: str, param_count: str | None) -> str:
    if param_count is not None:
        return param_column(param_count)
    own = PARAM_COUNTS["nonembed" if law == "kaplan" else "all"]
    return own if own in records else PARAM_COUNTS["all"]
