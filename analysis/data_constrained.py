"""Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (arXiv 2305.16264): the value of
repeated data.

With U_D unique tokens seen for D tokens in all, R_D = D / U_D - 1 repetitions beyond the first epoch
are worth less than fresh data; the effective data is (eq. 5)

    D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D)),

so a few repetitions count almost fully, and D' never exceeds U_D (1 + R*_D): R*_D is the number of
repetitions after which the value of more decays by 1/e (the paper fits R*_D = 15.4). The loss is
Chinchilla's with D' for D (eq. 6, with N' = N: the analogous excess-parameter decay R*_N is not fitted
here):

    L(N, D, U) = E + A/N^alpha + B/D'^beta.

Fitted as the paper does (Sec. 6, App. A): E, A, B, alpha, beta by approach 3 (analysis.approach3) on
the single-epoch runs (R_D = 0, where D' = D), then R*_D by the same Huber objective on the repeated
runs with those five fixed. The bootstrap resamples whole runs, the single-epoch and the repeated runs
each among themselves (the two stages' data), and refits both stages.

Eq. 5 lets repeated data lose value, never do harm: D' only saturates. Past some number of epochs a
small corpus is overfitted and more training *raises* the loss (the paper's Fig. 3 shows it at
many epochs). Such a run is outside the law, so by default (`overfitted="drop"`) a repeated run
whose loss is above that of a run of the same N and U trained on fewer tokens is left out of the
fit, and listed in `fit.dropped` with the reason; `overfitted="keep"` fits every run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.approach3 import HOFFMANN_GRID, lbfgs, matched_delta_fit, minimise, params_of
from analysis.fit_result import (DEFAULT_BOOTSTRAP, Fit, dropped_frame, intervals_from, log_quality, require,
                                 resample_counts)
from analysis.select import final_rows, param_column, summary_of_dropped, usable

NAMES = ["E", "A", "B", "alpha", "beta", "R_D_star"]
# R*_D is searched over 1e-2..1e4 repetitions in log space: a coarse grid, then a fine one about its best.
LOG10_R_RANGE = (-2.0, 4.0)
COARSE, FINE = 241, 81
CHUNK = 64  # bootstrap rows searched at once
SINGLE_EPOCH = 1 + 1e-9  # epochs at most this: R_D = 0 (float noise in tokens / unique_tokens)


def effective_data(D, U, R_D_star):
    """D' of eq. 5: U_D = min(D, U) unique tokens seen, R_D = D / U_D - 1 repetitions."""
    D, U = np.asarray(D, float), np.asarray(U, float)
    seen = np.minimum(D, U)
    repetitions = np.maximum(D / seen - 1, 0.0)
    return seen + seen * R_D_star * (1 - np.exp(-repetitions / R_D_star))


def data_constrained_loss(params, N, D, U):
    """L = E + A/N^alpha + B/D'^beta with D' = effective_data(D, U, R_D_star)."""
    d_eff = effective_data(D, U, params["R_D_star"])
    return params["E"] + params["A"] / np.asarray(N, float) ** params["alpha"] + params["B"] / d_eff ** params["beta"]


def fit_data_constrained(records: pd.DataFrame, *, param_count: str = "all", loss: str = "val_loss",
                         bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0, statuses=("complete",),
                         huber_delta: float | str = "matched", n_refine: int | None = 8,
                         overfitted: str = "drop") -> Fit:
    """Fit L(N, D, U) of Muennighoff et al. 2023 (eq. 5-6, D' only) to runs (`load_runs`) or curves
    (each run's final row is used). Needs the `unique_tokens` column (records of `[data]
    unique_tokens`; without the key a run's unique_tokens is its whole train split).

    param_count: "all" (the paper's N, Chinchilla's) or "nonembed".
    huber_delta: stage 1's (approach 3's) delta, "matched" to the residual scale by default
        (analysis.approach3); stage 2 uses the same delta.
    bootstrap: replicates resampling the single-epoch runs and the repeated runs, each with
        replacement, both stages refitted (seeded by `seed`).
    `predict(N=..., D=..., U=...)`; `settings["R_D_star_at_bound"]` says when R*_D sits at the end of
    its search range (1e4: repetition as good as fresh data within these runs; 1e-2: worthless).
    """
    require(bootstrap >= 0, f"bootstrap must be >= 0, got {bootstrap}")
    require(overfitted in ("drop", "keep"), f'overfitted must be "drop" or "keep", got {overfitted!r}')
    n_col = param_column(param_count)
    what = "data-constrained law"
    rows, dropped = usable(records, [n_col, "tokens", "unique_tokens", loss], statuses, what,
                           positive=[n_col, "tokens", "unique_tokens", loss])
    runs = final_rows(rows).reset_index(drop=True)
    worse = _overfitted(*(runs[c].to_numpy(float) for c in (n_col, "tokens", "unique_tokens", loss)))
    overfit_dropped = runs.loc[worse].assign(reason="overfitted: loss above a run of the same N and unique "
                                                    "tokens trained on fewer tokens (outside eq. 5)")
    if overfitted == "drop":
        runs = runs.loc[~worse].reset_index(drop=True)
    N, D, U, L = (runs[c].to_numpy(float) for c in (n_col, "tokens", "unique_tokens", loss))
    epochs = D / U
    single = epochs <= SINGLE_EPOCH
    require(single.sum() >= 6, f"{what}: {int(single.sum())} single-epoch run(s) (tokens <= unique_tokens); "
                               "stage 1 (approach 3 for E, A, B, alpha, beta) needs at least 6")
    require(np.unique(N[single]).size >= 2 and np.unique(D[single]).size >= 2,
            f"{what}: the single-epoch runs need at least two model sizes and two data sizes")
    require((~single).sum() >= 2, f"{what}: {int((~single).sum())} repeated run(s) (tokens > unique_tokens); "
                                  "R*_D needs at least 2")
    ln_n, ln_d, ln_l = np.log(N), np.log(D), np.log(L)
    s, r = single, ~single
    if huber_delta == "matched":
        stage1 = matched_delta_fit(HOFFMANN_GRID, ln_n[s], ln_d[s], ln_l[s], n_refine)
        delta, theta = stage1["delta"], stage1["theta"]
    else:
        require(isinstance(huber_delta, (int, float)) and huber_delta > 0,
                f"huber_delta must be \"matched\" or a number > 0, got {huber_delta!r}")
        delta = float(huber_delta)
        theta = minimise(HOFFMANN_GRID, ln_n[s], ln_d[s], ln_l[s], delta, n_refine)[0]
    base = params_of(theta[None])[:, :5]  # E, A, B, alpha, beta
    r_star, objective = _fit_r_star(base, N[r], D[r], U[r], ln_l[r], None, delta)
    samples = None
    if bootstrap:
        w_single = resample_counts(int(s.sum()), bootstrap, seed)
        w_repeated = resample_counts(int(r.sum()), bootstrap, seed + 1)
        boot_theta, _ = lbfgs(np.repeat(theta[None], bootstrap, axis=0), ln_n[s], ln_d[s], ln_l[s], w_single, delta)
        boot_base = params_of(boot_theta)[:, :5]
        boot_r, _ = _fit_r_star(boot_base, N[r], D[r], U[r], ln_l[r], w_repeated, delta)
        samples = pd.DataFrame(np.column_stack([boot_base, boot_r]), columns=NAMES)
    params = dict(zip(NAMES, map(float, [*base[0], r_star[0]])))
    predicted = data_constrained_loss(params, N, D, U)
    data = pd.DataFrame({"run_id": runs["run_id"].to_numpy() if "run_id" in runs else np.arange(len(N)),
                         "N": N, "D": D, "U": U, "epochs": epochs, "R_D": np.maximum(epochs - 1, 0),
                         "D_prime": effective_data(D, U, params["R_D_star"]), "L": L,
                         "stage": np.where(single, "single epoch", "repeated"), "residual": ln_l - np.log(predicted)})
    lo, hi = LOG10_R_RANGE
    at_bound = bool(np.isclose(np.log10(params["R_D_star"]), [lo, hi], atol=1e-3).any())
    return Fit(
        law="Data-constrained (Muennighoff et al. 2023)",
        formula="L = E + A/N^alpha + B/D'^beta; D' = U_D + U_D R_D_star (1 - exp(-R_D/R_D_star)), R_D = D/U_D - 1",
        inputs=("N", "D", "U"), params=params, intervals=intervals_from(samples, NAMES), data=data,
        dropped=dropped_frame([summary_of_dropped(dropped)]
                              + ([summary_of_dropped(overfit_dropped)] if overfitted == "drop" else [])),
        quality={"huber_objective_repeated": float(objective[0]), **log_quality(ln_l, np.log(predicted))},
        settings={"N": n_col, "D": "tokens", "U": "unique_tokens", "loss": loss, "bootstrap": bootstrap, "seed": seed,
                  "huber_delta": float(delta), "n_single_epoch": int(s.sum()), "n_repeated": int(r.sum()),
                  "R_D_star_at_bound": at_bound, "overfitted": overfitted, "n_overfitted": int(worse.sum())},
        model=data_constrained_loss, samples=samples, n_fitted=len(NAMES))


def _overfitted(N, D, U, L) -> np.ndarray:
    """Repeated runs (D > U) whose loss is above that of a run of the same N and U on fewer tokens."""
    out = np.zeros(len(N), bool)
    for i in np.flatnonzero(D > U * SINGLE_EPOCH):
        fewer = (N == N[i]) & (U == U[i]) & (D < D[i])
        out[i] = bool(fewer.any() and L[i] > L[fewer].min())
    return out


def _fit_r_star(base: np.ndarray, N, D, U, ln_l, weights, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """R*_D minimising the weighted Huber loss of ln L against ln L(N, D') for each row of `base`
    (E, A, B, alpha, beta; (B, 5)) with its row of `weights` (None: all ones): (R*_D (B,), objective (B,)).
    A 1-D search: a coarse grid in log R*_D, then a fine grid about each row's best."""
    if len(base) > CHUNK:  # bounded memory: (rows, grid, points) arrays
        parts = [_fit_r_star(base[i:i + CHUNK], N, D, U, ln_l, None if weights is None else weights[i:i + CHUNK],
                             delta) for i in range(0, len(base), CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    lo, hi = LOG10_R_RANGE
    coarse = np.linspace(lo, hi, COARSE)
    best = coarse[np.argmin(_objective(base, coarse[None, :], N, D, U, ln_l, weights, delta), axis=1)]
    step = (hi - lo) / (COARSE - 1)
    fine = np.clip(best[:, None] + np.linspace(-step, step, FINE)[None, :], lo, hi)
    values = _objective(base, fine, N, D, U, ln_l, weights, delta)
    pick = np.argmin(values, axis=1)
    rows = np.arange(len(base))
    return 10 ** fine[rows, pick], values[rows, pick]


def _objective(base, log10_r, N, D, U, ln_l, weights, delta):
    """Summed Huber loss for every row of `base` (B, 5) at every R*_D of its row of log10_r (B or 1, G)."""
    E, A, B, alpha, beta = (base[:, i, None, None] for i in range(5))
    r_star = 10 ** log10_r[:, :, None]  # (B, G, 1)
    d_eff = effective_data(D[None, None, :], U[None, None, :], r_star)
    with np.errstate(over="ignore", invalid="ignore"):
        predicted = E + A / N[None, None, :] ** alpha + B / d_eff ** beta
        residual = ln_l[None, None, :] - np.log(predicted)
    clipped = np.clip(residual, -delta, delta)
    huber = clipped * (residual - 0.5 * clipped)
    w = np.ones(len(ln_l)) if weights is None else weights
    w = w[:, None, :] if np.ndim(w) == 2 else w[None, None, :]
    return np.nansum(huber * w, axis=2)

