"""fit_kaplan recovers the laws its fake records were drawn from.

Records follow Kaplan et al.'s L(N, D) (eq. 1.5, the paper's constants) with 1% lognormal noise
on every evaluation; a learning curve is the law at the tokens seen so far. Each tolerance is 4
standard deviations of that estimate across 40 seeds of the same design (measured once with
bootstrap=0; every estimator's bias there was below 0.3 sd), so a correct fitter fails a check
with probability ~1e-4, while a wrong exponent (e.g. fitting ln L against N instead of ln N, or
dropping the wrong frontier points) is off by many tolerances.
"""

import numpy as np
import pytest
from analysis_fakes import KaplanLaw, kaplan_records

from analysis.fit import FitSet, fit_kaplan

LAW = KaplanLaw()
SIZES = np.geomspace(1e5, 1e8, 7)
SEEDS = range(3)


@pytest.mark.parametrize("seed", SEEDS)
def test_l_of_n_from_converged_runs(seed):
    # Trained on 1e12 tokens, D_c/D is 1e-3 of the model term: every run is converged.
    history = kaplan_records(LAW, n_params_nonembed=SIZES, tokens=[1e12], seed=seed, n_evals=4)
    fit = fit_kaplan(history, laws=["N"])["L(N)"]
    assert abs(fit.params["alpha_N"] - LAW.alpha_N) < 0.0052  # sd 0.0013
    assert abs(np.log(fit.params["N_c"] / LAW.N_c)) < 1.25  # sd 0.31
    assert fit.settings["N"] == "n_params_nonembed"


@pytest.mark.parametrize("seed", SEEDS)
def test_l_of_d_from_a_model_too_large_to_limit_it(seed):
    # As in the paper, L(D) is read off the largest model: at 1e11 parameters the model term is
    # under 0.5% of D_c/D for D <= 1e9.
    history = kaplan_records(LAW, n_params_nonembed=[1e11], tokens=np.geomspace(1e6, 1e9, 7), seed=seed, n_evals=4)
    fit = fit_kaplan(history, laws=["D"])["L(D)"]
    assert abs(fit.params["alpha_D"] - LAW.alpha_D) < 0.0056  # sd 0.0014
    assert abs(np.log(fit.params["D_c"] / LAW.D_c)) < 0.85  # sd 0.21


@pytest.fixture(scope="module", params=SEEDS)
def grid_fits(request):
    history = kaplan_records(LAW, n_params_nonembed=SIZES, tokens=np.geomspace(1e7, 1e12, 6), seed=request.param,
                             n_diverged=1)
    # points="curves": the frontier of every learning-curve row, as Kaplan et al. read it (these fake
    # curves are the law at the tokens seen so far: no schedule to bias them).
    return history, fit_kaplan(history, laws=["C", "ND"], bootstrap=200, seed=request.param, points="curves")


def test_compute_frontier_exponent(grid_fits):
    # The envelope over N of L(N, C/6N) is a power law with alpha_C = alpha_N alpha_D / (alpha_N + alpha_D).
    _, fits = grid_fits
    fit = fits["L(C_min)"]
    assert abs(fit.params["alpha_C"] - LAW.alpha_C) < 0.002  # sd 0.0005
    assert fit.settings["C"] == "flops_6nd"
    reasons = set(fit.dropped["reason"])
    assert any("warmup" in r for r in reasons) and any("smallest or largest" in r for r in reasons)
    assert "status diverged" in reasons


def test_joint_law_and_the_allocation_it_implies(grid_fits):
    history, fits = grid_fits
    fit = fits["L(N,D)"]
    p = fit.params
    assert abs(p["alpha_N"] - LAW.alpha_N) < 0.0025  # sd 0.0006
    assert abs(p["alpha_D"] - LAW.alpha_D) < 0.014  # sd 0.0033
    assert abs(np.log(p["N_c"] / LAW.N_c)) < 0.6  # sd 0.14
    assert abs(np.log(p["D_c"] / LAW.D_c)) < 2.2  # sd 0.54
    assert abs(p["a_opt"] - LAW.a_opt) < 0.04  # sd 0.009
    lo, hi = fit.intervals["a_opt"]
    assert lo < p["a_opt"] < hi and hi - lo < 0.1
    # optimal_allocation solves the law's own optimum: no other split of C = 6ND does better
    c = 1e20
    n_opt, d_opt = fit.optimal_allocation(c)
    assert np.isclose(6 * n_opt * d_opt, c)
    for factor in (0.8, 1.25):
        assert fit.predict(n_opt, d_opt) < fit.predict(n_opt * factor, d_opt / factor)
    assert fit.n_points == history["run_id"].nunique() - 1  # the diverged run is dropped


def test_fit_set_prints_and_frames_every_law(grid_fits):
    _, fits = grid_fits
    assert isinstance(fits, FitSet) and list(fits) == ["L(C_min)", "L(N,D)"]
    assert "L(C_min)" in repr(fits) and "a_opt" in repr(fits)
    assert list(fits.to_frame()["law"]) == ["L(C_min)", "L(N,D)"]


def test_summaries_alone_give_a_frontier_of_final_points():
    history = kaplan_records(LAW, n_params_nonembed=SIZES, tokens=np.geomspace(1e7, 1e12, 6), seed=0, n_evals=5)
    runs = history.groupby("run_id").tail(1)
    fits = fit_kaplan(runs, bootstrap=0, keep_edge_models=True)
    assert set(fits) == {"L(N)", "L(D)", "L(C_min)", "L(N,D)"}
    assert fits["L(C_min)"].settings["curves"] is False


def test_one_data_size_reads_l_of_d_off_the_learning_curves_only_when_asked():
    # A sweep of one D carries L(D) (the envelope over models at each token count, led by the
    # largest model) and the joint law in its learning curves, but those are mid-schedule points:
    # only points="curves" reads them, and the fit says so.
    history = kaplan_records(LAW, n_params_nonembed=np.geomspace(1e9, 1e11, 3), tokens=[1e9], seed=0, n_evals=30)
    with pytest.raises(ValueError, match=r'single data size .*points="curves"'):
        fit_kaplan(history, laws=["D"])
    ends = fit_kaplan(history, bootstrap=0)
    assert "L(D)" in ends.skipped and "L(D)" not in ends and ends["L(N)"].settings["points"] == "ends"
    fits = fit_kaplan(history, laws=["D", "ND"], bootstrap=100, points="curves")
    l_d = fits["L(D)"]
    assert "envelope" in l_d.settings["point_source"]
    assert l_d.n_points >= 10
    assert abs(l_d.params["alpha_D"] - LAW.alpha_D) < 0.01
    joint = fits["L(N,D)"]
    assert "learning-curve" in joint.settings["point_source"]
    assert abs(joint.params["alpha_D"] - LAW.alpha_D) < 0.02
    # Only final rows of summaries: one data size is still an error, naming the problem.
    with pytest.raises(ValueError, match="single data size"):
        fit_kaplan(history.groupby("run_id").tail(1).assign(step=1), laws=["D"])
