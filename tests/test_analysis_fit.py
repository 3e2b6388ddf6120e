"""fit_power_law, the Fit object, degenerate input, and bootstrap interval coverage."""

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, summaries

from analysis.fit import Fit, fit_chinchilla, fit_kaplan, fit_power_law


@pytest.mark.parametrize("seed", range(5))
def test_power_law_recovers_its_parameters(seed):
    # 20 points over 4 decades with 2% noise: the slope's standard error is
    # 0.02 / (sd(ln x) sqrt(n)) = 0.02 / (2.7 * 4.5) = 0.0017; tolerance 4 standard errors.
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e5, 1e9, 20)
    y = (8.8e13 / x) ** 0.076 * np.exp(rng.normal(0, 0.02, len(x)))
    fit = fit_power_law(x, y, x_name="N", y_name="L")
    assert abs(fit.params["alpha_N"] - 0.076) < 4 * 0.0017
    # ln N_c = mean(ln N) + mean(ln L) / alpha: its sd is about (0.02 / sqrt(20) + (32 - 16) * 0.0017) / 0.076
    # = 0.4 (16 = mean ln N, 32 = ln N_c); tolerance 5 sd.
    assert abs(np.log(fit.params["N_c"]) - np.log(8.8e13)) < 2.0
    assert fit.intervals["alpha_N"][0] < fit.params["alpha_N"] < fit.intervals["alpha_N"][1]


@pytest.mark.parametrize("seed", range(3))
def test_power_law_with_irreducible_term(seed):
    # 1% noise on 30 points where the reducible part falls from ~3x E to ~0.15x E.
    # Tolerances: 4 sd of each estimate over 40 seeds of this design (sd: alpha 0.008, E 0.012).
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e3, 1e8, 30)
    y = ((1e4 / x) ** 0.3 + 1.7) * np.exp(rng.normal(0, 0.01, len(x)))
    fit = fit_power_law(x, y, irreducible=True, bootstrap=200)
    assert abs(fit.params["alpha"] - 0.3) < 0.032
    assert abs(fit.params["E"] - 1.7) < 0.05
    assert fit.quality["rmse_log"] < 0.02


def test_fit_object_repr_frame_predict_residuals():
    x = np.geomspace(1e5, 1e8, 8)
    y = 2.0 * (1e6 / x) ** 0.1
    fit = fit_power_law(x, y, bootstrap=100, x_name="N", y_name="L")
    assert isinstance(fit, Fit)
    text = repr(fit)
    assert "alpha_N" in text and "95% interval" in text and "8 points" in text and "r2_log" in text
    row = fit.to_frame()
    assert len(row) == 1
    assert {"law", "alpha_N", "alpha_N_lo", "alpha_N_hi", "N_c", "n_points", "r2_log"} <= set(row.columns)
    np.testing.assert_allclose(fit.predict(x), y, rtol=1e-9)
    np.testing.assert_allclose(fit.predict(N=1e6), 2.0, rtol=1e-9)
    np.testing.assert_allclose(fit.residuals, 0, atol=1e-9)
    assert fit.dropped.empty and list(fit.data.columns) == ["N", "L", "residual"]
    with pytest.raises(TypeError):
        fit.predict(D=1e6)
    with pytest.raises(ValueError, match="no compute-optimal allocation"):
        fit.optimal_allocation(1e15)


@pytest.mark.parametrize("x, y, message", [
    ([1e5], [3.0], "1 point"),
    ([1e5, 1e6, np.nan], [3.0, 2.5, 2.0], "non-finite"),
    ([1e5, 1e6, 1e7], [3.0, np.inf, 2.0], "non-finite"),
    ([1e5, 1e6, 1e7], [3.0, -1.0, 2.0], "positive"),
    ([1e6, 1e6, 1e6], [3.0, 2.9, 3.1], "single distinct"),
])
def test_power_law_degenerate_input_raises(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y)


def test_an_exact_fit_has_no_interval():
    fit = fit_power_law([1e5, 1e6], [3.0, 2.5], bootstrap=100)
    assert np.isnan(fit.intervals["alpha"]).all() and fit.params["alpha"] > 0


def test_power_law_needs_three_distinct_x_for_three_parameters():
    with pytest.raises(ValueError, match="2 distinct"):
        fit_power_law([1e5, 1e5, 1e6, 1e6], [3, 3, 2, 2], irreducible=True)


def test_record_fitters_reject_degenerate_records():
    kaplan = kaplan_records(KaplanLaw(), n_params_nonembed=[1e6], tokens=[1e7, 1e8, 1e9, 1e10, 1e11, 1e12],
                            n_evals=3)
    one_size = summaries(kaplan)
    with pytest.raises(ValueError, match="single model size"):
        fit_chinchilla(one_size, approach=3)
    with pytest.raises(ValueError, match="3 point"):
        fit_chinchilla(one_size.head(3), approach=3)
    with pytest.raises(ValueError, match="single model size"):
        fit_kaplan(kaplan, laws=["N"])
    fits = fit_kaplan(kaplan, bootstrap=0)  # the laws the data supports, the others skipped with a reason
    assert "L(N)" in fits.skipped and "L(D)" in fits
    with pytest.raises(ValueError, match="no records"):
        fit_chinchilla(pd.DataFrame(), approach=2)
    with pytest.raises(ValueError, match="approach must be"):
        fit_chinchilla(one_size, approach=4)
    no_budgets = one_size.assign(flops_budget=np.nan)
    with pytest.raises(ValueError, match="flops_budget"):
        fit_chinchilla(no_budgets, approach=2)


def test_runs_that_did_not_complete_are_dropped_with_the_reason():
    history = isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=5, n_diverged=1, n_evals=4)
    runs = summaries(history)
    nan_loss = runs.index[0]
    runs.loc[nan_loss, "val_loss"] = np.nan
    fit = fit_chinchilla(runs, approach=3, bootstrap=0)
    reasons = fit.dropped.set_index("run_id")["reason"]
    assert reasons[runs.loc[runs["status"] == "diverged", "run_id"].item()] == "status diverged"
    assert reasons[runs.loc[nan_loss, "run_id"]] == "non-finite val_loss"
    assert fit.n_points == len(runs) - 2


def test_power_law_intervals_cover_the_truth_at_their_nominal_rate():
    # 200 simulated data sets; a 95% interval should cover the true exponent ~190 times. The
    # binomial sd is 3 data sets; percentile bootstrap intervals run slightly narrow at n = 25.
    rng = np.random.default_rng(123)
    x = np.geomspace(1e5, 1e9, 25)
    hits = 0
    for i in range(200):
        y = (1e13 / x) ** 0.08 * np.exp(rng.normal(0, 0.02, len(x)))
        lo, hi = fit_power_law(x, y, bootstrap=1000, seed=i).intervals["alpha"]
        hits += lo <= 0.08 <= hi
    assert 0.88 <= hits / 200 <= 0.99
