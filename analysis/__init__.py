"""Reading scaling-law run records, fitting Kaplan and Chinchilla laws, plots and tables.

    from analysis import load_runs, load_history, compare
    from analysis.fit import fit_power_law, fit_kaplan, fit_chinchilla, extrapolation_audit
    from analysis import plots, tables

Needs pandas, pyarrow and matplotlib only: no JAX, nothing from `scaling`.
"""

from analysis.comparison import Comparison, compare
from analysis.records import RecordWarning, load_history, load_runs

__all__ = ["Comparison", "RecordWarning", "compare", "load_history", "load_runs"]
