"""The extrapolation audit and Fit.predict(..., interval=True), on records drawn from known laws.

Losses carry 1% lognormal noise; a 95% prediction interval should hold a held-out run's observed
loss about 95 times in 100. Over 20 seeds of the IsoFLOP design below (9 held-out runs each) the
audit's coverage was 0.967; over 10 seeds of the Kaplan grid, 0.93.
"""

import io

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import (ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, random_grid_points, summaries,
                            write_records)

from analysis.audit import audit_with_fit, default_holdout_flops
from analysis.cli import fit_command
from analysis.fit import Prediction, extrapolation_audit, fit_chinchilla, fit_power_law

LAW = ChinchillaLaw()


def test_audit_intervals_cover_held_out_runs_at_about_their_nominal_rate():
    # 8 data sets x 9 runs of the largest budget held out: 72 predictions, correlated within a
    # data set (one fit each). A correct 95% interval covers ~68 (the 20-seed rate gives 69.6);
    # intervals without the residual scatter, or a biased fit, cover far fewer.
    inside, widths, param_widths, errors = [], [], [], []
    for seed in range(8):
        runs = summaries(isoflop_records(LAW, seed=seed, n_evals=2))
        audit, fit = audit_with_fit(runs, law="chinchilla", approach=3, holdout_flops=5e15, bootstrap=200,
                                    seed=seed, sensitivity=False)
        assert len(audit) == 9 and (audit["flops"] >= 5e15).all()
        assert {"run_id", "flops", "val_loss", "predicted", "lower", "upper", "error"} <= set(audit)
        np.testing.assert_allclose(audit["error"], audit["predicted"] / audit["val_loss"] - 1)
        assert audit.attrs["n_train"] == 36 and audit.attrs["n_holdout"] == 9
        inside += list(audit["inside"])
        widths += list(audit["upper"] / audit["lower"] - 1)
        errors.append(audit.attrs["median_abs_error"])
        # The same fit's parameter-only interval (where the law lies) is narrower: the audit's
        # interval holds the scatter of a new run too.
        assert fit.n_points == 36
        law_only = fit.predict(audit["N"], audit["tokens"], interval="parameters")
        param_widths += list(law_only.upper / law_only.lower - 1)
    coverage = np.mean(inside)
    assert 0.85 <= coverage <= 1.0, coverage
    # 1% noise: a 95% interval of a new run is at least 2 x 1.96 x 1% wide, and not many times that.
    assert 0.035 < np.median(widths) < 0.12, np.median(widths)
    assert np.median(param_widths) < 0.6 * np.median(widths)
    assert np.median(errors) < 0.015  # noise 1%, a correct law


def test_audit_of_a_kaplan_grid_from_learning_curves():
    history = kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 5),
                             tokens=np.geomspace(1e8, 1e12, 4), n_evals=6, seed=3)
    audit = extrapolation_audit(history, law="kaplan", bootstrap=200)
    assert audit.attrs["law"] == "L(N,D)" and audit.attrs["N"] == "n_params_nonembed"
    assert audit.attrs["n_train"] == 14 and audit.attrs["n_holdout"] == 6  # the largest third by FLOPs
    assert audit["flops"].min() >= audit.attrs["holdout_flops"]
    assert audit.attrs["median_abs_error"] < 0.02 and audit.attrs["coverage"] >= 4 / 6


def test_audit_takes_a_plain_table_of_runs():
    # A table a user brings (a published list of runs): only the five columns, no status, no step.
    points = random_grid_points(LAW, 80, seed=5)[["run_id", "n_params", "tokens", "flops", "val_loss"]]
    cut = float(np.quantile(points["flops"], 0.75))
    audit = extrapolation_audit(points, holdout_flops=cut, bootstrap=100, sensitivity=False)
    assert len(audit) == (points["flops"] >= cut).sum()
    assert audit.attrs["N"] == "n_params"
    truth = LAW.loss(audit["N"], audit["tokens"])
    assert np.median(np.abs(audit["predicted"] / truth - 1)) < 0.01
    kaplan = extrapolation_audit(points, law="kaplan", holdout_flops=cut, bootstrap=50)
    assert kaplan.attrs["N"] == "n_params"  # no n_params_nonembed column: all parameters


@pytest.mark.parametrize("kwargs, message", [
    ({"approach": 2}, "approach 2 fits N_opt"),
    ({"holdout_flops": 1e30}, "no run reaches holdout_flops"),
    ({"holdout_flops": 1.0}, r"0 run\(s\) below holdout_flops"),
    ({"law": "nope"}, "law must be one of"),
    ({"bootstrap": 0}, "bootstrap >= 2"),
])
def test_audit_rejects_what_it_cannot_do(kwargs, message):
    runs = summaries(isoflop_records(LAW, budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=2))
    with pytest.raises(ValueError, match=message):
        extrapolation_audit(runs, **{"holdout_flops": 5e15, **kwargs})
    with pytest.raises(ValueError, match=r"needs record column\(s\) \['flops'\]"):
        extrapolation_audit(runs.drop(columns=["flops"]), holdout_flops=5e15)


def test_default_holdout_is_the_largest_budget_or_the_largest_third():
    runs = summaries(isoflop_records(LAW, budgets=[1e14, 1e15, 1e16], n_sizes=3, n_evals=2))
    assert default_holdout_flops(runs) == pytest.approx(np.sqrt(1e15 * 1e16))
    plain = pd.DataFrame({"flops": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]})
    assert default_holdout_flops(plain) == pytest.approx(np.sqrt(8 * 16))


def test_prediction_interval_of_a_fit():
    points = random_grid_points(LAW, 100, seed=1)
    fit = fit_chinchilla(points, approach=3, bootstrap=300, sensitivity=False)
    one = fit.predict(N=1e6, D=2e7, interval=True)
    assert isinstance(one, Prediction) and one.lower < one.predicted < one.upper
    assert isinstance(one.lower, float) and one.predicted == fit.predict(N=1e6, D=2e7)
    # New runs inside the fitted range, with the fakes' 1% noise: ~95% inside their interval
    # (0.927 for this fit over 2,000 draws; percentile intervals of 100 points run a little narrow).
    rng = np.random.default_rng(5)
    n, d = np.exp(rng.uniform(np.log(1e5), np.log(1e8), 500)), np.exp(rng.uniform(np.log(1e6), np.log(1e10), 500))
    observed = LAW.loss(n, d) * np.exp(rng.normal(0, 0.01, 500))
    grid = fit.predict(N=n, D=d, interval=True)
    assert grid.lower.shape == (500,)
    assert 0.88 <= np.mean((observed >= grid.lower) & (observed <= grid.upper)) <= 0.99
    law_only = fit.predict(N=n, D=d, interval="parameters")
    assert np.all(law_only.upper - law_only.lower < grid.upper - grid.lower)
    # The law itself (no noise) lies inside the parameter-only interval about 95% of the time.
    assert np.mean((LAW.loss(n, d) >= law_only.lower) & (LAW.loss(n, d) <= law_only.upper)) >= 0.8

    with pytest.raises(ValueError, match="no bootstrap replicates"):
        fit_chinchilla(points, approach=3, bootstrap=0).predict(N=1e6, D=2e7, interval=True)
    runs = summaries(isoflop_records(LAW, budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=2))
    with pytest.raises(ValueError, match="allocation"):
        fit_chinchilla(runs, approach=2, bootstrap=20).predict(C=1e15, interval=True)
    with pytest.raises(ValueError, match="interval must be"):
        fit.predict(N=1e6, D=2e7, interval="mean")
    x = np.geomspace(1e5, 1e8, 8)
    power = fit_power_law(x, 2 * (1e6 / x) ** 0.1 * np.exp(rng.normal(0, 0.02, 8)), bootstrap=50)
    lo, hi = power.predict(1e9, interval=True)[1:]
    assert lo < power.predict(1e9) < hi


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    write_records(kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 5),
                                 tokens=np.geomspace(1e8, 1e12, 4), n_evals=6), root)
    write_records(isoflop_records(LAW, budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=2), root)
    return root


def test_fit_command_with_holdout_flops_prints_the_audit(results, capsys):
    assert fit_command([str(results / "chinchilla"), "--law", "chinchilla", "--holdout-flops", "5e15",
                        "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "Extrapolation audit: Chinchilla approach 3 fitted on the 10 runs below 5e+15 FLOPs" in out
    assert "| predicted | 95% interval | error |" in out
    assert "median |error| = " in out and " of 5 held-out runs (" in out
    assert fit_command([str(results), "--law", "kaplan", "--holdout-flops", "1e17", "--bootstrap", "50",
                        "--format", "csv"]) == 0
    captured = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(captured.out))
    assert set(frame["sweep"]) == {"kaplan"} and (frame["flops"] >= 1e17).all()
    assert {"run_id", "val_loss", "predicted", "lower", "upper", "error"} <= set(frame)
    assert "warning: no audit for chinchilla" in captured.err  # no run of that sweep reaches 1e17


@pytest.mark.parametrize("argv, message", [
    (["--approach", "2"], "approach 3, not 2"),
    (["--holdout-flops", "1e30"], "no run reaches holdout_flops"),
    (["--holdout-flops", "-1"], "must be > 0"),
    (["--bootstrap", "0"], "bootstrap >= 2"),
])
def test_fit_command_audit_mistakes_exit_2_with_one_line(results, capsys, argv, message):
    base = [str(results / "chinchilla"), "--law", "chinchilla", "--holdout-flops", "5e15"]
    assert fit_command(base + argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("scaling fit: error:") and message in captured.err
