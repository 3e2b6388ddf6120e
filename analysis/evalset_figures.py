"""Evaluation sets (`[eval.sets.<name>]`): loss and calibration on each set against model size.

    eval_set_names(records)   the sets whose columns `val/<set>/loss` the records hold
    eval_sets_figure(runs)    left: bits per byte on each set and on the run's own validation split
                              (nats per token where a set has no byte count); right: ECE of the top-1
                              prediction; both against N, one line per set, each size's longest
                              complete run

Bits per byte, not nats per token: sets tokenized differently (or holding more bytes per token)
compare on one axis only per byte (Gao et al. 2020, The Pile). A model trained by maximum likelihood
is calibrated on its training distribution at best; the right panel shows how far that holds off it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.select import final_rows, run_status

OWN = "own validation"


def eval_set_names(records: pd.DataFrame) -> list[str]:
    """The sets of `val/<set>/loss` columns that hold a value, in column order."""
    return [c.split("/")[1] for c in records.columns
            if c.startswith("val/") and c.endswith("/loss") and c.count("/") == 2 and records[c].notna().any()]


def _columns(name: str) -> dict[str, str]:
    if name == OWN:
        return {"loss": "val_loss", "bits_per_byte": "val_bits_per_byte", "ece": "val_ece"}
    return {m: f"val/{name}/{m}" for m in ("loss", "bits_per_byte", "ece")}


def eval_sets_figure(runs: pd.DataFrame, *, x: str = "n_params") -> Figure:
    """`runs`: summaries or histories (each run's final row is drawn) with `val/<set>/...` columns."""
    from analysis.plots import PARAM_LABELS, _log_x
    names = eval_set_names(runs)
    if not names:
        raise ValueError("no evaluation-set columns (val/<set>/loss) in these records")
    complete = runs.loc[run_status(runs) == "complete"] if "status" in runs else runs
    final = final_rows(complete).dropna(subset=[x])
    if final.empty:
        raise ValueError("no complete run to draw")
    # Each size's longest run: a Kaplan grid's end of the line in D, so one point per size.
    length = "target_tokens" if "target_tokens" in final and final["target_tokens"].notna().all() else "tokens"
    final = final.sort_values([x, length]).groupby(x, sort=True).tail(1)
    shown = [OWN, *names]
    per_byte = all(_columns(n)["bits_per_byte"] in final and final[_columns(n)["bits_per_byte"]].notna().all()
                   for n in shown)
    metric, unit = ("bits_per_byte", "bits per byte") if per_byte else ("loss", "nats/token")

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_l, ax_e = fig.subplots(1, 2)
    colors = colormaps["tab10"](np.arange(len(shown)) % 10)
    for name, color in zip(shown, colors):
        cols = _columns(name)
        if cols[metric] not in final:
            continue
        style = dict(color="black" if name == OWN else color, marker="s" if name == OWN else "o", ms=4,
                     ls="--" if name == OWN else "-", label=name)
        ax_l.plot(final[x], final[cols[metric]], **style)
        ax_e.plot(final[x], final[cols["ece"]], **style)
    for ax, label in ((ax_l, f"Validation loss ({unit})"), (ax_e, "ECE (top-1, 15 bins)")):
        _log_x(ax)
        ax.set_xlabel(PARAM_LABELS.get(x, x))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_l.legend(fontsize=7, title="evaluation set", title_fontsize=7)
    ax_l.set_title("Loss on each evaluation set (end of training)")
    ax_e.set_title("Calibration error on each set (end of training)")
    return fig
