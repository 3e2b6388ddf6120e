"""analysis.emergence: transitions recover a known midpoint; figures draw; the optimal-loss gap."""

import io
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure

from analysis import emergence as em


def test_isotonic_pools_adjacent_violators():
    np.testing.assert_allclose(em.isotonic([1, 3, 2, 4]), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(em.isotonic([3, 2, 1]), [2, 2, 2])
    np.testing.assert_allclose(em.isotonic([1, 3, 2], weights=[1, 3, 1]), [1, 2.75, 2.75])


def _sigmoid_runs(midpoint=1e5, noise=0.03, seed=0, chance=0.1):
    rng = np.random.default_rng(seed)
    x = np.repeat(np.geomspace(1e3, 1e7, 13), 3)
    y = chance + (1 - chance) / (1 + np.exp(-3 * (np.log10(x) - np.log10(midpoint)))) + rng.normal(0, noise, len(x))
    return x, y


def test_transition_recovers_the_midpoint_with_an_interval():
    x, y = _sigmoid_runs()
    tr = em.locate_transition(x, y, chance=0.1, best=1.0, n_boot=300, metric="exact_match")
    assert tr.threshold == pytest.approx(0.55)
    assert abs(math.log10(tr.x) - 5) < 0.1 and not tr.censored
    assert tr.ci_low < 1e5 < tr.ci_high and tr.ci_high / tr.ci_low < 10
    assert tr.crossed_fraction == 1.0 and "crosses" in str(tr)


def test_transition_of_a_metric_that_improves_downwards():
    # Edit distance falls from chance 4 to 0; halfway (2) is reached at x = 100 (linear in log x).
    x = np.array([1, 10, 100, 1000, 10000.0])
    y = np.array([4, 3, 2, 1, 0.0])
    tr = em.locate_transition(x, y, chance=4.0, best=0.0, n_boot=0)
    assert tr.x == pytest.approx(100.0)


def test_no_transition_and_censored():
    x = np.geomspace(1, 1e4, 5)
    flat = em.locate_transition(x, np.full(5, 0.1), chance=0.1, best=1.0, n_boot=50)
    assert math.isnan(flat.x) and flat.crossed_fraction == 0.0 and "no transition" in str(flat)
    early = em.locate_transition(x, np.full(5, 0.9), chance=0.1, best=1.0, n_boot=0)
    assert early.censored and early.x == 1.0


def _history():
    rows = []
    for n_params, midpoint in ((1e4, 3e13), (1e5, 1e13), (1e6, 3e12)):
        for step in (1, 10, 100):
            flops = 6 * n_params * step * 1e4
            acc = 1 / (1 + (midpoint / flops) ** 2)
            rows.append({"run_id": f"r{n_params:g}", "n_params": n_params, "step": step, "flops": flops,
                         "tokens": step * 1e4, "target_tokens": 1e6, "val_loss": 3 - 0.3 * math.log10(flops / 1e9),
                         "val_entropy": 2.0, "val_ece": 0.05, "val_loss_optimal": 1.0,
                         "probe/add/exact_match": acc, "probe/add/chance_exact_match": 0.01,
                         "probe/add/target_logprob": -3 * (1 - acc), "probe/add/chance_target_logprob": -2.4})
    return pd.DataFrame(rows)


def test_transitions_table_and_figures():
    hist = _history()
    runs = hist.sort_values("step").groupby("run_id").tail(1)
    table = em.transitions(runs, x="n_params", n_boot=50)
    assert set(table["task"]) == {"add"} and set(table["metric"]) == {"exact_match", "target_logprob"}
    exact = table.set_index("metric").loc["exact_match"]
    assert 1e4 < exact["x"] < 1e6 and exact["chance"] == 0.01
    assert em.probe_tasks(hist) == ["add"]
    figures = [em.emergence_figure(hist, "add"), em.confidence_figure(runs)]
    calibration = pd.DataFrame([{"run_id": r, "step": s, "bin": b, "bin_lower": b / 15, "bin_upper": (b + 1) / 15,
                                 "count": 10.0, "confidence": (b + 0.5) / 15, "accuracy": min(1, (b + 2) / 15)}
                                for r in runs["run_id"] for s in (1, 100) for b in range(15)])
    figures.append(em.reliability_figure(calibration, runs))
    for fig in figures:
        assert isinstance(fig, Figure)
        fig.savefig(io.BytesIO(), format="png")
    assert len(figures[0].axes) >= 6


def _calibration(run_ids, steps=(1, 100)):
    return pd.DataFrame([{"run_id": r, "step": s, "bin": b, "bin_lower": b / 15, "bin_upper": (b + 1) / 15,
                          "count": 10.0, "confidence": (b + 0.5) / 15, "accuracy": min(1, (b + 2) / 15)}
                         for r in run_ids for s in steps for b in range(15)])


def test_make_plots_draws_emergence_confidence_and_reliability(tmp_path):
    from analysis import make_plots
    hist = _history().assign(sweep="emergence", grid="kaplan", n_params_nonembed=lambda f: f["n_params"])
    for run_id, rows in hist.groupby("run_id"):
        folder = tmp_path / "emergence" / "runs" / run_id
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(rows.assign(status="running"), preserve_index=False),
                       folder / "history.parquet")
        pq.write_table(pa.Table.from_pandas(rows.tail(1).assign(status="complete"), preserve_index=False),
                       folder / "summary.parquet")
        pq.write_table(pa.Table.from_pandas(_calibration([run_id]), preserve_index=False),
                       folder / "calibration.parquet")
    written = make_plots.sweep_figures(tmp_path / "emergence", bootstrap=0)
    names = {p.stem for p in written}
    assert {"learning_curves", "emergence_add", "confidence", "reliability"} <= names
    assert all(p.stat().st_size > 0 for p in written)


def test_load_calibration_reads_every_run(tmp_path):
    for run in ("a", "b"):
        path = tmp_path / "runs" / run
        path.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([{"run_id": run, "step": 1, "bin": 0, "count": 3.0}]),
                       path / "calibration.parquet")
    frame = em.load_calibration(tmp_path)
    assert sorted(frame["run_id"]) == ["a", "b"]


def test_optimal_loss_gap():
    runs = pd.DataFrame({"val_loss_optimal": [1.5, 1.5], "val_loss": [1.9, 1.7]})
    gap = em.optimal_loss_gap(1.6, runs)
    assert gap.gap == pytest.approx(0.1) and gap.relative == pytest.approx(0.1 / 1.5)
    assert gap.best_observed == 1.7 and gap.n_runs == 2 and "+0.1000" in str(gap)
    with pytest.raises(ValueError):
        em.optimal_loss_gap(1.0, pd.DataFrame({"val_loss": [2.0]}))


def _learning_curves(midpoints, *, items=500, seed=0, chance=0.02, steps=np.arange(50, 2001, 50)):
    """History rows of runs whose exact match jumps along training (a logistic in step of width
    60 about each run's midpoint; None: never learnt), scored on `items` items (binomial noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, mid in enumerate(midpoints):
        p = np.full(len(steps), chance) if mid is None else chance + (1 - chance) / (1 + np.exp(-(steps - mid) / 60))
        rows.append(pd.DataFrame({"run_id": f"run{i}", "step": steps, "probe/copy/exact_match":
                                  rng.binomial(items, p) / items, "probe/copy/chance_exact_match": chance,
                                  "probe/copy/items": items}))
    return pd.concat(rows, ignore_index=True)


def test_transitions_along_training_find_each_runs_step_with_item_noise():
    history = _learning_curves([600, 1300, None])
    table = em.transitions(history, x="step", metrics=("exact_match",), by="run_id", n_boot=300).set_index("run_id")
    assert list(table.index) == ["run0", "run1", "run2"]
    for run, mid in (("run0", 600), ("run1", 1300)):
        row = table.loc[run]
        # Within one evaluation interval (50 steps) of the truth: the resolution the evaluations allow.
        assert abs(row["x"] - mid) < 30 and row["ci_low"] - 50 <= mid <= row["ci_high"] + 50
        assert row["ci_high"] - row["ci_low"] < 60  # 500 items pin a jump this sharp to within a few evaluations
        assert row["crossed_fraction"] == 1.0 and not row["censored"]
    assert math.isnan(table.loc["run2", "x"]) and table.loc["run2", "crossed_fraction"] == 0
    # Fewer items, noisier scores: the interval of the same jump widens.
    few = em.transitions(_learning_curves([600], items=20), x="step", metrics=("exact_match",), by="run_id",
                         n_boot=300).iloc[0]
    assert few["ci_high"] - few["ci_low"] > table.loc["run0", "ci_high"] - table.loc["run0", "ci_low"]


def test_locate_transition_on_any_table():
    """Not only this tool's records: scores a user brings (say public models' accuracy against
    training FLOPs), with no run ids and no probe columns."""
    flops = np.geomspace(1e20, 1e24, 9)
    accuracy = np.array([0.25, 0.26, 0.25, 0.27, 0.31, 0.62, 0.78, 0.84, 0.86])  # 4-way choice: chance 0.25
    tr = em.locate_transition(flops, accuracy, chance=0.25, best=1.0, n_items=1000, metric="accuracy")
    assert 10 ** 22.5 < tr.x < 10 ** 23 and tr.ci_low <= tr.x <= tr.ci_high and not tr.censored
    assert "accuracy: crosses 0.625" in str(tr)


def test_transition_figure_on_a_table_a_user_brings(tmp_path):
    """The figure too takes any table: made-up accuracies of two model families against training
    FLOPs (no run ids, probe columns or records), the transition drawn where locate_transition puts
    it, its interval shaded; a column the table lacks is a one-line error naming it."""
    flops = np.geomspace(1e20, 1e24, 9)
    table = pd.DataFrame({"family": ["a"] * 9 + ["b"] * 9, "train_flops": np.concatenate([flops, flops * 1.5]),
                          "accuracy": [0.25, 0.26, 0.25, 0.27, 0.31, 0.62, 0.78, 0.84, 0.86,
                                       0.24, 0.25, 0.27, 0.26, 0.29, 0.55, 0.74, 0.83, 0.88]})
    fig = em.transition_figure(table, x="train_flops", y="accuracy", chance=0.25, group="family", n_boot=200,
                               x_label="Training FLOPs", y_label="Accuracy (4-way choice)")
    ax = fig.axes[0]
    tr = em.locate_transition(table["train_flops"], table["accuracy"], chance=0.25, groups=table["family"], n_boot=200)
    vertical = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
    assert len(vertical) == 1 and vertical[0].get_xdata()[0] == pytest.approx(tr.x)
    assert 10 ** 22.5 < tr.x < 10 ** 23.2 and ax.get_xscale() == "log" and len(ax.patches) == 1  # the interval
    assert ax.get_xlabel() == "Training FLOPs" and [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["a", "b"]
    fig.savefig(tmp_path / "transition.png")
    assert (tmp_path / "transition.png").stat().st_size > 10_000
    flat = em.transition_figure(table.assign(accuracy=0.25), x="train_flops", y="accuracy", chance=0.25, n_boot=20)
    assert not flat.axes[0].patches and "no transition" in flat.axes[0].get_title()
    with pytest.raises(ValueError, match="no column 'score'"):
        em.transition_figure(table, x="train_flops", y="score", chance=0.25)


def test_seed_spread_measures_how_far_the_seed_moves_a_step():
    """Three seeds of one cell cross at 500, 700 and 900 (a seed spread far wider than one run's
    item interval), two seeds of another at 1000 and never: the spread needs two that cross; a cell
    of one seed has no row."""
    history = _learning_curves([500, 700, 900, 1000, None, 800])
    history["run_id"] = history["run_id"].map({
        "run0": "L2-d64-t6e6-s0-aaaa0000", "run1": "L2-d64-t6e6-s1-bbbb1111", "run2": "L2-d64-t6e6-s2-cccc2222",
        "run3": "L3-d64-t6e6-s0-dddd3333", "run4": "L3-d64-t6e6-s1-eeee4444", "run5": "L1-d64-t6e6-s0-ffff5555"})
    along = em.transitions(history, x="step", metrics=("exact_match",), by="run_id", n_boot=200)
    spread = em.seed_spread(along).set_index("cell")
    assert list(spread.index) == ["L2-d64-t6e6", "L3-d64-t6e6"]
    two = spread.loc["L2-d64-t6e6"]
    assert two["seeds"] == 3 and two["crossed"] == 3
    assert two["mean"] == pytest.approx(700, abs=25) and two["range"] == pytest.approx(400, abs=50)
    assert two["sd"] == pytest.approx(200, abs=30) and two["item_interval"] < two["sd"]
    one = spread.loc["L3-d64-t6e6"]
    assert one["seeds"] == 2 and one["crossed"] == 1 and math.isnan(one["sd"]) and one["mean"] == pytest.approx(1000, abs=25)
    assert em.cell_label("L2-d64-t6e6-s12-0a1b2c3d") == "L2-d64-t6e6"
