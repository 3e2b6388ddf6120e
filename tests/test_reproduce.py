"""`scaling reproduce MINE REFERENCE`: runs pair up by run_id; identical records are reported as
bitwise identical, and others by how much they differ."""

from __future__ import annotations

import numpy as np
from analysis_fakes import KaplanLaw, kaplan_records, write_records

from analysis.records import load_history
from analysis.reproduce import compare_records, reproduce_command, summary_line


def _history():
    return kaplan_records(KaplanLaw(), n_params_nonembed=[1e5, 1e6], tokens=[1e8, 1e9], n_evals=4, seed=0)


def test_identical_records_are_bitwise_and_a_nudge_is_measured():
    ref = _history()
    table = compare_records(ref, ref.copy())
    assert len(table) == ref["run_id"].nunique() and table["identical"].all()
    nudged = ref.copy()
    first = nudged["run_id"] == nudged["run_id"].iloc[0]
    nudged.loc[first, "val_loss"] *= 1 + 1e-6
    table = compare_records(nudged, ref)
    assert (~table["identical"]).sum() == 1
    assert np.isclose(table["max_rel_diff"].max(), 1e-6, rtol=1e-3)
    line = summary_line(table, nudged["run_id"].nunique(), ref["run_id"].nunique())
    assert line.startswith("4 runs in both: 3 bitwise identical") and "at most 1e-06" in line


def test_the_command_reads_two_folders_and_refuses_an_empty_one(tmp_path, capsys):
    mine, ref = write_records(_history(), tmp_path / "mine"), write_records(_history(), tmp_path / "ref")
    assert not load_history(mine).empty
    assert reproduce_command([str(mine), str(ref)]) == 0
    assert "4 bitwise identical" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert reproduce_command([str(mine), str(tmp_path / "empty")]) == 2
    assert "no run records under" in capsys.readouterr().err
