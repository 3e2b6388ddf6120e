"""The data-constrained law (Muennighoff et al. 2023) recovers its parameters; its figure and tables."""

import numpy as np
import pandas as pd
import pytest

from analysis import load_runs
from analysis.data_constrained import data_constrained_loss, effective_data, fit_data_constrained
from analysis.make_plots import sweep_figures
from analysis.repeat_figures import epochs_figure
from analysis_fakes import DataConstrainedLaw, repeated_records, summaries, write_records


def test_effective_data_is_the_papers_eq_5():
    # One epoch or less: D' = D. R_D repetitions: U (1 + R* (1 - exp(-R/R*))), below U (1 + R*).
    assert effective_data(1e6, 1e9, 15.4) == pytest.approx(1e6)
    assert effective_data(5e6, 1e6, 15.4) == pytest.approx(1e6 * (1 + 15.4 * (1 - np.exp(-4 / 15.4))))
    assert effective_data(1e12, 1e6, 15.4) == pytest.approx(1e6 * 16.4)
    law = DataConstrainedLaw()
    params = {k: getattr(law, k) for k in ("E", "A", "B", "alpha", "beta", "R_D_star")}
    assert data_constrained_loss(params, 1e7, 4e9, 1e8) == pytest.approx(law.loss(1e7, 4e9, 1e8))


@pytest.fixture(scope="module")
def fitted():
    runs = summaries(repeated_records(seed=1, noise=0.01))
    return fit_data_constrained(runs, bootstrap=300)


def test_the_fit_recovers_the_law_within_its_intervals(fitted):
    truth = DataConstrainedLaw()
    for name in ("E", "A", "B", "alpha", "beta", "R_D_star"):
        lo, hi = fitted.intervals[name]
        assert lo <= getattr(truth, name) <= hi, (name, lo, hi)
    assert fitted.params["R_D_star"] == pytest.approx(truth.R_D_star, rel=0.3)
    hi_lo = fitted.intervals["R_D_star"]
    assert hi_lo[1] / hi_lo[0] < 4  # measured, not merely bounded
    assert fitted.settings["n_single_epoch"] == 16 and fitted.settings["n_repeated"] == 28
    assert not fitted.settings["R_D_star_at_bound"]
    assert set(fitted.data["stage"]) == {"single epoch", "repeated"}
    # predict takes (N, D, U) and gives an interval that holds the truth at a new point.
    p = fitted.predict(N=2e7, D=1e10, U=2e8, interval=True)
    assert p.lower <= truth.loss(2e7, 1e10, 2e8) <= p.upper
    assert "R_D_star" in repr(fitted) and "R_D_star_lo" in fitted.to_frame()


def test_the_fit_needs_repeated_and_single_epoch_runs():
    runs = summaries(repeated_records(seed=2, epochs=(2,), noise=0.01))
    fresh = runs[runs["epochs"] <= 1]
    with pytest.raises(ValueError, match="0 repeated run"):
        fit_data_constrained(fresh, bootstrap=0)
    with pytest.raises(ValueError, match="unique_tokens"):
        fit_data_constrained(runs.drop(columns=["unique_tokens"]), bootstrap=0)
    with pytest.raises(ValueError, match="single-epoch run"):
        fit_data_constrained(runs[runs["epochs"] > 1], bootstrap=0)


def test_epochs_figure_and_make_plots(tmp_path, fitted):
    history = repeated_records(seed=1, noise=0.01)
    fig = epochs_figure(summaries(history), fitted)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "Epochs" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    sweep = write_records(history, tmp_path)
    written = {p.name for p in sweep_figures(sweep, bootstrap=20)}
    assert {"loss_vs_epochs.png", "loss_vs_epochs.pdf"} <= written
    runs = load_runs(sweep)
    assert isinstance(runs, pd.DataFrame) and runs["epochs"].max() > 100


def test_scaling_fit_picks_the_data_constrained_law_for_repeated_data(tmp_path, capsys):
    from scaling.cli import main
    sweep = write_records(repeated_records(seed=1, noise=0.01), tmp_path)
    assert main(["fit", str(sweep), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "Muennighoff" in out and "R_D_star" in out
    assert main(["fit", str(sweep), "--law", "data-constrained", "--holdout-flops", "1e15"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_overfitted_runs_are_left_out_and_listed():
    """A repeated run whose loss rises above that of the same N and U on fewer tokens is outside
    eq. 5 (D' only saturates): dropped by default with its reason, kept on request."""
    runs = summaries(repeated_records(seed=3, noise=0.01))
    repeated = runs[runs["epochs"] >= 4]
    worst = repeated.iloc[0]
    # The same N and U on half the tokens (still repeated), at a lower loss: more training did harm.
    twin = worst.copy()
    twin["run_id"], twin["tokens"], twin["val_loss"] = "twin", worst["tokens"] // 2, worst["val_loss"] / 1.5
    twin["epochs"] = twin["tokens"] / twin["unique_tokens"]
    spoiled = pd.concat([runs, twin.to_frame().T.astype(runs.dtypes)], ignore_index=True)
    clean, kept = (fit_data_constrained(spoiled, bootstrap=0, overfitted=o) for o in ("drop", "keep"))
    n_repeated = int((runs["epochs"] > 1).sum())
    assert clean.settings["n_overfitted"] == 1 and clean.settings["n_repeated"] == n_repeated  # twin in, worst out
    assert list(clean.dropped["run_id"]) == [worst["run_id"]] and "overfitted" in clean.dropped["reason"].iloc[0]
    assert kept.settings["n_repeated"] == n_repeated + 1 and kept.dropped.empty
    assert fit_data_constrained(runs, bootstrap=0).settings["n_overfitted"] == 0  # the law never overfits
    with pytest.raises(ValueError, match="overfitted must be"):
        fit_data_constrained(runs, bootstrap=0, overfitted="maybe")
