"""Learning rates tuned per size: the tuning stage picks the known optimum, the rule resolves
`lr = "tuned"` per size, and tuning records never enter a grid's fits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.fit import fit_kaplan
from analysis.tuning import best_lrs, fit_lr_rule, write_rule
from analysis_fakes import KaplanLaw, kaplan_records
from conftest import tiny_sweep
from scaling.config import ConfigError
from scaling.flops import param_counts
from scaling.sweep import load_sweep
from scaling.sweep.pack_plan import pack_key
from scaling.sweep.tuning import RULE_FILE, TuneConfig, beyond_edges, tune_dir, tune_runs

LRS = [1e-3 * 2 ** k for k in range(7)]  # 1e-3 .. 6.4e-2: 64x


def _table(sizes, truth, curvature=0.05):
    """Final loss of a run as a parabola in ln(lr) around the true optimum of its size."""
    return pd.DataFrame([{"n_params_nonembed": n, "lr_peak": lr, "lr": lr / 10, "status": "complete",
                          "val_loss": 3.0 - 0.2 * np.log10(n) + curvature * np.log(lr / truth(n)) ** 2}
                         for n in sizes for lr in LRS])


def test_the_tuning_stage_picks_the_known_optimum_and_its_power_law():
    truth = lambda n: 0.02 * (n / 1e5) ** -0.35
    sizes = [1e4, 3e4, 1e5, 3e5]
    best = best_lrs(_table(sizes, truth))
    assert best["interior"].all()
    assert np.allclose(best["lr"], [truth(n) for n in sizes], rtol=1e-6)  # the vertex of an exact parabola
    rule = fit_lr_rule(best, bootstrap=200)
    assert rule["exponent"] == pytest.approx(-0.35, abs=1e-6)
    lo, hi = rule["intervals"]["exponent"]
    assert lo <= -0.35 <= hi


def test_an_optimum_at_the_grid_edge_is_flagged():
    best = best_lrs(_table([1e5], lambda n: 1e-4))  # far below the grid's smallest lr
    assert not best["interior"].iloc[0] and best["lr"].iloc[0] == LRS[0]


def test_tuning_records_never_enter_a_grids_fits():
    grid = kaplan_records(KaplanLaw(), n_params_nonembed=[1e4, 1e5, 1e6], tokens=[1e7, 1e8], n_evals=3)
    tune = grid.assign(stage="tune", run_id=grid["run_id"] + "-tune", val_loss=grid["val_loss"] * 3)
    both = pd.concat([grid.assign(stage="main"), tune], ignore_index=True)
    alone, mixed = fit_kaplan(grid, laws=["L(N)"], bootstrap=0), fit_kaplan(both, laws=["L(N)"], bootstrap=0)
    assert mixed["L(N)"].params == alone["L(N)"].params
    assert (mixed["L(N)"].dropped["reason"] == "a tuning run (stage = tune)").sum() == tune["run_id"].nunique()


def test_a_best_at_the_edge_of_what_was_tried_gets_one_step_beyond():
    tried = {100: [1e-3, 2e-3, 4e-3], 200: [1e-3, 2e-3, 4e-3], 300: [1e-3, 2e-3, 4e-3, 8e-3]}
    more = beyond_edges(tried, {100: 1e-3, 200: 2e-3, 300: 8e-3})
    assert more == {100: [pytest.approx(5e-4)], 300: [pytest.approx(1.6e-2)]}  # 200 is interior: nothing


def test_tune_config_refuses_a_grid_that_cannot_locate_an_optimum():
    with pytest.raises(ValueError, match="at least 5 distinct"):
        TuneConfig(lrs=(1e-3, 2e-3, 4e-3))
    with pytest.raises(ValueError, match="span of at least 8x"):
        TuneConfig(lrs=(1e-3, 1.2e-3, 1.5e-3, 2e-3, 3e-3))
    with pytest.raises(ValueError, match="> 0"):
        TuneConfig(lrs=(-1e-3, 1e-3, 2e-3, 4e-3, 8e-3), fraction=0.5)


TUNED = """
[tune]
lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
fraction = 0.5
widen = 0
"""


def _tuned_sweep(tmp_path):
    path = tiny_sweep(tmp_path, more_models=", { n_layer = 1, d_model = 32 }", tokens=6400)
    path.write_text(path.read_text().replace("lr = 0.003", 'lr = "tuned"') + TUNED)
    return path


def test_lr_tuned_resolves_per_size_from_the_saved_rule_and_says_so(tmp_path):
    path = _tuned_sweep(tmp_path)
    with pytest.raises(ConfigError, match=r'optimizer.lr: "tuned" needs the rule that `scaling tune'):
        load_sweep(path)
    rule = {"format": 1, "param_count": "n_params_nonembed", "n_ref": 1e4, "lr_ref": 5e-3, "exponent": -0.5}
    write_rule(tune_dir(tmp_path / "out") / RULE_FILE, rule)
    sweep = load_sweep(path)
    for spec in sweep.runs:
        n = param_counts(**spec.model.__dict__).n_params_nonembed
        assert spec.lr_source == "tuned" and spec.optim.lr == pytest.approx(5e-3 * (n / 1e4) ** -0.5)
    assert len({s.optim.lr for s in sweep.runs}) == 2


def test_tuning_runs_are_every_size_at_every_lr_packable_per_size(tmp_path):
    sweep = load_sweep(_tuned_sweep(tmp_path), for_tuning=True)
    runs = tune_runs(sweep.runs, sweep.tune)
    assert len(runs) == 2 * 5 and {r.stage for r in runs} == {"tune"}
    assert {r.train.tokens for r in runs} == {3200}  # half of each size's 6400 tokens, whole batches
    assert len({pack_key(r) for r in runs}) == 2  # one pack per size: they differ only in lr
    # Each warms up over as many steps as the grid run it tunes for (50 steps x 0.05), not its own 25 x 0.05.
    assert {r.optim.warmup_steps for r in runs} == {round(0.05 * 50)} and {r.steps for r in runs} == {25}


def test_scaling_tune_trains_packs_saves_the_rule_and_the_sweep_then_uses_it(tmp_path):
    path = _tuned_sweep(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "scaling", "tune", str(path), "-q", "--bootstrap", "50"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "complete 10" in proc.stdout and "LR*(N) =" in proc.stdout
    folder = tune_dir(tmp_path / "out")
    rule = json.loads((folder / RULE_FILE).read_text())
    assert len(rule["per_size"]) == 2 and (folder / "figures" / "lr_tuning.png").exists()
    summaries = [pq.read_table(p).to_pylist()[0] for p in folder.glob("runs/*/summary.parquet")]
    assert {(s["stage"], s["lr_source"], s["pack_size"]) for s in summaries} == {("tune", "fixed", 5)}
    assert sorted({s["lr_peak"] for s in summaries}) == [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    sweep = load_sweep(path)
    assert all(s.lr_source == "tuned" for s in sweep.runs)
    dry = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(path), "--dry-run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr


def test_scaling_tune_without_a_tune_table_is_one_line_exit_2(tmp_path, capsys):
    from scaling.cli import main
    path = tiny_sweep(tmp_path)
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"scaling: {path}: tune: no [tune] table")
    assert not (tmp_path / "out").exists()
