"""Seeds in a fit (analysis.seeds): cells count once, and the two-stage bootstrap (cells, then seeds
within them) covers the truth at about its nominal rate when seeds share their cell's deviation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.fit import fit_chinchilla, fit_kaplan, fit_power_law
from analysis.fit_result import resample_counts
from analysis.seeds import cell_codes, cell_means, cell_weights, two_stage_counts

ALPHA, N_C = 0.076, 8.8e13  # Kaplan et al. 2020's L(N)
SIZES = np.geomspace(1e4, 1e7, 8)


def _records(rng, seeds=3, cell_sd=0.02, seed_sd=0.02) -> pd.DataFrame:
    """Final rows of a grid following L(N) exactly, times exp(cell deviation + seed deviation): the
    seeds of one cell share its deviation (a shape, a data order), as real replicas do."""
    rows = []
    for i, n in enumerate(SIZES):
        shared = rng.normal(0, cell_sd)
        for s in range(seeds):
            rows.append({"run_id": f"r{i}-{s}", "seed": s, "status": "complete", "step": 100,
                         "n_params_nonembed": n, "n_params": 2 * n, "tokens": 1e9, "flops_6nd": 6e9 * n,
                         "flops": 7e9 * n, "val_loss": (N_C / n) ** ALPHA * np.exp(shared + rng.normal(0, seed_sd))})
    return pd.DataFrame(rows)


def test_cells_count_once_and_fit_the_mean_of_their_seeds():
    records = _records(np.random.default_rng(0))
    fit = fit_kaplan(records, laws=["L(N)"], bootstrap=0)["L(N)"]
    means = cell_means(records, cell_codes(records, ["n_params_nonembed", "tokens"]), "val_loss")
    assert list(means["n_seeds"]) == [3] * len(SIZES)
    on_means = fit_power_law(means["n_params_nonembed"], means["val_loss"], bootstrap=0, x_name="N")
    assert fit.params["alpha_N"] == pytest.approx(on_means.params["alpha_N"], rel=1e-10)
    assert fit.settings["cells"] == len(SIZES)


def test_with_one_seed_per_cell_the_bootstrap_is_the_one_stage_bootstrap():
    codes = np.arange(7)
    assert np.array_equal(two_stage_counts(codes, 50, 3), resample_counts(7, 50, 3))
    assert np.array_equal(cell_weights(np.array([0, 0, 1, 2, 2, 2])), [0.5, 0.5, 1, 1 / 3, 1 / 3, 1 / 3])


def test_a_subset_of_cells_is_resampled_over_its_own_cells_only():
    # Codes of a subset keep gaps (cells 3 and 7 of a larger grid): no weight may go to absent cells.
    w = two_stage_counts(np.array([3, 3, 7]), 200, 0)
    assert np.allclose(w.sum(axis=1), 2)


def test_two_stage_weights_keep_each_drawn_cell_whole():
    codes = np.array([0, 0, 1, 1, 2])
    w = two_stage_counts(codes, 400, 0)
    cell_total = np.stack([w[:, codes == c].sum(axis=1) for c in range(3)], axis=1)
    assert np.allclose(cell_total, resample_counts(3, 400, 0))  # a cell's weight is how often it was drawn
    assert (w[:, 0] != w[:, 1]).any()  # ... shared unequally between its seeds


def _coverage(fit_of, n_datasets=150):
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(n_datasets):
        lo, hi = fit_of(_records(rng)).intervals["alpha_N"]
        hits.append(lo <= ALPHA <= hi)
    return float(np.mean(hits))


def test_the_seed_aware_bootstrap_covers_the_truth_at_about_its_nominal_rate():
    seed_aware = _coverage(lambda r: fit_kaplan(r, laws=["L(N)"], bootstrap=300)["L(N)"])
    # Treating the 24 runs as 24 independent points (pseudo-replication) ignores that seeds share
    # their cell's deviation: its intervals are too narrow.
    naive = _coverage(lambda r: fit_power_law(r["n_params_nonembed"], r["val_loss"], bootstrap=300, x_name="N"))
    assert 0.88 <= seed_aware <= 0.995, seed_aware
    assert naive < seed_aware - 0.1, (naive, seed_aware)


def test_approaches_2_and_3_average_seeds_per_cell():
    rng = np.random.default_rng(2)
    rows = []
    for c, budget in enumerate([1e18, 1e19, 1e20]):
        for n in np.geomspace(1e7, 1e9, 6) * 3 ** c:
            d = budget / (6 * n)
            base = 1.7 + 400 / n ** 0.34 + 410 / d ** 0.28
            for s in range(2):
                rows.append({"run_id": f"{c}-{n:.0f}-{s}", "seed": s, "status": "complete", "n_params": n,
                             "n_params_nonembed": n, "tokens": d, "flops_budget": budget,
                             "val_loss": base * np.exp(rng.normal(0, 0.004))})
    runs = pd.DataFrame(rows)
    two = fit_chinchilla(runs, approach=2, bootstrap=100)
    assert set(two.data["n_sizes"]) == {6} and set(two.data["n_runs"]) == {12}
    three = fit_chinchilla(runs, approach=3, bootstrap=50, sensitivity=False)
    assert len(three.data) == 18 and set(three.data["n_seeds"]) == {2}
    lo, hi = three.intervals["a"]
    assert lo <= three.params["a"] <= hi
