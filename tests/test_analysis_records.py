"""Reading records: the layout, the unified schema, corrupt files, and no JAX / training imports."""

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fakes import CONTRACT_COLUMNS, ChinchillaLaw, KaplanLaw, isoflop_records, kaplan_records, write_records

from analysis import RecordWarning, load_history, load_runs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    kaplan = kaplan_records(KaplanLaw(), n_params_nonembed=[1e5, 1e6], tokens=[1e7, 1e8], n_evals=5, n_diverged=1)
    iso = isoflop_records(ChinchillaLaw(), budgets=[1e14, 1e15], n_sizes=3, n_evals=4)
    write_records(kaplan, root)
    write_records(iso, root)
    return root, kaplan, iso


def test_load_runs_and_history_read_the_runner_layout(results):
    root, kaplan, iso = results
    runs = load_runs(root / "kaplan")
    history = load_history(root / "kaplan")
    assert len(runs) == kaplan["run_id"].nunique() == 5
    assert runs["run_id"].is_unique
    assert len(history) == len(kaplan)
    assert set(CONTRACT_COLUMNS) <= set(runs.columns)
    # history is sorted by run and step; the summary is each run's last row
    assert history.groupby("run_id")["step"].apply(lambda s: s.is_monotonic_increasing).all()
    last = history.groupby("run_id").tail(1).set_index("run_id").sort_index()
    pd.testing.assert_series_equal(runs.set_index("run_id").sort_index()["val_loss"], last["val_loss"])
    assert set(runs["status"]) == {"complete", "diverged"}
    # the runner writes history rows with status "running"; load_history gives each run's outcome
    assert set(history["status"]) == {"complete", "diverged"}
    diverged = runs.loc[runs["status"] == "diverged", "run_id"].item()
    assert (history.loc[history["run_id"] == diverged, "error"].str.startswith("non-finite loss")).all()
    raw = pd.read_parquet(root / "kaplan" / "runs" / diverged / "history.parquet")
    assert set(raw["status"]) == {"running"}
    assert runs["seed"].dtype == np.int64 and runs["flops"].dtype == np.float64


def test_a_parent_folder_reads_every_sweep(results):
    root, kaplan, iso = results
    runs = load_runs(root)
    assert sorted(runs["sweep"].unique()) == ["chinchilla", "kaplan"]
    assert len(runs) == kaplan["run_id"].nunique() + iso["run_id"].nunique()
    assert runs.loc[runs["sweep"] == "kaplan", "flops_budget"].isna().all()


def test_a_column_only_newer_runs_have_is_kept(tmp_path):
    old = kaplan_records(KaplanLaw(), n_params_nonembed=[1e5], tokens=[1e7, 1e8], n_evals=3)
    old = old.drop(columns=["val_ece", "val_loss_optimal"])  # written by an older runner
    new = kaplan_records(KaplanLaw(), n_params_nonembed=[1e6], tokens=[1e7], n_evals=3, seed=1)
    new["probe/copy/exact_match"] = 0.5
    write_records(old, tmp_path, "mixed")
    write_records(new, tmp_path, "mixed")
    runs = load_runs(tmp_path)
    history = load_history(tmp_path)
    for frame in (runs, history):
        newer = frame["run_id"].isin(new["run_id"])
        assert (frame.loc[newer, "probe/copy/exact_match"] == 0.5).all()
        assert frame.loc[~newer, "probe/copy/exact_match"].isna().all()
        assert frame.loc[~newer, "val_ece"].isna().all() and (frame.loc[newer, "val_ece"] == 0.02).all()


def test_an_int_column_that_became_float_is_promoted(tmp_path):
    frame = kaplan_records(KaplanLaw(), n_params_nonembed=[1e5, 1e6], tokens=[1e7], n_evals=3)
    write_records(frame, tmp_path, "s")
    run_id = frame["run_id"].iloc[0]
    path = tmp_path / "s" / "runs" / run_id / "summary.parquet"
    table = pq.read_table(path)
    index = table.schema.get_field_index("n_devices")
    pq.write_table(table.set_column(index, "n_devices", table["n_devices"].cast(pa.float64())), path)
    runs = load_runs(tmp_path)
    assert len(runs) == 2 and (runs["n_devices"] == 1).all()


def test_a_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path):
    frame = kaplan_records(KaplanLaw(), n_params_nonembed=[1e5, 1e6], tokens=[1e7, 1e8], n_evals=3)
    write_records(frame, tmp_path, "s")
    bad = tmp_path / "s" / "runs" / frame["run_id"].iloc[0] / "summary.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated mid-write by a crash
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(tmp_path)
    record_warnings = [w for w in caught if issubclass(w.category, RecordWarning)]
    assert len(record_warnings) == 1
    assert str(bad) in str(record_warnings[0].message)
    assert len(runs) == 3 and frame["run_id"].iloc[0] not in set(runs["run_id"])


def test_temp_files_of_an_unfinished_write_are_not_read(tmp_path):
    frame = kaplan_records(KaplanLaw(), n_params_nonembed=[1e5], tokens=[1e7], n_evals=3)
    sweep = write_records(frame, tmp_path, "s")
    run_dir = next((sweep / "runs").iterdir())
    (run_dir / ".summary.parquet.x1y2.tmp").write_bytes(b"PAR1 half written")
    (run_dir / ".history.parquet.tmp").write_bytes(b"PAR1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_runs(tmp_path)) == 1
        assert len(load_history(tmp_path)) == len(frame)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results folder"):
        load_runs(tmp_path / "nope")
    assert load_runs(tmp_path).empty and load_history(tmp_path).empty


def test_analysis_imports_no_jax_and_nothing_from_scaling():
    code = ("import sys, analysis, analysis.fit, analysis.plots, analysis.tables, analysis.cli, analysis.make_plots\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'scaling'))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
