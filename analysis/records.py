"""Reading run records: `load_runs` (one row per run) and `load_history` (one row per eval step).

The runner writes one folder per run, `<results>/<sweep>/runs/<run_id>/`, holding `summary.parquet`
and `history*.parquet`, each written to a temp name and `os.replace`d. Records of different versions
of the runner can sit side by side, so files are read one by one with `pyarrow.dataset` and joined
under a unified schema: a column that only newer runs have is kept (NaN / None for the others), and
a column whose type changed (int64 in old runs, float64 in new) is promoted.

A record that cannot be trusted is skipped with one `RecordWarning` naming the file and what is
wrong: a file that cannot be read (truncated, corrupt), one without the columns that identify its
rows (`run_id`, and `status` or `step`), one with no rows, one whose `run_id` is not its folder's,
and a complete run whose history is missing or ends before its summary's step (`run_problems`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.dataset as ds


class RecordWarning(UserWarning):
    """A record file was skipped because it could not be read or does not hold what it should."""


UNREADABLE = "cannot be read"
# The columns without which a file's rows cannot be told apart or placed.
REQUIRED = {"summary.parquet": ("run_id", "status", "step"), "history": ("run_id", "step")}


def load_runs(path: str | os.PathLike) -> pd.DataFrame:
    """One row per run: every `summary.parquet` under `path` (a sweep folder or a parent of many).

    A complete run whose history is missing, unreadable or shorter than its summary says is left out
    with a warning: its final figures cannot be checked against its learning curve."""
    runs = _load(path, "summary.parquet", sort=["sweep", "run_id"])
    if runs.empty:
        return runs
    keep = pd.Series(True, index=runs.index)
    for i in runs.index[runs["status"] == "complete"]:
        found = _history_problem(Path(runs.at[i, "_file"]).parent, runs.at[i, "step"])
        if found:
            warnings.warn(_skip_text(*found), RecordWarning, stacklevel=2)
            keep[i] = False
    out = runs[keep].drop(columns="_file").reset_index(drop=True)
    out.attrs = runs.attrs
    return out


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


def run_problems(folder: str | os.PathLike) -> list[str]:
    """What is wrong with one run folder's records, each as a phrase (empty when nothing is):
    `scaling status` flags such runs, and the readers skip the files concerned."""
    folder = Path(folder)
    problems = []
    summary = folder / "summary.parquet"
    row = None
    if not summary.exists():
        problems.append("no summary.parquet")
    else:
        table, problem = _read_checked(summary, "summary.parquet")
        if problem:
            problems.append(f"summary.parquet: {problem}")
        else:
            row = table.slice(0, 1).to_pylist()[0]
    # A run that failed before training started has a summary alone (written by its launcher).
    if not (folder / "config.json").exists() and (row is None or row.get("status") != "failed"):
        problems.append("no config.json")
    if row is not None and row.get("status") == "complete":
        found = _history_problem(folder, row.get("step"))
        if found:
            problems.append(f"{found[0].name}: {found[1]}")
    return problems


def _history_problem(folder: Path, step) -> tuple[Path, str] | None:
    """Which file shows that a complete run's history does not back its summary, and why; or None."""
    history, summary = folder / "history.parquet", folder / "summary.parquet"
    if not history.exists():
        return summary, "the run is complete but has no history.parquet"
    table, problem = _read_checked(history, "history")
    if problem:
        return history, problem
    last = pa.compute.max(table["step"]).as_py()
    if step is not None and not pd.isna(step) and last is not None and last < step:
        return summary, f"the run is complete at step {int(step)} but its history.parquet ends at step {last}"
    return None


def _skip_text(file: Path, problem: str) -> str:
    """The warning for a skipped file (the same from every reader, so it can be said once)."""
    if problem.startswith(UNREADABLE):
        return f"skipping unreadable record {file}: {problem[len(UNREADABLE) + 2:-1]}"
    return f"skipping {file}: {problem}"


def _read_checked(file: Path, kind: str, columns: list[str] | None = None) -> tuple[pa.Table | None, str | None]:
    """The file's table, or why it cannot be used: unreadable, without its identifying columns, empty,
    or holding another run's rows than its folder's."""
    try:
        dataset = ds.dataset(file, format="parquet")
        wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
        table = dataset.to_table(columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"{UNREADABLE} ({reason})"
    needed = [c for c in REQUIRED[kind] if columns is None or c in columns]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        return None, f"has no {', '.join(missing)} column (expected the runner's record columns)"
    if table.num_rows == 0:
        return None, "holds no rows"
    ids = set(table["run_id"].to_pylist())
    if ids != {file.parent.name}:
        shown = ", ".join(sorted(map(str, ids)))[:120]
        return None, f"holds rows of run_id {shown}, not of its folder {file.parent.name}"
    return table, None


def _load(path, pattern: str, sort: list[str], columns: list[str] | None = None,
          quiet: bool = False) -> pd.DataFrame:
    files = record_files(path, pattern)
    kind = "summary.parquet" if pattern == "summary.parquet" else "history"
    tables = []
    for file in files:
        table, problem = _read_checked(file, kind, columns)
        if problem:
            if not quiet:
                warnings.warn(_skip_text(file, problem), RecordWarning, stacklevel=3)
            continue
        if kind == "summary.parquet" and columns is None:
            table = table.append_column("_file", pa.array([str(file)] * table.num_rows, pa.string()))
        tables.append(table)
    if not tables:
        return pd.DataFrame()
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.to_pandas()
    frame = frame.sort_values([c for c in sort if c in frame], kind="stable", ignore_index=True)
    frame.attrs["source"] = str(path)
    return frame


@contextlib.contextmanager
def one_line_warnings():
    """Within: warnings print as one stderr line each, `warning: <message>`, not Python's file:line
    and source line, and one run's damaged records as one warning however many readers skip them:
    what `scaling fit`, `scaling table` and `make plots` show."""
    previous = warnings.showwarning
    runs_named: set[Path] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if issubclass(category, RecordWarning) and text.startswith("skipping "):
            named = text.removeprefix("skipping ").removeprefix("unreadable record ")
            run = Path(named.split(": ", 1)[0]).parent
            if run in runs_named:  # load_runs and load_history both skip a damaged run: say it once
                return
            runs_named.add(run)
        print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
