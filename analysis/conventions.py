"""Each law under each convention, side by side: what a headline exponent depends on.

Two counts are conventions, not facts, and at this project's small sizes they move the fitted
numbers by more than their intervals (Pearce & Song 2024, "Reconciling Kaplan and Chinchilla Scaling
Laws"; Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language Models"):

- parameters: non-embedding N (`n_params_nonembed`; Kaplan et al. 2020, Sec. 2.1) or all of them
  (`n_params`; Hoffmann et al. 2022, who count the embeddings);
- compute: C = 6ND (`flops_6nd`; Kaplan et al. 2020, Sec. 2.1) or this project's exact count with
  attention and the output layer (`flops`; the accounting of Hoffmann et al. 2022, App. F).

`fit_conventions` fits a law under every combination that changes it and returns one row per
parameter and convention; `DEFAULTS` names each law's own convention (the one its paper used),
which is what `fit_kaplan` and `fit_chinchilla` do unless told otherwise. A comparison with a
published exponent holds only under the convention that paper used.
"""

from __future__ import annotations

import pandas as pd

from analysis import tables
from analysis.chinchilla import fit_chinchilla
from analysis.fit_result import DEFAULT_BOOTSTRAP, as_fit_list
from analysis.kaplan import fit_kaplan

PARAM_COUNTS = {"nonembed": "non-embedding N", "all": "all parameters"}
COMPUTES = {"flops_6nd": "C = 6ND", "flops": "exact FLOPs"}
# Each law's own convention: Kaplan et al. 2020 (Sec. 2.1: non-embedding N, C = 6ND) and Hoffmann
# et al. 2022 (all parameters; approach 1's FLOPs counted with attention and embeddings, App. F).
DEFAULTS = {"kaplan": ("nonembed", "flops_6nd"), "chinchilla": ("all", "flops")}
COLUMNS = ["law", "parameter", "param_count", "compute", "convention", "default", "value", "ci_low", "ci_high"]


def fit_conventions(records: pd.DataFrame, law: str, *, approach: int = 3, bootstrap: int = DEFAULT_BOOTSTRAP,
                    seed: int = 0) -> pd.DataFrame:
    """`law` ("kaplan", or "chinchilla" with `approach`) fitted under both parameter counts and, where
    the law reads compute (Kaplan's L(C_min), Chinchilla's approach 1), both compute counts. One row
    per fitted law, parameter and convention, with its 95% bootstrap interval; `default` marks the
    law's own convention (`DEFAULTS`)."""
    if law not in DEFAULTS:
        raise ValueError(f"law must be one of {', '.join(DEFAULTS)}, got {law!r}")
    uses_compute = law == "kaplan" or approach == 1
    rows = []
    for param_count in PARAM_COUNTS:
        for compute in (COMPUTES if uses_compute else (DEFAULTS[law][1],)):
            if law == "kaplan":
                fits = fit_kaplan(records, param_count=param_count, compute=compute, bootstrap=bootstrap, seed=seed)
            else:
                fits = fit_chinchilla(records, approach=approach, param_count=param_count, compute=compute,
                                      bootstrap=bootstrap, seed=seed)
            default = (param_count, compute) == DEFAULTS[law]
            rows += _rows(fits, param_count, compute if uses_compute else None, default)
    return pd.DataFrame(rows, columns=COLUMNS)


def _rows(fits, param_count: str, compute: str | None, default: bool) -> list[dict]:
    convention = PARAM_COUNTS[param_count] + (f", {COMPUTES[compute]}" if compute else "")
    out = []
    for fit in as_fit_list(fits):
        for name, value in fit.params.items():
            lo, hi = fit.intervals[name]
            out.append({"law": fit.law, "parameter": name, "param_count": param_count, "compute": compute,
                        "convention": convention, "default": default, "value": value, "ci_low": lo, "ci_high": hi})
    return out


def side_by_side(frame: pd.DataFrame, format: str = "md") -> str:
    """The rows of `fit_conventions` as one table: a row per law and parameter, a column per
    convention (the law's own marked with *), each cell the value and its interval."""
    if format == "csv":
        return tables.render(frame, format)
    conventions = list(dict.fromkeys(frame["convention"]))
    marked = {c: c + (" *" if frame.loc[frame["convention"] == c, "default"].any() else "") for c in conventions}
    out = []
    for (law, parameter), group in frame.groupby(["law", "parameter"], sort=False):
        row = {"law": law, "parameter": parameter}
        for _, r in group.iterrows():
            row[marked[r["convention"]]] = (f"{tables.number_text(r['value'], format)} "
                                            f"{tables.interval_text(r['ci_low'], r['ci_high'], format)}")
        out.append(row)
    shown = pd.DataFrame(out, columns=["law", "parameter", *marked.values()]).fillna("")
    return tables.render(shown, format, preformatted=tuple(marked.values()))
