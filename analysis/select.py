"""Choosing the points a fit uses from run records, and saying which records were left out and why."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from analysis.fit_result import require

# Which parameter count is N. Kaplan et al. 2020 exclude the embeddings (their N is non-embedding
# parameters, Sec. 1.2); Hoffmann et al. 2022 count all parameters.
PARAM_COUNTS = {"nonembed": "n_params_nonembed", "all": "n_params"}
COMPUTE_COLUMNS = ("flops", "flops_6nd")


def param_column(param_count: str) -> str:
    """The record column for N: "nonembed" | "all", or a column name itself."""
    if param_count in PARAM_COUNTS:
        return PARAM_COUNTS[param_count]
    require(param_count in PARAM_COUNTS.values(),
            f"param_count must be one of {sorted(PARAM_COUNTS)} (or a column name "
            f"{sorted(PARAM_COUNTS.values())}), got {param_count!r}")
    return param_count


def compute_column(compute: str) -> str:
    require(compute in COMPUTE_COLUMNS, f"compute must be one of {COMPUTE_COLUMNS}, got {compute!r}")
    return compute


def is_history(records: pd.DataFrame) -> bool:
    """True when some run has several rows (learning curves from `load_history`)."""
    return "run_id" in records and records["run_id"].duplicated().any()


def require_columns(records: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in records.columns]
    require(not missing, f"{what} needs record column(s) {missing}; the records have none of them")


def usable(records: pd.DataFrame, columns: Iterable[str], statuses: Iterable[str], what: str,
           positive: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows a fit may use, rows dropped with a `reason`).

    Dropped: tuning runs (`stage` tune), runs whose status is not in `statuses` (a diverged or
    failed run's last loss is not a point of the law), and rows with a non-finite value in `columns` or a non-positive value in
    `positive` (laws are fitted in log space).
    """
    require(isinstance(records, pd.DataFrame), f"{what} takes a DataFrame of records "
                                                f"(load_runs / load_history), got {type(records).__name__}")
    require(len(records) > 0, f"{what}: no records (is the results folder empty?)")
    columns = list(columns)
    require_columns(records, columns, what)
    reason = pd.Series("", index=records.index, dtype=object)
    if "stage" in records:  # learning-rate tuning runs (`scaling tune`) never enter a grid's fits
        reason[records["stage"].fillna("main") == "tune"] = "a tuning run (stage = tune)"
    if "status" in records:
        status = run_status(records)
        bad = ~status.isin(list(statuses)) & (reason == "")
        reason[bad] = "status " + status[bad]
    for col in columns:
        values = pd.to_numeric(records[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) & (reason == "")
        reason[bad] = f"non-finite {col}"
        if col in positive:
            bad = np.isfinite(values) & (values <= 0) & (reason == "")
            reason[bad] = f"non-positive {col}"
    keep = reason == ""
    dropped = records.loc[~keep].assign(reason=reason[~keep])
    return records.loc[keep], dropped


def run_status(records: pd.DataFrame) -> pd.Series:
    """Each row's run status: the status of its run's last row (history rows written while a run
    was going may say "running"; the run's outcome is what counts)."""
    status = records["status"].fillna("unknown").astype(str)
    if not is_history(records):
        return status
    ordered = records.assign(_status=status).sort_values("step" if "step" in records else "run_id", kind="stable")
    return records["run_id"].map(ordered.groupby("run_id")["_status"].last())


def final_rows(records: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the last step (a summary row when given summaries)."""
    if not is_history(records):
        return records
    order = records.sort_values(["run_id", "step"] if "step" in records else ["run_id"], kind="stable")
    return order.groupby("run_id", sort=False).tail(1)


def best_per_group(rows: pd.DataFrame, group: str, loss: str) -> pd.DataFrame:
    """For each value of `group`, the row with the least loss ("the best over its runs")."""
    index = rows.groupby(group, sort=True)[loss].idxmin()
    return rows.loc[index.to_numpy()]


def summary_of_dropped(dropped: pd.DataFrame, keep: Iterable[str] = ()) -> pd.DataFrame:
    """The dropped rows, reduced to identity columns, one per run (not one per history row)."""
    cols = [c for c in ("run_id", "status", *keep) if c in dropped] + ["reason"]
    out = dropped[cols]
    if "run_id" in out:
        out = out.drop_duplicates(["run_id", "reason"])
    return out.reset_index(drop=True)
