"""Overrides from the command line: `--set KEY=VALUE` (read as TOML, checked like the file's own
keys, recorded in each run's spec, in run_id only where it changes what a run computes) and
`--out DIR`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import tiny_sweep
from scaling.cli import main
from scaling.config import ConfigError
from scaling.sweep import load_sweep


def test_a_set_value_is_toml_checked_like_the_files_own_and_recorded(tmp_path):
    path = tiny_sweep(tmp_path)
    plain = load_sweep(path)
    lr = load_sweep(path, overrides=["optimizer.lr=1e-3"])
    assert {s.optim.lr for s in lr.runs} == {1e-3} and lr.runs[0].overrides == ("optimizer.lr=1e-3",)
    assert lr.runs[0].run_id != plain.runs[0].run_id  # it changes what the run computes
    grid = load_sweep(path, overrides=["grid.tokens=[3200, 6400]", "schedule.kind=wsd"])
    assert sorted(s.train.tokens for s in grid.runs) == [3200, 6400]
    assert {s.optim.schedule for s in grid.runs} == {"wsd"}  # not TOML: read as a plain string
    # An execution-only key (how often to checkpoint) leaves the run id alone.
    assert load_sweep(path, overrides=["train.checkpoint_every=7"]).runs[0].run_id == plain.runs[0].run_id


@pytest.mark.parametrize("given, key, message", [
    ("optimizer.lr=-1", "optimizer.lr", "> 0"),
    ("optimizer.nope=1", "optimizer.nope", "unknown"),
    ("grid.tokens=many", "grid.tokens", "expected a list"),
    ("lr", "--set", "expected KEY=VALUE"),
    ("optimizer.lr.x=1", "optimizer.lr", "is not a table"),
])
def test_a_bad_override_is_the_files_one_line_error_naming_its_key(tmp_path, given, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep(tiny_sweep(tmp_path), overrides=[given])
    assert info.value.key == key


def test_the_command_line_refuses_a_bad_set_with_exit_2_and_writes_nothing(tmp_path, capsys):
    path = tiny_sweep(tmp_path)
    assert main(["sweep", str(path), "--set", "train.batch_tokens=0", "--out", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "train.batch_tokens" in err[0]
    assert not (tmp_path / "mine").exists() and not (tmp_path / "out").exists()


def test_out_sends_the_records_elsewhere_and_runs_record_their_overrides(tmp_path):
    path = tiny_sweep(tmp_path)
    mine = tmp_path / "mine"
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(path), "-q", "--out", str(mine),
                           "--set", "train.eval_points=3"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    (config,) = mine.glob("runs/*/config.json")
    assert json.loads(config.read_text())["spec"]["overrides"] == ["train.eval_points=3"]
