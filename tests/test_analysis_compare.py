"""analysis.compare recovers a known compute multiplier; `scaling compare A B` prints it.

Sweep B follows A's law with N and D both scaled by k (L_B(N, D) = L_A(kN, kD)), so B's
compute-optimal loss at C is A's at k^2 C: B is worth exactly k^2 x compute at every budget. Over
20 seeds of the design below (two IsoFLOP grids of 45 runs, 1% noise, 200 replicates), the
estimate of a 1.5x multiplier had mean 1.497 and a standard deviation of 0.057 in ln m, and its 95%
interval held 1.5 in 18 of 20.
"""

import io

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import ChinchillaLaw, isoflop_records, summaries, write_records

from analysis import Comparison, compare
from analysis.cli import compare_command
from analysis.comparison import compute_to_reach, frontier_loss

LAW = ChinchillaLaw()
TRUE_PARAMS = {k: getattr(LAW, k) for k in ("E", "A", "B", "alpha", "beta")}


def _sweep(law, seed, **kwargs):
    return summaries(isoflop_records(law, seed=seed, n_evals=2, **kwargs))


def test_compare_recovers_a_known_multiplier():
    # Six pairs of sweeps: each estimate within 4 sd of 1.5; a 95% interval holds 1.5 in at least
    # 4 of 6 (at the 90% measured over 20 seeds, 3 or fewer happens 1.3% of the time).
    covered = 0
    for seed in range(6):
        result = compare(_sweep(LAW, seed), _sweep(LAW.with_compute_multiplier(1.5), 100 + seed), bootstrap=100,
                         seed=seed)
        assert abs(np.log(result.multiplier / 1.5)) < 4 * 0.057
        assert result.interval[0] < result.multiplier < result.interval[1]
        assert result.interval[0] > 1.1  # an interval that cannot tell 1.5x from no gain fails here
        covered += result.interval[0] <= 1.5 <= result.interval[1]
        frame = result.by_budget
        assert (np.abs(np.log(frame["multiplier"] / 1.5)) < 0.35).all()
        assert ((frame["lower"] <= frame["multiplier"]) & (frame["multiplier"] <= frame["upper"])).all()
    assert covered >= 4
    assert isinstance(result, Comparison)
    assert list(frame["budget"]) == list(np.geomspace(1e14, 1e16, 5))  # B's IsoFLOP budgets
    assert result.samples.shape[1] == 5 and len(result.samples) >= 95
    overall = result.to_frame().iloc[-1]
    assert np.isnan(overall["budget"]) and overall["multiplier"] == result.multiplier


def test_the_same_recipe_is_worth_one_times_its_compute():
    result = compare(_sweep(LAW, 7), _sweep(LAW, 8), bootstrap=200)
    assert abs(np.log(result.multiplier)) < 4 * 0.057
    assert result.interval[0] <= 1 <= result.interval[1]
    assert "overall (geometric mean over 5 budgets)" in repr(result)


def test_frontier_and_its_inverse():
    budgets = np.geomspace(1e13, 1e19, 7)
    np.testing.assert_allclose(frontier_loss(TRUE_PARAMS, budgets), LAW.optimal_loss(budgets), rtol=1e-12)
    np.testing.assert_allclose(compute_to_reach(TRUE_PARAMS, LAW.optimal_loss(budgets)), budgets, rtol=1e-9)
    assert np.isinf(compute_to_reach(TRUE_PARAMS, [LAW.E, LAW.E - 0.1])).all()  # never reached


def test_compare_budgets_and_degenerate_input():
    a, b = _sweep(LAW, 1), _sweep(LAW, 2)
    result = compare(a, b, budgets=[3e15, 1e15], bootstrap=20)
    assert list(result.by_budget["budget"]) == [1e15, 3e15]
    no_budgets = b.drop(columns=["flops_budget"])
    assert len(compare(a, no_budgets, bootstrap=20).by_budget) == 5  # log-spaced over B's FLOPs
    with pytest.raises(ValueError, match="bootstrap >= 2"):
        compare(a, b, bootstrap=0)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    budgets = [1e14, 1e15, 1e16]
    write_records(isoflop_records(LAW, budgets=budgets, n_sizes=5, n_evals=2, sweep="base"), root)
    write_records(isoflop_records(LAW.with_compute_multiplier(2.0), budgets=budgets, n_sizes=5, n_evals=2,
                                  seed=1, sweep="better"), root)
    return root


def test_compare_command_prints_the_multiplier(two_sweeps, capsys):
    assert compare_command([str(two_sweeps / "base"), str(two_sweeps / "better"), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "Compute multiplier of better over base" in out and "| overall (geometric mean) |" in out
    assert "better is worth" in out
    assert compare_command([str(two_sweeps / "base"), str(two_sweeps / "better"), "--bootstrap", "50",
                            "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(frame) == 4 and frame["budget_label"].iloc[-1] == "overall (geometric mean)"
    assert 1.4 < frame["multiplier"].iloc[-1] < 2.8  # 2x, from 15 runs a side


@pytest.mark.parametrize("argv, message", [
    (["{base}", "/no/such/folder"], "no results folder"),
    (["{root}", "{base}"], "holds several sweeps"),
    (["{base}", "{better}", "--bootstrap", "1"], "--bootstrap must be >= 2"),
    (["{base}"], "required: b_dir"),
])
def test_compare_command_user_mistakes_exit_2_with_one_line(two_sweeps, capsys, argv, message):
    argv = [a.format(root=two_sweeps, base=two_sweeps / "base", better=two_sweeps / "better") for a in argv]
    assert compare_command(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("scaling compare: error:") and message in captured.err


def test_compare_two_recipes_of_one_sweep(tmp_path, capsys):
    """FOLDER:COLUMN=VALUE compares the runs of one sweep that differ in one column (a data recipe
    varied as an axis): the same 2x as two folders give."""
    budgets = np.geomspace(1e14, 1e16, 3)
    raw = isoflop_records(LAW, budgets=budgets, n_sizes=5, n_evals=2, seed=0, sweep="mine").assign(recipe="raw")
    clean = isoflop_records(LAW.with_compute_multiplier(2.0), budgets=budgets, n_sizes=5, n_evals=2, seed=1,
                            sweep="mine").assign(recipe="clean", run_id=lambda f: "c" + f["run_id"])
    write_records(pd.concat([raw, clean], ignore_index=True), tmp_path)
    mine = tmp_path / "mine"
    assert compare_command([f"{mine}:recipe=raw", f"{mine}:recipe=clean", "--bootstrap", "50", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert 1.4 < frame["multiplier"].iloc[-1] < 2.8
    for argv, message in (([f"{mine}:recipe=raw", f"{mine}:recipe=dirty"], "no run has recipe = 'dirty'"),
                          ([f"{mine}:colour=raw", f"{mine}:recipe=clean"], "no column 'colour'")):
        assert compare_command(argv + ["--bootstrap", "50"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
