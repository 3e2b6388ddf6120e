"""[replicate]: more seeds at chosen runs, or at each IsoFLOP budget's minimum once it is known.
A replica is its run with another seed and nothing else changed (the shared warmup of a branched
sweep included), and `scaling sweep` trains the minima's replicas after the grid."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from conftest import write_sweep
from scaling import records
from scaling.config import ConfigError
from scaling.sweep import load_sweep

ISO = """
[sweep]
name = "iso"
out_dir = "{out}"
[data]
seq_len = 16
[model]
head_dim = 8
[schedule]
kind = "wsd"
warmup = 0.02
branch = true
[train]
batch_tokens = 128
eval_points = 3
eval_sequences = 8
checkpoint_every = 50
[isoflop]
budgets = [4e8, 8e8]
tokens_per_param = [0.1, 10000]
min_steps = 10
models = [{{ n_layer = 1, d_model = 8 }}, {{ n_layer = 1, d_model = 16 }}, {{ n_layer = 1, d_model = 24 }}]
{replicate}
"""


def _iso(tmp_path, replicate):
    return write_sweep(tmp_path / "iso.toml", ISO.format(out=tmp_path / "out", replicate=replicate))


def _main(sweep):
    return [s for s in sweep.runs if s.seed == 0]


def test_patterns_replicate_the_matching_runs_with_nothing_but_the_seed_changed(tmp_path):
    sweep = load_sweep(_iso(tmp_path, '[replicate]\nseeds = [1, 2]\nat = ["d_model=16"]'))
    main, extra = _main(sweep), [s for s in sweep.runs if s.seed != 0]
    chosen = [s for s in main if s.model.d_model == 16]
    assert len(extra) == 2 * len(chosen) == 4
    for spec in extra:
        twin = next(s for s in chosen if s.train.tokens == spec.train.tokens)
        assert dataclasses.replace(spec, seed=0) == twin  # the shared warmup of the branched group too
    assert len({s.run_id for s in sweep.runs}) == len(sweep.runs)


def _finish(out_dir, spec, loss):
    row = {**records.base_row(spec), "status": "complete", "val_loss": loss, "step": spec.steps}
    records.write_rows(records.run_dir(out_dir, spec.run_id) / "summary.parquet", [row])


def test_minima_appear_once_every_run_of_a_budget_is_done(tmp_path):
    path = _iso(tmp_path, '[replicate]\nseeds = [7]\nat = "minima"')
    sweep = load_sweep(path)
    assert all(s.seed == 0 for s in sweep.runs)  # nothing has run: no minimum is known
    low = [s for s in sweep.runs if s.flops_budget == 4e8]
    for i, spec in enumerate(low[:-1]):
        _finish(sweep.out_dir, spec, 3.0 - 0.1 * i)
    assert len(load_sweep(path).runs) == len(sweep.runs)  # one run of the budget still to finish
    _finish(sweep.out_dir, low[-1], 2.5)
    replicas = [s for s in load_sweep(path).runs if s.seed == 7]
    assert replicas == [dataclasses.replace(low[-1], seed=7)]  # the budget's least loss


@pytest.mark.parametrize("table, key, message", [
    ('[replicate]\nseeds = [0]\nat = "minima"', "replicate.seeds", "already every run's"),
    ('[replicate]\nseeds = [1]\nat = "lowest"', "replicate.at", 'expected "minima"'),
    ('[replicate]\nseeds = [1]\nat = ["d_model"]', "replicate.at", "key=value"),
    ('[replicate]\nseeds = []\nat = "minima"', "replicate.seeds", "non-empty"),
    ('[replicate]\nseeds = [1]\nat = "minima"\nwhere = 1', "replicate.where", "unknown"),
])
def test_bad_replicate_tables_are_one_line_errors_naming_the_key(tmp_path, table, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep(_iso(tmp_path, table))
    assert info.value.key == key


def test_minima_need_an_isoflop_grid(tmp_path):
    text = ISO.format(out=tmp_path / "out", replicate='[replicate]\nseeds = [1]\nat = "minima"')
    text = text.split("[isoflop]")[0] + '[grid]\nmodels = [{ n_layer = 1, d_model = 8 }]\ntokens = [3200]\n' \
        + '[replicate]\nseeds = [1]\nat = "minima"\n'
    with pytest.raises(ConfigError, match="IsoFLOP"):
        load_sweep(write_sweep(tmp_path / "k.toml", text))


def test_scaling_sweep_trains_the_grid_then_each_budgets_minimum_again(tmp_path):
    path = _iso(tmp_path, '[replicate]\nseeds = [1]\nat = "minima"')
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(path), "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 replica(s) at the runs the grid's results name" in proc.stdout
    sweep = load_sweep(path)
    assert len([s for s in sweep.runs if s.seed == 1]) == 2
    assert all(records.read_status(records.run_dir(sweep.out_dir, s.run_id)) == "complete" for s in sweep.runs)
    again = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(path), "-q"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "replica" not in again.stdout  # a rerun has nothing to do
