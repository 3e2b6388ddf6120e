"""Tables of runs and fits as markdown, CSV or LaTeX (what `scaling table` and `scaling fit` print).

    runs_table(runs, format="md")       one row per run: shape, budget, final loss, status
    fits_table(fits, format="md")       one row per fitted parameter, with its 95% interval
    runs_frame / fits_frame             the same as DataFrames
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from analysis.fit_result import as_fit_list
from analysis.select import final_rows

FORMATS = ("md", "csv", "latex")
RUN_COLUMNS = ("sweep", "run_id", "status", "n_layer", "d_model", "n_params", "n_params_nonembed", "tokens",
               "flops", "flops_budget", "train_loss", "val_loss", "val_bits_per_byte", "wall_seconds")


def runs_frame(runs: pd.DataFrame, columns=None) -> pd.DataFrame:
    """One row per run (the last row of each when given history), in a stable order."""
    runs = final_rows(runs)
    if columns is None:
        columns = [c for c in RUN_COLUMNS if c in runs and runs[c].notna().any()]
        if "sweep" in columns and runs["sweep"].nunique() <= 1:
            columns.remove("sweep")
    missing = [c for c in columns if c not in runs]
    if missing:
        raise ValueError(f"runs_table: no column(s) {missing} in the records")
    order = [c for c in ("sweep", "n_params", "tokens", "run_id") if c in runs]
    return runs.sort_values(order, kind="stable")[list(columns)].reset_index(drop=True)


def runs_table(runs: pd.DataFrame, format: str = "md", columns=None) -> str:
    return render(runs_frame(runs, columns), format)


def fits_frame(fits) -> pd.DataFrame:
    """One row per parameter of every fit: law, parameter, value, ci_low, ci_high, n_points, N
    (the parameter count used); goodness of fit follows each law as rows without an interval."""
    rows = []
    for fit in as_fit_list(fits):
        common = {"law": fit.law, "n_points": fit.n_points, "N": fit.settings.get("N", "")}
        for name, value in fit.params.items():
            lo, hi = fit.intervals[name]
            rows.append({**common, "parameter": name, "value": value, "ci_low": lo, "ci_high": hi})
        for name, value in fit.quality.items():
            rows.append({**common, "parameter": name, "value": value, "ci_low": np.nan, "ci_high": np.nan})
    return pd.DataFrame(rows, columns=["law", "parameter", "value", "ci_low", "ci_high", "n_points", "N"])


def fits_table(fits, format: str = "md") -> str:
    frame = fits_frame(fits)
    if format == "csv":
        return render(frame, format)
    shown = frame[["law", "parameter", "value"]].copy()
    shown["95% interval"] = [interval_text(lo, hi, format) for lo, hi in zip(frame["ci_low"], frame["ci_high"])]
    shown["points"] = frame["n_points"]
    shown["N"] = frame["N"]
    return render(shown, format, preformatted=("95% interval",))


def render(frame: pd.DataFrame, format: str = "md", preformatted=()) -> str:
    """A DataFrame as a markdown (GitHub pipe) table, CSV (full precision) or a LaTeX tabular."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "csv":
        return frame.to_csv(index=False)
    cells = [[cell_text(v, format) if c not in preformatted else str(v) for c, v in zip(frame.columns, row)]
             for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    if format == "md":
        header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
        rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
        return "\n".join([header, rule] + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(_latex_escape(str(c)) for c in frame.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(r) + " \\\\" for r in cells]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def cell_text(value, format: str) -> str:
    """One cell as a table of `format` ("md", "latex", or "html": raw text, escaped by the page) shows it."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return number_text(float(value), format)
    text = str(value)
    if format == "html":
        return text
    return _latex_escape(text) if format == "latex" else text.replace("|", "\\|")


def number_text(value: float, format: str) -> str:
    """A number as a table shows it: 4 significant digits, scientific notation outside [1e-3, 1e4)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    if format == "latex":
        return f"${float(mantissa):.4g}\\times10^{{{int(exponent)}}}$"
    return f"{float(mantissa):.4g}e{int(exponent)}"


def interval_text(lo: float, hi: float, format: str) -> str:
    """"[lo, hi]"; empty when either end is NaN (no interval); an infinite end reads "inf"."""
    if np.isnan(lo) or np.isnan(hi):
        return ""
    ends = [("inf" if value > 0 else "-inf") if np.isinf(value) else number_text(value, format) for value in (lo, hi)]
    return f"[{ends[0]}, {ends[1]}]"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)
