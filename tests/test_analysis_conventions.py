"""Each law under each convention: the table says what a headline exponent depends on."""

from __future__ import annotations

import numpy as np

from analysis.cli import fit_command
from analysis.conventions import DEFAULTS, fit_conventions
from analysis.fit import fit_chinchilla, fit_kaplan
from analysis_fakes import ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, write_records


def test_kaplan_laws_under_four_conventions_with_the_default_equal_to_the_plain_fit():
    records = kaplan_records(KaplanLaw(), n_params_nonembed=[1e4, 3e4, 1e5, 3e5, 1e6], tokens=[1e7, 3e7, 1e8],
                             n_evals=4)
    frame = fit_conventions(records, "kaplan", bootstrap=0)
    assert frame["convention"].nunique() == 4
    assert set(frame.loc[frame["default"], "param_count"]) == {DEFAULTS["kaplan"][0]}
    plain = fit_kaplan(records, bootstrap=0)
    own = frame[frame["default"]].set_index(["law", "parameter"])["value"]
    for law, fit in plain.items():
        for name, value in fit.params.items():
            assert np.isclose(own[(fit.law, name)], value, rtol=1e-9), (law, name)
    # The parameter count moves L(N)'s exponent: counting the embeddings stretches the small models.
    alpha = frame[(frame["law"] == "L(N)") & (frame["parameter"] == "alpha_N")].groupby("param_count")["value"].first()
    assert alpha["all"] != alpha["nonembed"]


def test_chinchilla_approach_3_varies_only_the_parameter_count():
    records = isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=6, n_evals=2)
    frame = fit_conventions(records, "chinchilla", approach=3, bootstrap=0)
    assert sorted(frame["convention"].unique()) == ["all parameters", "non-embedding N"]
    own = frame[frame["default"]].set_index("parameter")["value"]
    plain = fit_chinchilla(records, approach=3, bootstrap=0)
    assert np.isclose(own["a"], plain.params["a"], rtol=1e-9)


def test_scaling_fit_conventions_prints_one_table_marking_the_default(tmp_path, capsys):
    records = kaplan_records(KaplanLaw(), n_params_nonembed=[1e4, 3e4, 1e5, 3e5, 1e6], tokens=[1e7, 3e7, 1e8],
                             n_evals=4)
    sweep = write_records(records, tmp_path)
    assert fit_command([str(sweep), "--law", "kaplan", "--conventions", "--bootstrap", "0"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.count("*") == 1 and "non-embedding N, C = 6ND *" in header and "all parameters, exact FLOPs" in header
