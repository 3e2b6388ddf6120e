"""Known-answer sweeps end to end in the analysis: records of a Kaplan grid drawn from the facts
source's law (E + A/N^alpha + B/D^beta with its true E and exponents recorded in every row) are
fitted by approach 3 beside Kaplan's laws, read against the truth, and drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import fit_chinchilla
from analysis.kaplan import fit_kaplan
from analysis.truth import compare_with_truth, has_known_floor
from tests.analysis_fakes import ChinchillaLaw, run_records, shape_for, summaries, write_records


def known_answer_grid(alpha: float, *, sweep: str, seed: int = 0) -> pd.DataFrame:
    """A 6 x 5 Kaplan grid whose loss is the law L = E + A/N^alpha + B/D^beta (N all parameters),
    1% scatter, with the truth columns the facts source writes. A and B put each excess term at
    0.4 and 0.6 nats at the grid's smallest N and D, as in the shipped facts sweeps."""
    beta = alpha / (1 + alpha)
    law = ChinchillaLaw(E=0.3, A=0.4 * 3e3 ** alpha, B=0.6 * 4e5 ** beta, alpha=alpha, beta=beta)
    rng = np.random.default_rng(seed)
    runs = [run_records(shape_for(n), d, lambda s, t: law.loss(s["n_params"], t), sweep=sweep, grid="kaplan",
                        rng=rng, noise=0.01, n_evals=6)
            for n in np.geomspace(3e3, 5e5, 6) for d in np.geomspace(4e5, 6.4e6, 5)]
    return pd.concat(runs, ignore_index=True).assign(val_loss_optimal=law.E, true_exponent_data=law.beta,
                                                     true_exponent_params=law.alpha)


def test_only_laws_with_an_irreducible_term_are_read_against_the_truth():
    history = known_answer_grid(0.5, sweep="facts")
    runs = summaries(history)
    assert has_known_floor(runs) and not has_known_floor(runs.assign(val_loss_optimal=np.nan))
    kaplan = list(fit_kaplan(history, bootstrap=0).values())
    assert any("alpha_N" in f.params for f in kaplan)  # Kaplan's exponents exist, but of the whole loss
    with pytest.raises(ValueError, match="irreducible term"):
        compare_with_truth(kaplan, runs)
    table = compare_with_truth(kaplan + [fit_chinchilla(runs, approach=3, bootstrap=100)], runs)
    assert set(table["law"]) == {"Chinchilla approach 3"}
    by = table.set_index("parameter")
    assert set(by.index) == {"E", "alpha", "beta"}
    assert by.loc["alpha", "truth"] == 0.5 and by.loc["beta", "truth"] == pytest.approx(1 / 3)
    # On records that follow the law, every interval covers its truth and the exponents meet the
    # goals the shipped sweeps are held to. (E does not always meet 3% on this grid at 1% scatter:
    # over seeds 0-4 it misses by 1-19%, which the README reports as the design's own resolution.)
    assert by["covered"].all()
    assert abs(by.loc["alpha", "error"]) < 0.1 and abs(by.loc["beta", "error"]) < 0.05
    assert abs(by.loc["E", "relative_error"]) < 0.1


def test_fit_and_figures_of_known_answer_sweeps(tmp_path, capsys):
    from analysis.cli import fit_command, table_command
    from analysis.make_plots import main as make_plots

    for alpha, name in ((0.5, "facts"), (0.8, "facts-alpha08")):
        write_records(known_answer_grid(alpha, sweep=name, seed=int(alpha * 10)), tmp_path)
    assert fit_command([str(tmp_path / "facts"), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "| Chinchilla approach 3 | alpha |" in out and "| L(N,D) | alpha_N |" in out
    assert table_command([str(tmp_path / "facts"), "--bootstrap", "50"]) == 0
    truth = capsys.readouterr().out.split("## Fits against the known answers")[1]
    assert "| alpha | 0.5 |" in truth and "| E | 0.3 |" in truth

    assert make_plots([str(tmp_path), "--bootstrap", "50"]) == 0
    for name in ("facts", "facts-alpha08"):
        assert (tmp_path / name / "figures" / "truth.png").stat().st_size > 10_000
    combined = tmp_path / "figures" / "known_answers.png"
    assert combined.stat().st_size > 10_000 and (tmp_path / "figures" / "known_answers.pdf").exists()


def test_truth_figure_draws_every_known_parameter_against_the_line():
    from analysis.truth_figures import truth_figure

    tables = []
    for alpha, name in ((0.5, "facts"), (0.8, "facts-alpha08")):
        runs = summaries(known_answer_grid(alpha, sweep=name))
        tables.append(compare_with_truth(fit_chinchilla(runs, approach=3, bootstrap=50), runs).assign(sweep=name))
    fig = truth_figure(pd.concat(tables, ignore_index=True))
    axes = fig.get_axes()
    assert [ax.get_xlabel().split(": ")[1] for ax in axes] == [
        "Irreducible loss E (nats/token)", "Data exponent (of the excess loss)",
        "Parameter exponent (of the excess loss)"]
    for ax in axes:  # one point per sweep with its interval, and the line fitted = true
        labels = ax.get_legend_handles_labels()[1]
        assert len(labels) == 3 and "fitted = true" in labels
    with pytest.raises(ValueError, match="no fitted parameter"):
        truth_figure(tables[0].iloc[:0])
