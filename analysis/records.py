"""Reading run records: `load_runs` (one row per run) and `load_history` (one row per eval step).

The runner writes one folder per run, `<results>/<sweep>/runs/<run_id>/`, holding `summary.parquet`
and `history*.parquet`, each written to a temp name and `os.replace`d. Records of different versions
of the runner can sit side by side, so files are read one by one with `pyarrow.dataset` and joined
under a unified schema: a column that only newer runs have is kept (NaN / None for the others), and
a column whose type changed (int64 in old runs, float64 in new) is promoted. A file that cannot be
read (truncated, corrupt) is skipped with one `RecordWarning` naming it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds


class RecordWarning(UserWarning):
    """A record file was skipped because it could not be read."""


def load_runs(path: str | os.PathLike) -> pd.DataFrame:
    """One row per run: every `summary.parquet` under `path` (a sweep folder or a parent of many)."""
    return _load(path, "summary.parquet", sort=["sweep", "run_id"])


def load_history(path: str | os.PathLike) -> pd.DataFrame:
    """One row per evaluation step of every run under `path`, sorted by sweep, run and step.

    `status` and `error` are the run's, from its summary: the runner writes history rows while the
    run is going (status "running"), and whether it completed, diverged or failed is what a reader
    needs. A run whose summary is missing or unreadable keeps its rows' own status.
    """
    history = _load(path, "history*.parquet", sort=["sweep", "run_id", "step"])
    if history.empty or "run_id" not in history:
        return history
    outcome = _load(path, "summary.parquet", sort=[], columns=["run_id", "status", "error"], quiet=True)
    if outcome.empty:
        return history
    outcome = outcome.drop_duplicates("run_id", keep="last").set_index("run_id")
    known = history["run_id"].isin(outcome.index)
    for column in ("status", "error"):
        if column in outcome:
            values = history["run_id"].map(outcome[column])
            history[column] = values.where(known, history[column] if column in history else None)
    return history


def record_files(path: str | os.PathLike, pattern: str) -> list[Path]:
    """Record files under `path` in the runner's layout (`.../runs/<run_id>/<file>`).

    The runner's temp files (dot-prefixed) are never matched.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder at {root}")
    files = [p for p in root.rglob(pattern)
             if p.is_file() and not p.name.startswith(".") and p.parent.parent.name == "runs"]
    return sorted(set(files))


def _load(path, pattern: str, sort: list[str], columns: list[str] | None = None,
          quiet: bool = False) -> pd.DataFrame:
    files = record_files(path, pattern)
    tables = []
    for file in files:
        try:
            dataset = ds.dataset(file, format="parquet")
            wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
            tables.append(dataset.to_table(columns=wanted))
        except (pa.ArrowException, OSError) as exc:
            if not quiet:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                warnings.warn(f"skipping unreadable record {file}: {reason}", RecordWarning, stacklevel=3)
    if not tables:
        return pd.DataFrame()
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.to_pandas()
    frame = frame.sort_values([c for c in sort if c in frame], kind="stable", ignore_index=True)
    frame.attrs["source"] = str(path)
    return frame
