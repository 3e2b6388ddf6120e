"""Plots return labelled Figures with log axes and the fitted laws in the legend; make_plots
writes every figure of every sweep, deterministically."""

import hashlib

import numpy as np
import pytest
from analysis_fakes import ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, summaries, write_records
from matplotlib.figure import Figure

from analysis import make_plots, plots
from analysis.fit import fit_chinchilla, fit_kaplan
from analysis.grid_figures import kaplan_grid


@pytest.fixture(scope="module")
def kaplan():
    history = kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 5),
                             tokens=np.geomspace(1e8, 1e12, 4), n_evals=8, n_diverged=1)
    return history, fit_kaplan(history, bootstrap=20)


@pytest.fixture(scope="module")
def chinchilla():
    history = isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=7, n_evals=8)
    runs = summaries(history)
    fits = [fit_chinchilla(history, approach=1, bootstrap=20), fit_chinchilla(runs, approach=2, bootstrap=20),
            fit_chinchilla(runs, approach=3, bootstrap=20)]
    return history, runs, fits


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _legend_text(ax):
    legend = ax.get_legend()
    return " ".join(t.get_text() for t in legend.get_texts()) if legend else ""


def test_kaplan_figure1(kaplan):
    history, fits = kaplan
    fig = plots.kaplan_figure1(history, fits)
    assert isinstance(fig, Figure)
    compute, data, params = _visible_axes(fig)[:3]
    for ax in (compute, data, params):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "nats/token" in compute.get_ylabel()
    assert "FLOPs" in compute.get_xlabel() and "tokens" in data.get_xlabel() and "Parameters" in params.get_xlabel()
    assert r"\alpha_C" in _legend_text(compute) and r"\alpha_D" in _legend_text(data)
    assert r"\alpha_N" in _legend_text(params)
    # every learning curve is drawn faint on the compute panel
    assert len(compute.get_lines()) >= history["run_id"].nunique() - 1


def test_kaplan_grid_draws_every_end_point_and_the_joint_law_through_them(kaplan):
    history, fits = kaplan
    fig = kaplan_grid(history, fits)
    by_d, by_n = _visible_axes(fig)[:2]
    for ax in (by_d, by_n):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "nats/token" in by_d.get_ylabel()
    assert "tokens" in by_d.get_xlabel() and "Parameters" in by_n.get_xlabel()
    assert "mid-schedule, not fitted" in _legend_text(by_d) and r"\alpha_D" in _legend_text(by_d)
    cells = history.groupby("run_id").tail(1)
    complete = cells[cells["status"] == "complete"]
    # one dashed law per size on the left, per data size on the right
    dashed = lambda ax: sum(line.get_linestyle() == "--" and len(line.get_xdata()) > 0 for line in ax.get_lines())
    assert dashed(by_d) == complete["n_params_nonembed"].nunique() and dashed(by_n) == complete["tokens"].nunique()
    with pytest.raises(ValueError, match="no L\\(N,D\\) fit"):
        kaplan_grid(history, fit_kaplan(history, laws=["N"], bootstrap=0))


def test_learning_curves_are_coloured_by_size(kaplan):
    history, _ = kaplan
    fig = plots.learning_curves(history)
    ax = _visible_axes(fig)[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "tokens" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    colours = {tuple(line.get_color()) for line in ax.get_lines() if line.get_xdata().size}
    assert len(colours) == history["n_params_nonembed"].nunique()
    assert any("Parameters" in a.get_ylabel() for a in fig.axes)  # the colour bar says what colour means


def test_isoflop_profiles_and_optimal_allocation(chinchilla):
    _, runs, fits = chinchilla
    fig = plots.isoflop(runs, fits)
    profiles, n_opt, d_opt = _visible_axes(fig)[:3]
    assert profiles.get_xscale() == "log" and "Parameters" in profiles.get_xlabel()
    assert "nats/token" in profiles.get_ylabel()
    assert len(profiles.get_lines()) >= 3  # one parabola per budget
    for ax in (n_opt, d_opt):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "FLOPs" in ax.get_xlabel()
        text = _legend_text(ax)
        assert "approach 1" in text and "approach 2" in text and "approach 3" in text
    assert "tokens" in d_opt.get_ylabel()
    # without fits, approach 2 is fitted for the parabolas
    assert isinstance(plots.isoflop(runs), Figure)


def test_chinchilla_fit_observed_vs_predicted_and_contours(chinchilla):
    fit3 = chinchilla[2][2]
    fig = plots.chinchilla_fit(fit3)
    observed, contours = _visible_axes(fig)[:2]
    assert observed.get_xscale() == observed.get_yscale() == "log"
    assert "nats/token" in observed.get_xlabel() and "nats/token" in observed.get_ylabel()
    assert r"E+A/N^{\alpha}" in _legend_text(observed)
    assert contours.get_xscale() == contours.get_yscale() == "log"
    assert "Parameters" in contours.get_xlabel() and "tokens" in contours.get_ylabel()
    assert "efficient frontier" in _legend_text(contours)


def test_residuals_panel_per_input(kaplan, chinchilla):
    _, fits = kaplan
    fig = plots.residuals(fits)
    axes = _visible_axes(fig)
    assert len(axes) == sum(len(f.inputs) for f in fits.values())
    for ax in axes:
        assert ax.get_xscale() == "log" and "observed / predicted" in ax.get_ylabel() and ax.get_xlabel()
    assert len(_visible_axes(plots.residuals(chinchilla[2]))) == 1 + 1 + 2


def test_make_plots_writes_every_figure_of_every_sweep(tmp_path):
    write_records(kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 5),
                                 tokens=np.geomspace(1e8, 1e12, 4), n_evals=6), tmp_path)
    write_records(isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=5), tmp_path)
    assert make_plots.main([str(tmp_path), "--bootstrap", "20"]) == 0
    names = {f"{n}.{ext}" for n in ("learning_curves", "kaplan_figure1", "kaplan_residuals", "kaplan_grid",
                                    "kaplan_audit", "confidence") for ext in ("png", "pdf")}
    assert {p.name for p in (tmp_path / "kaplan" / "figures").iterdir()} == names
    names = {f"{n}.{ext}" for n in ("learning_curves", "isoflop", "chinchilla_approach3", "chinchilla_residuals",
                                    "chinchilla_audit", "chinchilla_e_profile", "confidence")
             for ext in ("png", "pdf")}
    assert {p.name for p in (tmp_path / "chinchilla" / "figures").iterdir()} == names
    assert make_plots.main([str(tmp_path / "nope")]) == 2


def test_saved_figures_are_byte_for_byte_reproducible(kaplan, tmp_path):
    digests = []
    for attempt in ("first", "second"):
        fig = plots.learning_curves(kaplan[0])  # a fresh figure each time, as make_plots makes
        paths = make_plots.save(fig, tmp_path / attempt, "curves")
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths])
    assert digests[0] == digests[1]
    assert b"CreationDate" not in (tmp_path / "first" / "curves.pdf").read_bytes()
