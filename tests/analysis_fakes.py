"""Fake run records drawn from known scaling laws, in the exact layout the runner writes.

    <root>/<sweep>/runs/<run_id>/config.json, history.parquet, summary.parquet

Every column of the record contract is present with the runner's types (int64, float64, string;
NaN written as null). Losses follow a known law with multiplicative lognormal noise (1% by default:
the eval-to-eval scatter of a small model's validation loss on a few hundred thousand tokens), so
a fitter's estimate can be compared with the truth. Used by tests/test_analysis_*.py, the notebook
check and benchmarks/bench_fit.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

VOCAB_SIZE = 256  # bytes
SEQ_LEN = 256
BATCH_TOKENS = 8192
SPLIT_TOKENS = 10 ** 12  # the train split of a run without repeated data: more than any run trains

STRING_COLUMNS = ("run_id", "sweep", "status", "error", "grid", "flops_convention",
                  "peak_flops_source", "device_kind", "mesh")
INT_COLUMNS = ("seed", "data_seed", "n_layer", "d_model", "n_head", "d_ff", "vocab_size", "seq_len",
               "n_params", "n_params_nonembed", "n_params_embed", "step", "tokens", "batch_tokens",
               "target_tokens", "n_devices", "unique_tokens")
FLOAT_COLUMNS = ("flops", "flops_6nd", "flops_budget", "train_loss", "val_loss", "val_bits_per_byte",
                 "val_loss_optimal", "val_entropy", "val_ece", "lr", "grad_norm", "wall_seconds",
                 "tokens_per_second", "mfu", "peak_flops", "epochs")
CONTRACT_COLUMNS = STRING_COLUMNS + INT_COLUMNS + FLOAT_COLUMNS


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022 eq. 2), N = all parameters.

    The default constants put tiny byte-level models (1e5..1e8 parameters, 1e6..1e10 tokens) at
    1.3-3 nats/token, where the shipped results live; the exponents are close to the paper's.
    """

    E: float = 1.0
    A: float = 30.0
    B: float = 60.0
    alpha: float = 0.30
    beta: float = 0.28

    def loss(self, n_params, tokens):
        return self.E + self.A / np.asarray(n_params, float) ** self.alpha + self.B / np.asarray(tokens, float) ** self.beta

    @property
    def a(self) -> float:  # N_opt ∝ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D_opt ∝ C^b
        return self.alpha / (self.alpha + self.beta)

    def optimal_allocation(self, C):
        """N_opt, D_opt minimising the law under C = 6 N D (Hoffmann et al. eq. 4)."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        C = np.asarray(C, float)
        return G * (C / 6) ** self.a, (C / 6) ** self.b / G

    def optimal_loss(self, C):
        """The least loss at compute C = 6 N D."""
        return self.loss(*self.optimal_allocation(C))

    def with_compute_multiplier(self, multiplier: float) -> "ChinchillaLaw":
        """A recipe worth `multiplier` x compute over this one: L'(N, D) = L(k N, k D) with
        k = sqrt(multiplier), so its compute-optimal loss at C is this law's at multiplier x C
        (the least of L(kN, kD) over N D = C/6 is the least of L over N D = k^2 C/6)."""
        k = np.sqrt(multiplier)
        return ChinchillaLaw(E=self.E, A=self.A * k ** -self.alpha, B=self.B * k ** -self.beta,
                             alpha=self.alpha, beta=self.beta)


@dataclass(frozen=True)
class KaplanLaw:
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020 eq. 1.5), N non-embedding.

    Constants are the paper's (Table 2 / eq. 1.5). A learning curve of a run is the law at the
    tokens seen so far. The envelope over N of L(N, C/6N) is a power law in C with exponent
    alpha_N alpha_D / (alpha_N + alpha_D), reached at N_opt ∝ C^(alpha_D / (alpha_N + alpha_D)).
    """

    N_c: float = 8.8e13
    D_c: float = 5.4e13
    alpha_N: float = 0.076
    alpha_D: float = 0.095

    def loss(self, n_params_nonembed, tokens):
        n = np.asarray(n_params_nonembed, float)
        d = np.asarray(tokens, float)
        return ((self.N_c / n) ** (self.alpha_N / self.alpha_D) + self.D_c / d) ** self.alpha_D

    @property
    def alpha_C(self) -> float:
        return self.alpha_N * self.alpha_D / (self.alpha_N + self.alpha_D)

    @property
    def a_opt(self) -> float:
        return self.alpha_D / (self.alpha_N + self.alpha_D)


def shape_for(n_target: float, vocab_size: int = VOCAB_SIZE, seq_len: int = SEQ_LEN) -> dict:
    """A GPT shape near `n_target` non-embedding parameters, d_model = 64 n_layer (Kaplan's
    aspect ratio), with its exact parameter counts (pre-LN blocks with biases, tied embeddings)."""
    d_model = max(16, int(round((n_target * 64 / 12) ** (1 / 3) / 8)) * 8)
    n_layer = max(1, int(round(d_model / 64)))
    d_ff = 4 * d_model
    per_layer = 4 * d_model * d_model + 4 * d_model + 2 * d_model * d_ff + d_ff + d_model + 4 * d_model
    nonembed = n_layer * per_layer + 2 * d_model
    embed = vocab_size * d_model + seq_len * d_model
    return dict(n_layer=n_layer, d_model=d_model, n_head=max(1, d_model // 64), d_ff=d_ff,
                vocab_size=vocab_size, seq_len=seq_len, n_params=nonembed + embed,
                n_params_nonembed=nonembed, n_params_embed=embed)


def shape_for_total(n_params_target: float) -> dict:
    """A shape whose *total* parameter count is near the target (Chinchilla's N)."""
    lo, hi = 1.0, float(n_params_target)
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if shape_for(mid)["n_params"] < n_params_target:
            lo = mid
        else:
            hi = mid
    return shape_for(hi)


def run_records(shape: dict, target_tokens: float, loss_at, *, sweep: str, grid: str,
                rng: np.random.Generator, noise: float = 0.01, n_evals: int = 20,
                flops_budget: float = math.nan, seed: int = 0, status: str = "complete",
                batch_tokens: int = BATCH_TOKENS, unique_tokens: int = SPLIT_TOKENS) -> pd.DataFrame:
    """The history rows of one run; its summary is the last row, which carries the run's status
    (the rows before it say "running"). `loss_at(shape, tokens)` is the noiseless loss after
    `tokens` training tokens; `unique_tokens` the distinct tokens it draws from (repeated data)."""
    steps_total = max(2, int(round(target_tokens / batch_tokens)))  # D is rounded to whole steps
    steps = np.unique(np.geomspace(max(1, steps_total // 100), steps_total, n_evals).round().astype(np.int64))
    tokens = steps * batch_tokens
    clean = loss_at(shape, tokens)
    val_loss = clean * np.exp(rng.normal(0, noise, len(steps)))
    train_loss = clean * np.exp(rng.normal(0, noise, len(steps)))
    error = None
    if status == "diverged":
        cut = len(steps) // 2
        val_loss[cut:] = np.nan
        train_loss[cut:] = np.nan
        steps, tokens, val_loss, train_loss = steps[:cut + 1], tokens[:cut + 1], val_loss[:cut + 1], train_loss[:cut + 1]
        error = f"non-finite loss at step {int(steps[-1])}"
    n_rows = len(steps)
    key = [sweep, shape, int(steps_total), seed, status, repr(flops_budget)]
    key += [int(unique_tokens)] if unique_tokens != SPLIT_TOKENS else []  # the ids the fakes had before
    run_id = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    flops = 6.0 * shape["n_params"] * tokens  # the fakes' "exact" count: 6ND with all parameters
    wall = tokens / 2e5
    frame = pd.DataFrame({
        "run_id": run_id, "sweep": sweep, "seed": seed, "data_seed": 0, "status": "running", "error": None,
        "grid": grid, **{k: shape[k] for k in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size",
                                               "seq_len", "n_params", "n_params_nonembed", "n_params_embed")},
        "step": steps, "tokens": tokens, "batch_tokens": batch_tokens,
        "target_tokens": steps_total * batch_tokens, "flops": flops,
        "flops_6nd": 6.0 * shape["n_params_nonembed"] * tokens, "flops_convention": "fake-6nd-all",
        "flops_budget": flops_budget, "train_loss": train_loss, "val_loss": val_loss,
        "val_bits_per_byte": val_loss / math.log(2), "val_loss_optimal": math.nan,
        "val_entropy": 0.95 * val_loss, "val_ece": 0.02, "lr": 1e-3 * (1 + np.cos(np.pi * steps / steps_total)) / 2,
        "grad_norm": 1.0, "wall_seconds": wall, "tokens_per_second": 2e5, "mfu": 0.1,
        "peak_flops": 1e12, "peak_flops_source": "fake", "device_kind": "cpu", "n_devices": 1, "mesh": "dp=1",
        "unique_tokens": int(unique_tokens), "epochs": tokens / unique_tokens,
    })
    frame.loc[frame.index[-1], "status"] = status
    frame.loc[frame.index[-1], "error"] = error
    return frame


def kaplan_records(law: KaplanLaw = KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e8, 7),
                   tokens=np.geomspace(1e7, 1e11, 5), *, seed: int = 0, noise: float = 0.01,
                   n_evals: int = 20, sweep: str = "kaplan", n_diverged: int = 0) -> pd.DataFrame:
    """History of a Kaplan grid: every model size crossed with every data size."""
    rng = np.random.default_rng(seed)
    runs = []
    for n in n_params_nonembed:
        shape = shape_for(n)
        for d in tokens:
            runs.append(run_records(shape, d, lambda s, t: law.loss(s["n_params_nonembed"], t), sweep=sweep,
                                    grid="kaplan", rng=rng, noise=noise, n_evals=n_evals, seed=seed))
    for i in range(n_diverged):
        runs.append(run_records(shape_for(n_params_nonembed[i % len(n_params_nonembed)]), tokens[-1],
                                lambda s, t: law.loss(s["n_params_nonembed"], t), sweep=sweep, grid="kaplan",
                                rng=rng, noise=noise, n_evals=n_evals, seed=seed + 1 + i, status="diverged"))
    return pd.concat(runs, ignore_index=True)


def isoflop_records(law: ChinchillaLaw = ChinchillaLaw(), budgets=np.geomspace(1e14, 1e16, 5),
                    n_sizes: int = 9, span: float = 16.0, *, seed: int = 0, noise: float = 0.01,
                    n_evals: int = 12, sweep: str = "chinchilla", n_diverged: int = 0) -> pd.DataFrame:
    """History of an IsoFLOP grid: per budget C, `n_sizes` models log-spaced over N_opt(C)/span ..
    N_opt(C)*span (all parameters), each trained on D = C / (6 N) tokens rounded to whole steps."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        n_opt, _ = law.optimal_allocation(c)
        for n in np.geomspace(n_opt / span, n_opt * span, n_sizes):
            shape = shape_for_total(n)
            runs.append(run_records(shape, c / (6 * shape["n_params"]), lambda s, t: law.loss(s["n_params"], t),
                                    sweep=sweep, grid="isoflop", rng=rng, noise=noise, n_evals=n_evals,
                                    flops_budget=float(c), seed=seed))
    for i in range(n_diverged):
        shape = shape_for_total(law.optimal_allocation(budgets[-1])[0] * span * 2)
        runs.append(run_records(shape, budgets[-1] / (6 * shape["n_params"]),
                                lambda s, t: law.loss(s["n_params"], t), sweep=sweep, grid="isoflop", rng=rng,
                                noise=noise, n_evals=n_evals, flops_budget=float(budgets[-1]), seed=seed + 1 + i,
                                status="diverged"))
    return pd.concat(runs, ignore_index=True)


def random_grid_points(law: ChinchillaLaw = ChinchillaLaw(), n_points: int = 250, *, seed: int = 0,
                       noise: float = 0.01, n_range=(1e5, 1e8), d_range=(1e6, 1e10)) -> pd.DataFrame:
    """Summary-like rows at (N, D) drawn log-uniformly: the points of an approach 3 fit."""
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(*np.log(n_range), n_points))
    d = np.exp(rng.uniform(*np.log(d_range), n_points))
    loss = law.loss(n, d) * np.exp(rng.normal(0, noise, n_points))
    return pd.DataFrame({"run_id": [f"p{i:04d}" for i in range(n_points)], "status": "complete",
                         "n_params": n.round().astype(np.int64), "n_params_nonembed": (0.8 * n).round().astype(np.int64),
                         "tokens": d.round().astype(np.int64), "flops": 6 * n * d, "val_loss": loss})


@dataclass(frozen=True)
class DataConstrainedLaw:
    """L(N, D, U) = E + A/N^alpha + B/D'^beta, D' = U_D + U_D R*_D (1 - exp(-R_D/R*_D)), R_D = D/U_D - 1
    (Muennighoff et al. 2023 eq. 5-6, N' = N; their fitted R*_D = 15.4), N = all parameters."""

    E: float = 1.0
    A: float = 30.0
    B: float = 60.0
    alpha: float = 0.30
    beta: float = 0.28
    R_D_star: float = 15.4

    def effective_data(self, tokens, unique_tokens):
        d, u = np.asarray(tokens, float), np.asarray(unique_tokens, float)
        seen = np.minimum(d, u)
        return seen + seen * self.R_D_star * (1 - np.exp(-np.maximum(d / seen - 1, 0) / self.R_D_star))

    def loss(self, n_params, tokens, unique_tokens):
        return (self.E + self.A / np.asarray(n_params, float) ** self.alpha
                + self.B / self.effective_data(tokens, unique_tokens) ** self.beta)


def repeated_records(law: DataConstrainedLaw = DataConstrainedLaw(), n_params=np.geomspace(1e6, 1e8, 4),
                     tokens=np.geomspace(1e8, 1e10, 4), epochs=(2, 4, 8, 16, 32, 64, 128), *, seed: int = 0,
                     noise: float = 0.01, n_evals: int = 6, sweep: str = "repeat") -> pd.DataFrame:
    """History of a repetition grid: every size x every D on fresh data (one epoch at most), and every
    size at the largest D on unique_tokens = D / epochs for each of `epochs`."""
    rng = np.random.default_rng(seed)
    runs = []
    for n in n_params:
        shape = shape_for_total(n)
        points = [(d, SPLIT_TOKENS) for d in tokens] + [(tokens[-1], int(tokens[-1] / e)) for e in epochs]
        for d, unique in points:
            runs.append(run_records(shape, d, lambda s, t, u=unique: law.loss(s["n_params"], t, u), sweep=sweep,
                                    grid="kaplan", rng=rng, noise=noise, n_evals=n_evals, seed=seed,
                                    unique_tokens=unique))
    return pd.concat(runs, ignore_index=True)


def summaries(history: pd.DataFrame) -> pd.DataFrame:
    return history.sort_values(["run_id", "step"]).groupby("run_id", sort=False).tail(1).reset_index(drop=True)


def _table(frame: pd.DataFrame) -> pa.Table:
    fields = []
    for col in frame.columns:
        text = col in STRING_COLUMNS or col == "recipe"  # recipe: present only in records of recipe sweeps
        kind = pa.string() if text else pa.int64() if col in INT_COLUMNS else pa.float64()
        fields.append(pa.field(col, kind))
    return pa.Table.from_pandas(frame.reset_index(drop=True), schema=pa.schema(fields), preserve_index=False)


def write_records(history: pd.DataFrame, root: str | os.PathLike, sweep: str | None = None) -> Path:
    """Write every run of `history` under <root>/<sweep>/runs/<run_id>/ as the runner does
    (temp name, then os.replace). Returns the sweep folder."""
    sweep = sweep or str(history["sweep"].iloc[0])
    sweep_dir = Path(root) / sweep
    for run_id, rows in history.groupby("run_id", sort=False):
        run_dir = sweep_dir / "runs" / str(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = rows.sort_values("step")
        config = {"run_id": run_id, "sweep": sweep, "fake": True,
                  "model": {k: int(rows[k].iloc[0]) for k in ("n_layer", "d_model", "n_head", "d_ff")},
                  "target_tokens": int(rows["target_tokens"].iloc[0])}
        _atomic(run_dir / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2)))
        # As the runner: history rows are written while the run goes (status "running"); the
        # summary carries the outcome.
        running = rows.assign(status="running", error=None)
        _atomic(run_dir / "history.parquet", lambda p: pq.write_table(_table(running), p))
        _atomic(run_dir / "summary.parquet", lambda p: pq.write_table(_table(rows.tail(1)), p))
    return sweep_dir


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
