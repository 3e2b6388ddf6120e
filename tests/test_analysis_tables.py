"""analysis.tables (markdown, CSV, LaTeX) and the `scaling fit` / `scaling table` entry points."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, write_records

from analysis import load_runs, tables
from analysis.cli import fit_command, table_command
from analysis.fit import fit_chinchilla, fit_power_law


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_records(kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 5),
                                 tokens=np.geomspace(1e8, 1e12, 4), n_evals=8), root)
    write_records(isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=6), root)
    return root


@pytest.fixture(scope="module")
def fit():
    x = np.geomspace(1e5, 1e8, 6)
    return fit_power_law(x, 3 * (1e6 / x) ** 0.07, bootstrap=50, x_name="N", y_name="L", law="L(N)")


def test_fits_table_formats(fit):
    md = tables.fits_table(fit, "md")
    lines = md.strip().splitlines()
    assert lines[0] == "| law | parameter | value | 95% interval | points | N |"
    assert set(lines[1]) <= set("|-:") and len(lines) == 2 + len(fit.params) + len(fit.quality)
    assert "| L(N) | alpha_N | 0.07 |" in md

    frame = pd.read_csv(io.StringIO(tables.fits_table(fit, "csv")))
    assert list(frame.columns) == ["law", "parameter", "value", "ci_low", "ci_high", "n_points", "N"]
    row = frame.set_index("parameter").loc["N_c"]
    assert row["value"] == pytest.approx(fit.params["N_c"], rel=1e-12)  # full precision in CSV

    latex = tables.fits_table(fit, "latex")
    assert latex.startswith("\\begin{tabular}{llrlrl}") and latex.rstrip().endswith("\\end{tabular}")
    assert "alpha\\_N" in latex and "\\times10^{" in latex and "\\toprule" in latex


def test_runs_table_one_row_per_run(results):
    runs = load_runs(results / "chinchilla")
    md = tables.runs_table(runs, "md")
    assert len(md.strip().splitlines()) == 2 + len(runs)
    frame = pd.read_csv(io.StringIO(tables.runs_table(runs, "csv")))
    assert len(frame) == len(runs) and {"run_id", "status", "n_params", "val_loss", "flops_budget"} <= set(frame)
    assert "sweep" not in frame  # a single sweep
    with pytest.raises(ValueError, match="format"):
        tables.runs_table(runs, "html")
    with pytest.raises(ValueError, match="no column"):
        tables.runs_table(runs, columns=["nope"])


def test_fits_frame_has_a_row_per_parameter():
    frame = tables.fits_frame([fit_power_law([1, 10, 100], [1, 0.5, 0.25], bootstrap=0)])
    assert list(frame["parameter"]) == ["x_c", "alpha", "r2_log", "rmse_log"]
    assert frame["ci_low"].isna().all()


def test_fit_command_prints_the_laws(results, capsys):
    assert fit_command([str(results / "chinchilla"), "--law", "chinchilla", "--approach", "3",
                        "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "| Chinchilla approach 3 | alpha |" in out and "| Chinchilla approach 3 | a |" in out

    assert fit_command([str(results / "kaplan"), "--law", "kaplan", "--bootstrap", "20", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert {"L(N)", "L(D)", "L(N,D)"} <= set(frame["law"])


def test_fit_command_over_a_parent_of_several_sweeps(results, capsys):
    assert fit_command([str(results), "--law", "chinchilla", "--approach", "2", "--bootstrap", "0",
                        "--format", "csv"]) == 0
    captured = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(captured.out))
    assert set(frame["sweep"]) == {"chinchilla"}
    assert "warning: no fit for kaplan" in captured.err


def test_table_command_prints_runs_and_fits(results, capsys):
    assert table_command([str(results / "chinchilla"), "--format", "md", "--bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert "## Runs" in out and "## Fits" in out and "Chinchilla approach 2" in out
    assert table_command([str(results / "kaplan"), "--format", "latex", "--bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert out.count("\\begin{tabular}") == 2 and "L(N,D)" in out


@pytest.mark.parametrize("argv, message", [
    (["/no/such/folder", "--law", "kaplan"], "no results folder"),
    (["{empty}", "--law", "kaplan"], "no runs under"),
    (["{kaplan}", "--law", "chinchilla", "--approach", "2"], "flops_budget"),
    (["{kaplan}", "--law", "nope"], "invalid choice"),
    (["{kaplan}", "--approach", "2"], "--approach applies to --law chinchilla only"),
    (["{kaplan}", "--law", "kaplan", "--approach", "2"], "chinchilla only"),
    (["{kaplan}", "--law", "kaplan", "--bootstrap", "-1"], "bootstrap"),
])
def test_fit_command_user_mistakes_exit_2_with_one_line(results, tmp_path, capsys, argv, message):
    argv = [a.format(empty=tmp_path, kaplan=results / "kaplan") for a in argv]
    assert fit_command(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("scaling fit: error:")
    assert message in captured.err


def test_table_command_user_mistakes_and_help(tmp_path, capsys):
    assert table_command([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scaling table: error: no results folder")
    assert table_command(["--help"]) == 0
    assert "usage: scaling table" in capsys.readouterr().out


def test_a_corrupt_record_is_one_warning_line(tmp_path, capsys):
    history = isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=3)
    sweep = write_records(history, tmp_path)
    bad = next((sweep / "runs").iterdir()) / "history.parquet"
    bad.write_bytes(b"not parquet at all")
    assert fit_command([str(sweep), "--law", "chinchilla", "--approach", "2", "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: skipping unreadable record") and str(bad) in err


def test_fit_chinchilla_table_row_matches_fit():
    points = isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15, 1e16], n_sizes=5, n_evals=3)
    fit = fit_chinchilla(points.groupby("run_id").tail(1), approach=2, bootstrap=0)
    frame = tables.fits_frame(fit).set_index("parameter")
    assert frame.loc["a", "value"] == fit.params["a"] and frame.loc["a", "law"] == "Chinchilla approach 2"


def test_table_command_compares_the_fitted_floor_and_locates_transitions(capsys):
    """On the shipped records: the synthetic sweep's approach-3 E against its val_loss_optimal, and
    the emergence sweep's transitions table (one row per task and metric)."""
    root = Path(__file__).resolve().parents[1] / "results"
    assert table_command([str(root / "synthetic"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    truth = out.split("## Fits against the known answers")[1].split("##")[0]
    assert "| E | 1.255 |" in truth and "val_loss_optimal" not in truth
    assert table_command([str(root / "emergence"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    transitions = out.split("## Transitions")[1]
    assert transitions.count("| exact_match |") == 5 and transitions.count("| target_logprob |") == 5


def test_shipped_induction_sweep_copying_emerges_from_two_layers_and_addition_in_the_cool_down(capsys):
    """The shipped induction sweep (seed 0 at 1, 2 and 3 layers, seeds 1 and 2 at 2 and 3): every
    curve starts within 5 points of chance; copying crosses halfway to perfect exact match along the
    training of every run with two or more layers and ends past 50%, the 1-layer run does not;
    reversed-digit addition crosses in three of those six runs, each after the cool-down began
    (step 2343). At two layers the seeds cross further apart than one run's item interval is wide,
    which is why the seed spread is printed beside it."""
    from analysis import emergence as em
    from analysis.records import load_history

    root = Path(__file__).resolve().parents[1] / "results" / "induction"
    history = load_history(root)
    assert history["run_id"].nunique() == 7
    along = em.transitions(history, x="step", metrics=("exact_match",), by="run_id", n_boot=100)
    crossed = along.loc[np.isfinite(along["x"].to_numpy(float))]
    deep = set(history.loc[history["n_layer"] >= 2, "run_id"])
    assert set(crossed.loc[crossed["task"] == "copy", "run_id"]) == deep and len(deep) == 6
    addition = crossed.loc[crossed["task"] == "addition_reversed"]
    assert set(addition["run_id"]) == {"L2-d64-t6e6-s0-c318fe22", "L3-d64-t6e6-s0-0929fe0a", "L3-d64-t6e6-s1-cd73010c"}
    assert (addition["x"] > 2343).all()
    for run, curve in history.sort_values("step").groupby("run_id"):
        for task in ("copy", "addition_reversed"):
            score, chance = curve[f"probe/{task}/exact_match"], curve[f"probe/{task}/chance_exact_match"]
            assert score.iloc[1] - chance.iloc[1] < 0.05 and (curve[f"probe/{task}/items"] == 500).all()
            ends_past = ((crossed["run_id"] == run) & (crossed["task"] == task)).any()
            assert (score.iloc[-1] >= 0.5) == ends_past
    spread = em.seed_spread(along).set_index(["cell", "task"])
    for cell in ("L2-d64-t6e6", "L3-d64-t6e6"):
        assert spread.loc[(cell, "copy"), "seeds"] == spread.loc[(cell, "copy"), "crossed"] == 3
    assert spread.loc[("L2-d64-t6e6", "copy"), "sd"] > spread.loc[("L2-d64-t6e6", "copy"), "item_interval"]
    assert spread.loc[("L3-d64-t6e6", "addition_reversed"), "crossed"] == 2
    assert table_command([str(root), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "9 of 14 (run, task) pairs cross" in out and "| L3-d64-t6e6 | copy | 3 | 3 |" in out


def test_shipped_formats_and_spans_sweeps():
    """Only the scratchpad format crosses halfway (direct and reversed stay below it), in the 2-layer
    model (the 3-layer one ends just below, at 45%); copying crosses at every span length in both
    models, each crossing between two evaluations; key-value recall crosses at no number of pairs."""
    from analysis import emergence as em
    from analysis.records import load_history

    root = Path(__file__).resolve().parents[1] / "results"
    for sweep, crossing, runs in (("formats", {"addition_scratchpad"}, {"L2"}),
                                  ("spans", {"copy_3", "copy_6", "copy_12"}, {"L2", "L3"}), ("recall", set(), set())):
        along = em.transitions(load_history(root / sweep), x="step", metrics=("exact_match",), by="run_id",
                               n_boot=50)
        crossed = along.loc[np.isfinite(along["x"].to_numpy(float))]
        assert set(zip(crossed["run_id"].str[:2], crossed["task"])) == {(r, t) for r in runs for t in crossing}
        assert ((crossed["between_low"] < crossed["x"]) & (crossed["x"] < crossed["between_high"])).all()


def test_shipped_scratchpad_sweep_pays_off_at_both_lengths_from_two_layers():
    """Addition at 1-2 and at 3 digits, direct and with a scratchpad, on 1, 2 and 3 layers: only the
    scratchpad crosses halfway, at both lengths and only in the 2- and 3-layer models; direct output
    ends below 20% everywhere, and the 1-layer model gets no exact match from the scratchpad."""
    from analysis import emergence as em
    from analysis.records import load_history

    history = load_history(Path(__file__).resolve().parents[1] / "results" / "scratchpad")
    along = em.transitions(history, x="step", metrics=("exact_match",), by="run_id", n_boot=50)
    crossed = along.loc[np.isfinite(along["x"].to_numpy(float))]
    assert set(zip(crossed["run_id"].str[:2], crossed["task"])) == {
        (layers, task) for layers in ("L2", "L3") for task in ("scratchpad_2", "scratchpad_3")}
    for run, curve in history.sort_values("step").groupby("run_id"):
        final = curve.dropna(subset=["probe/direct_2/exact_match"]).iloc[-1]
        assert (final["probe/direct_2/items"], final["probe/direct_3/items"]) == (500, 500)
        assert final["probe/direct_2/exact_match"] < 0.2 and final["probe/direct_3/exact_match"] < 0.2
        if run.startswith("L1"):
            assert final["probe/scratchpad_2/exact_match"] < 0.05 and final["probe/scratchpad_3/exact_match"] < 0.05
