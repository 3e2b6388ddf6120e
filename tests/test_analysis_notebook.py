"""notebooks/fit_power_laws.ipynb runs from top to bottom (so it never rots).

It is executed with nbclient from the repository root, on the shipped results/, and on fake
results written to a temp folder (the notebook reads SCALING_RESULTS).
"""

from pathlib import Path

import nbformat
import numpy as np
import pytest
from analysis_fakes import ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, write_records
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "fit_power_laws.ipynb"


def execute(monkeypatch, **env) -> nbformat.NotebookNode:
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def outputs(notebook, output_type=None):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if output_type is None or o.output_type == output_type]


def test_notebook_runs_on_the_shipped_results(monkeypatch):
    monkeypatch.delenv("SCALING_RESULTS", raising=False)
    notebook = execute(monkeypatch)
    assert not outputs(notebook, "error")
    assert sum("image/png" in o.get("data", {}) for o in outputs(notebook)) >= 4


# The shipped results cover the notebook in the fast suite; fake records from known laws check its
# printed fits too (make test-all).
@pytest.mark.slow
def test_notebook_runs_on_fake_results(tmp_path, monkeypatch):
    write_records(kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 5),
                                 tokens=np.geomspace(1e8, 1e12, 4), n_evals=6), tmp_path)
    write_records(isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=5), tmp_path)
    notebook = execute(monkeypatch, SCALING_RESULTS=str(tmp_path), SCALING_BOOTSTRAP="50")
    assert not outputs(notebook, "error")
    images = sum("image/png" in o.get("data", {}) for o in outputs(notebook))
    # Kaplan: figure 1, learning curves, residuals; Chinchilla: IsoFLOP, approach 3, residuals; the
    # audits of both sweeps and approach 3's E profile (no synthetic sweep among the fakes).
    assert images == 9
    assert "median |error|" in "".join(o.get("text", "") for o in outputs(notebook, "stream"))
    text = "".join(o.get("text", "") for o in outputs(notebook, "stream"))
    assert "Chinchilla approach 3" in text and "N_opt =" in text and "\\begin{tabular}" in text
    results = "".join(o.get("data", {}).get("text/plain", "") for o in outputs(notebook, "execute_result"))
    assert "L(N,D)" in results and "alpha_N" in results  # the Kaplan fits' repr
