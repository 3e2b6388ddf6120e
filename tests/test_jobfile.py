"""The resolved spec crosses the process boundary: a launcher writes runs/<run_id>/spec.json and the
run's process trains from it, so editing or deleting the sweep file while runs are queued changes
nothing for them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import tiny_sweep
from test_branch import branched_sweep
from scaling import records
from scaling.config import ConfigError
from scaling.launch import jobfile
from scaling.sweep import load_sweep

def test_a_job_survives_its_file_with_the_plan_it_needs(tmp_path):
    sweep = load_sweep(branched_sweep(tmp_path))
    jobs = jobfile.jobs_of(sweep, sweep.runs)
    trunk = next(j for j in jobs if j.branches)
    assert len(trunk.branches) == 2 and all(j.branch.trunk == trunk.spec.run_id for j in jobs if j is not trunk)
    for job in jobs:
        again = jobfile.read(jobfile.write(job))
        assert again == job and again.spec.run_id == job.spec.run_id and again.plan == job.plan
    assert trunk.path.parent.name == trunk.spec.run_id and trunk.path.name == "spec.json"


def test_a_spec_file_of_another_version_or_broken_is_refused(tmp_path):
    sweep = load_sweep(tiny_sweep(tmp_path))
    (job,) = jobfile.jobs_of(sweep, sweep.runs[:1])
    path = jobfile.write(job)
    doc = json.loads(path.read_text())
    doc["spec"]["optim"]["lr"] = 1.0  # what another version (or a hand edit) would hash differently
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="hashes to .* not " + job.spec.run_id):
        jobfile.read(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable spec file"):
        jobfile.read(path)
    with pytest.raises(ConfigError, match="no such file"):
        jobfile.read(tmp_path / "missing.json")


def test_queued_runs_train_what_was_launched_after_the_sweep_file_is_edited_then_deleted(tmp_path, monkeypatch):
    """Two runs one at a time: while the first trains, the sweep file is edited (which would give
    other runs) and then deleted; the second still starts, from its spec, with its own run id."""
    monkeypatch.chdir(tmp_path)  # where the sweep is started from: its data paths' base
    path = tiny_sweep(tmp_path, tokens=60_000, more_models=", { n_layer = 1, d_model = 32 }")
    runs = load_sweep(path).runs
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "sweep", str(path), "-q"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob("runs/*/history.parquet")) and time.monotonic() < deadline:
        time.sleep(0.1)
    path.write_text(path.read_text().replace("lr = 0.003", "lr = 0.01"))
    assert {s.run_id for s in load_sweep(path).runs}.isdisjoint({s.run_id for s in runs})
    path.unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for spec in runs:
        folder = records.run_dir(tmp_path / "out", spec.run_id)
        assert pq.read_table(folder / "summary.parquet").column("status")[0].as_py() == "complete"
        assert jobfile.read(folder / "spec.json").spec == spec
