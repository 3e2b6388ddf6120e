"""`scaling reproduce MINE REFERENCE`: how a sweep's own records compare with reference records of
the same runs (the shipped `results/<sweep>/`, or a colleague's).

A run is identified by its run_id (a hash of what it computes), so the two folders' runs pair up by
id. For each pair, every evaluation row's `train_loss` and `val_loss` are compared: bitwise (the
same float64) or by their largest relative difference. On the same kind of machine and software a
rerun is bitwise identical (training is deterministic given the spec: README, "What is
deterministic, and what is not"); on another CPU or library version the losses differ by float rounding that
grows along training, which is what the figures say by how much.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from analysis.records import load_history

COLUMNS = ("train_loss", "val_loss")


def compare_records(mine: pd.DataFrame, reference: pd.DataFrame, columns=COLUMNS) -> pd.DataFrame:
    """One row per run_id in both (history rows from `load_history`): rows compared, `identical`
    (every value of `columns` at every common step bitwise equal), `max_rel_diff` over them, and the
    final val_loss of each."""
    out = []
    ref_by_id = dict(iter(reference.groupby("run_id")))
    for run_id, own in mine.groupby("run_id", sort=True):
        if run_id not in ref_by_id:
            continue
        both = own.merge(ref_by_id[run_id], on="step", suffixes=("", "_ref"))
        a = both[[c for c in columns]].to_numpy(float)
        b = both[[f"{c}_ref" for c in columns]].to_numpy(float)
        same = np.array_equal(a, b, equal_nan=True) and len(own) == len(ref_by_id[run_id])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(a - b) / np.abs(b)
        rel = rel[np.isfinite(rel)]
        last = both.sort_values("step").iloc[-1] if len(both) else None
        out.append({"run_id": run_id, "rows": len(both), "identical": bool(same),
                    "max_rel_diff": float(rel.max()) if rel.size else 0.0,
                    "val_loss": float(last["val_loss"]) if last is not None else np.nan,
                    "val_loss_ref": float(last["val_loss_ref"]) if last is not None else np.nan})
    return pd.DataFrame(out, columns=["run_id", "rows", "identical", "max_rel_diff", "val_loss", "val_loss_ref"])


def summary_line(table: pd.DataFrame, n_mine: int, n_reference: int) -> str:
    if table.empty:
        return (f"no run in common ({n_mine} runs here, {n_reference} in the reference): the sweep files or "
                "the code differ, so the run ids do")
    same = int(table["identical"].sum())
    text = f"{len(table)} runs in both: {same} bitwise identical to the reference at every evaluation"
    if same < len(table):
        diff = table.loc[~table["identical"], "max_rel_diff"]
        final = (table["val_loss"] / table["val_loss_ref"] - 1).abs()
        text += (f"; the others differ by at most {diff.max():.2g} relative along their curves (median "
                 f"{diff.median():.2g}), final val_loss by at most {final.max():.2g}")
    only = n_mine - len(table)
    if only or n_reference > len(table):
        text += f" ({only} runs only here, {n_reference - len(table)} only in the reference)"
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (argparse's own prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def reproduce_command(argv: list[str]) -> int:
    parser = _Parser(prog="scaling reproduce", description="How a sweep's records compare with "
                     "reference records of the same runs: bitwise, or within how much.")
    parser.add_argument("mine", help="your results folder (e.g. my-results/kaplan)")
    parser.add_argument("reference", help="the reference results folder (e.g. results/kaplan)")
    args = parser.parse_args(argv)
    frames = []
    for folder in (args.mine, args.reference):
        try:
            history = load_history(folder)
        except FileNotFoundError as exc:
            print(f"scaling reproduce: error: {exc}", file=sys.stderr)
            return 2
        if history.empty:
            print(f"scaling reproduce: error: no run records under {folder}", file=sys.stderr)
            return 2
        frames.append(history)
    table = compare_records(*frames)
    print(summary_line(table, frames[0]["run_id"].nunique(), frames[1]["run_id"].nunique()))
    return 0
