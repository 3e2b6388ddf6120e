"""analysis.sensitivity on records from a known Chinchilla law: the matched Huber delta, the E
profile's identification flag, leave-one-group-out refits, and repr(fit)'s fragile line."""

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import ChinchillaLaw, isoflop_records, random_grid_points, summaries

from analysis import approach3, sensitivity
from analysis.fit import fit_chinchilla

LAW = ChinchillaLaw()


@pytest.fixture(scope="module")
def identifiable():
    # 60 runs over three decades of N and four of D: E is measured to about +-0.02 (sd over seeds).
    return fit_chinchilla(random_grid_points(LAW, 60, seed=2), approach=3, bootstrap=200, seed=2)


@pytest.fixture(scope="module")
def unidentifiable():
    # 40 runs within a factor of 2 in N and in D: the losses are nearly linear in ln N and ln D
    # there, so a constant E trades off against A and B over the whole range 0 <= E < min L.
    points = random_grid_points(LAW, 40, seed=2, n_range=(1e5, 2e5), d_range=(1e6, 2e6))
    return fit_chinchilla(points, approach=3, bootstrap=200, seed=2)


def test_e_profile_flag_fires_only_where_the_design_cannot_identify_e(identifiable, unidentifiable):
    good, bad = identifiable.sensitivity, unidentifiable.sensitivity
    assert good.e_identified is True and bad.e_identified is False
    assert good.e_plausible[0] <= LAW.E <= good.e_plausible[1]
    assert good.e_plausible[1] - good.e_plausible[0] < 0.15
    assert bad.e_plausible[1] - bad.e_plausible[0] > 0.7 * bad.e_range[1]  # flat over most of [0, min L)
    assert "E is not identified" in repr(unidentifiable) and unidentifiable.fragile
    assert "fragile" not in repr(identifiable) and not identifiable.fragile
    assert "E NOT identified" in repr(bad) and "E identified" in repr(good)


def test_e_profile_is_the_least_objective_at_each_fixed_e(identifiable):
    fit = identifiable
    profile = fit.sensitivity.e_profile
    assert profile["E"].iloc[0] == 0 and profile["E"].max() < fit.sensitivity.e_range[1]
    at_fit = profile.iloc[np.argmin(np.abs(profile["E"] - fit.params["E"]))]
    assert at_fit["E"] == pytest.approx(fit.params["E"])
    assert at_fit["objective"] == pytest.approx(fit.quality["huber_objective"], rel=1e-6)
    assert (profile["rise"] >= 0).all() and profile["rise"].iloc[0] > 10 * fit.sensitivity.e_tolerance
    # Each profile point is a minimum: the fit's other parameters at that E do no better.
    ln_n, ln_d, ln_l = (np.log(fit.data[c].to_numpy(float)) for c in ("N", "D", "L"))
    row = profile.iloc[5]
    theta = approach3.theta_of(fit.params)[0].copy()
    theta[2] = np.log(row["E"])
    naive = approach3.huber_objective(theta, ln_n, ln_d, ln_l, None, fit.settings["huber_delta"])[0]
    assert row["objective"] <= naive


def test_matched_delta_follows_the_noise():
    # delta = 1.345 sigma: 1% and 3% lognormal noise give delta near 0.0135 and 0.040.
    for noise in (0.01, 0.03):
        fit = fit_chinchilla(random_grid_points(LAW, 120, seed=4, noise=noise), approach=3, bootstrap=0)
        assert fit.settings["huber_delta"] == pytest.approx(1.345 * noise, rel=0.2)
        assert fit.settings["huber_delta_rule"].startswith("matched")
    paper = fit_chinchilla(random_grid_points(LAW, 120, seed=4), approach=3, bootstrap=0, huber_delta=1e-3)
    assert paper.settings["huber_delta"] == 1e-3 and paper.settings["huber_delta_rule"] == "fixed"
    with pytest.raises(ValueError, match="huber_delta"):
        fit_chinchilla(random_grid_points(LAW, 20, seed=4), approach=3, bootstrap=0, huber_delta="large")


def test_sensitivity_reports_the_fit_at_both_deltas(identifiable):
    deltas = identifiable.sensitivity.deltas.set_index("rule")
    assert list(deltas.index) == ["matched", "paper"]
    assert deltas.loc["paper", "delta"] == approach3.HUBER_DELTA
    assert deltas.loc["matched", "E"] == pytest.approx(identifiable.params["E"])
    paper = fit_chinchilla(random_grid_points(LAW, 60, seed=2), approach=3, bootstrap=0, huber_delta=1e-3)
    assert deltas.loc["paper", "alpha"] == pytest.approx(paper.params["alpha"], rel=1e-4)
    # From a fit made at the paper's delta, the other row is the matched one.
    other = sensitivity.approach3_sensitivity(paper).deltas
    assert list(other["rule"]) == ["paper", "matched"]
    assert other["delta"].iloc[1] == pytest.approx(identifiable.settings["huber_delta"])


def test_leave_one_shape_out_equals_refitting_without_it():
    runs = summaries(isoflop_records(LAW, budgets=np.geomspace(1e14, 1e16, 4), n_sizes=6, seed=1, n_evals=2))
    # Shapes as a sweep repeats them: 6 size classes, each one shape across the budgets.
    size_class = runs.groupby("flops_budget").cumcount()
    runs = runs.assign(n_layer=size_class + 1, d_model=64)
    fit = fit_chinchilla(runs, approach=3, bootstrap=50)
    logo = fit.sensitivity.leave_one_out
    assert fit.sensitivity.group == "shape" and len(logo) == 6 and logo["n_left_out"].sum() == len(runs)
    left = logo.iloc[2]
    rest = runs.loc[("L" + runs["n_layer"].astype(str) + "-d64") != left["left_out"]]
    refit = fit_chinchilla(rest, approach=3, bootstrap=0, huber_delta=fit.settings["huber_delta"])
    for name in ("E", "alpha", "beta"):
        assert left[name] == pytest.approx(refit.params[name], rel=2e-3, abs=2e-3)
    spread = fit.sensitivity.leave_one_out_spread()
    assert spread["E"][0] <= fit.params["E"] <= spread["E"][1]


def _one_big_model(shift: float):
    """40 small runs (4 shapes) and the one large model on five data sizes, its losses x shift."""
    points = random_grid_points(LAW, 40, seed=7, n_range=(1e5, 1e6))
    big = random_grid_points(LAW, 5, seed=8, n_range=(3e7, 3e7))
    big = big.assign(run_id=[f"big{i}" for i in range(5)], val_loss=big["val_loss"] * shift, n_layer=9, d_model=512)
    points = points.assign(n_layer=np.arange(len(points)) % 4 + 1, d_model=32)
    return fit_chinchilla(pd.concat([points, big], ignore_index=True), approach=3, bootstrap=200)


def test_a_group_that_decides_the_fit_makes_it_fragile():
    # Only one model is large, so it alone sets E: leaving it out moves E by more than the
    # bootstrap (which resamples runs as if independent) allows, even when its losses follow the
    # law. Shifting its losses by 6% (a shape effect) moves the exponents too.
    fit = _one_big_model(1.0)
    honest = " ".join(fit.sensitivity.fragile_reasons(fit))
    assert "leaving out one shape moves E" in honest and "alpha" not in honest
    shifted = _one_big_model(1.06)
    reasons = " ".join(shifted.sensitivity.fragile_reasons(shifted))
    assert "leaving out one shape moves E" in reasons and "alpha over" in reasons
    assert "fragile: " in repr(shifted)


def test_sensitivity_is_skipped_without_bootstrap_unless_asked():
    points = random_grid_points(LAW, 40, seed=3)
    assert fit_chinchilla(points, approach=3, bootstrap=0).sensitivity is None
    asked = fit_chinchilla(points, approach=3, bootstrap=0, sensitivity=True).sensitivity
    assert asked.e_identified is None and np.isnan(asked.e_tolerance)
    assert fit_chinchilla(points, approach=3, bootstrap=20, sensitivity=False).sensitivity is None
