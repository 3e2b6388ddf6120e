"""The synthetic source: its recorded optimal loss is the exact Bayes-optimal loss of the process."""

import dataclasses
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_sweep
from scaling import records
from scaling.config import SyntheticConfig
from scaling.data.batches import validation_windows
from scaling.data.sources import open_source
from scaling.data.synthetic import SEPARATOR, Process, build_process

SMALL = SyntheticConfig(seed=3, components=6, zipf_exponent=1.0, alphabet=4, orders=(1, 2, 3), concentration=0.3,
                        end_prob=0.05, train_tokens=20_000, val_tokens=20_000)


def _windows(stream, n, width):
    return np.stack([stream[i * (width - 1):i * (width - 1) + width] for i in range(n)]).astype(np.int64)


def _transition(p: Process, c: int) -> np.ndarray:
    k, a = p.order[c], p.n_symbols
    start = p.base[c] + p.offset[c, k]
    return p.probs[start:start + a ** k * a].reshape(a ** k, a)


def _stationary_by_eigenvector(t: np.ndarray, a: int, k: int) -> np.ndarray:
    """The stationary law over contexts from the dense context-to-context matrix (independent of
    the power iteration the source uses)."""
    m = np.zeros((a ** k, a ** k))
    for s in range(a ** k):
        for x in range(a):
            m[s, (s * a + x) % a ** k] += t[s, x]
    values, vectors = np.linalg.eig(m.T)
    v = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    return v / v.sum()


def _brute_force_nll(p: Process, window: np.ndarray) -> np.ndarray:
    """-log P(x_{t+1} | window[:t+1]) as a ratio of joint probabilities, each summed over components:
    P(segment | c) = pi_c(first k symbols) * prod T_c(x | previous k); slow and direct."""
    q, a = p.config.end_prob, p.n_symbols
    laws = {}
    for c in range(len(p.prior)):
        k = p.order[c]
        t = _transition(p, c)
        laws[c] = (k, t, _stationary_by_eigenvector(t, a, k))

    def seg_prob(c, symbols):
        k, t, pi = laws[c]
        if any(s < 0 for s in symbols):
            return 0.0
        head = symbols[:k]
        # Marginal of the stationary law over contexts whose oldest symbols are `head`.
        span = a ** (k - len(head))
        first = sum(s * a ** (len(head) - 1 - i) for i, s in enumerate(head)) if head else 0
        prob = pi.reshape(a ** len(head), span)[first].sum() if head else 1.0
        for i in range(k, len(symbols)):
            ctx = sum(s * a ** (k - 1 - j) for j, s in enumerate(symbols[i - k:i]))
            prob *= t[ctx, symbols[i]]
        return prob

    out = []
    segment = []
    for t_pos in range(len(window)):
        token = int(window[t_pos])
        if t_pos > 0:
            if token == SEPARATOR:
                out.append(-math.log(q))
            else:
                num = sum(p.prior[c] * seg_prob(c, [p.local[c, x] for x in segment + [token]]) for c in laws)
                den = sum(p.prior[c] * seg_prob(c, [p.local[c, x] for x in segment]) for c in laws)
                out.append(-math.log((1 - q) * num / den))
        segment = [] if token == SEPARATOR else segment + [token]
    return np.array(out)


def test_optimal_nll_equals_brute_force_bayes():
    p = build_process(SMALL)
    stream = p.generate(5000, stream_seed=7)
    windows = _windows(stream, 6, 40)
    assert (windows == SEPARATOR).any()  # document boundaries inside windows are exercised
    fast = p.optimal_nll(windows)
    for w, row in zip(windows, fast):
        np.testing.assert_allclose(row, _brute_force_nll(p, w), rtol=1e-7)


def test_predictive_is_a_distribution_consistent_with_the_nll():
    p = build_process(SMALL)
    windows = _windows(p.generate(3000, stream_seed=8), 4, 30)
    dist = p.predictive(windows)
    np.testing.assert_allclose(dist.sum(-1), 1.0, atol=1e-12)
    picked = np.take_along_axis(dist, windows[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(-np.log(picked), p.optimal_nll(windows), rtol=1e-9)


def _mc_gap(p: Process, windows: np.ndarray):
    """Per-window mean of (-log p(x_obs) - H(p)): zero in expectation iff p is the true law."""
    dist = p.predictive(windows)
    nll = p.optimal_nll(windows)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(dist > 0, dist * np.log(dist), 0.0), axis=-1)
    return (nll - entropy).mean(axis=1), entropy


def test_recorded_optimal_loss_matches_monte_carlo():
    """The optimal loss on the source's validation windows (what a run records) against an independent
    Monte Carlo estimate on fresh samples: the mean entropy of the exact predictive law (for the true
    law, E[-log p(x)] = E[H(p)])."""
    p = build_process(SMALL)
    source_val = p.generate(SMALL.val_tokens, stream_seed=2)
    recorded = p.optimal_nll(_windows(source_val, 150, 33)).mean()
    fresh = _windows(p.generate(12_000, stream_seed=99), 300, 33)
    gap, entropy = _mc_gap(p, fresh)
    per_window = entropy.mean(axis=1)
    se = per_window.std() / math.sqrt(len(per_window))
    assert abs(recorded - per_window.mean()) < 4 * math.hypot(se, 0.02)
    assert abs(gap.mean()) < 4 * gap.std() / math.sqrt(len(gap))
    # And it is optimal: a predictor with the wrong prior over components loses on the same tokens.
    wrong = dataclasses.replace(p, prior=np.full(len(p.prior), 1 / len(p.prior)))
    worse = wrong.optimal_nll(fresh).mean(axis=1) - p.optimal_nll(fresh).mean(axis=1)
    assert worse.mean() > 4 * worse.std() / math.sqrt(len(worse))


def test_generation_is_deterministic_and_windows_start_anywhere():
    p = build_process(SMALL)
    a, b = p.generate(4000, 1), p.generate(4000, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, p.generate(4000, 2))
    assert a.max() < 256 and abs((a == SEPARATOR).mean() - SMALL.end_prob) < 0.02
    other = build_process(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(other.alphabet, p.alphabet)
    # A window's optimal loss does not depend on where it starts: same law at offsets 0 and 17.
    s = p.generate(40_000, 5)
    at0 = p.optimal_nll(_windows(s, 300, 33)).mean()
    at17 = p.optimal_nll(_windows(s[17:], 300, 33)).mean()
    assert abs(at0 - at17) < 0.1


def test_source_is_cached_and_carries_the_optimal_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    src = open_source("synthetic", synthetic=SMALL)
    assert src.optimal_nll is not None and src.train.dtype == np.uint8 and src.vocab_size == 256
    assert len(src.train) > 0.9 * SMALL.train_tokens
    windows = validation_windows(src.val, 32, 8)
    assert src.optimal_nll(windows).shape == (8, 32)
    assert list((tmp_path / "cache").glob("synthetic-*.json"))


SWEEP = """
[sweep]
out_dir = "{out}"
[data]
source = "synthetic"
seq_len = 32
[data.synthetic]
seed = 3
components = 2
alphabet = 4
orders = [1]
end_prob = 0.05
train_tokens = 100000
val_tokens = 10000
[model]
head_dim = 16
[train]
batch_tokens = 512
eval_points = 3
eval_sequences = 64
[optimizer]
lr = 1e-2
[grid]
models = [{{ n_layer = 1, d_model = 32 }}]
tokens = [8e4]
"""


def test_a_trained_model_does_not_beat_the_optimum(tmp_path):
    from scaling.training.run import train_run
    from scaling.sweep.reader import load_sweep

    sweep = load_sweep(write_sweep(tmp_path / "s.toml", SWEEP.format(out=tmp_path / "out")), device_count=1)
    spec = sweep.runs[0]
    summary = train_run(spec, sweep.out_dir)
    hist = pq.read_table(records.run_dir(sweep.out_dir, spec.run_id) / "history.parquet").to_pandas()
    optimal = summary["val_loss_optimal"]
    assert math.isfinite(optimal) and (hist["val_loss_optimal"] == optimal).all()
    # 64 windows x 32 tokens: the noise of a mean of ~2000 per-token losses is well under 0.1 nats.
    assert (hist["val_loss"] > optimal - 0.1).all()
    assert summary["val_loss"] < hist["val_loss"].iloc[0] - 1.0  # it learnt, towards the floor
    assert summary["val_loss"] - optimal < 0.5


def test_bad_synthetic_settings_are_config_errors(tmp_path):
    from scaling.config import ConfigError
    from scaling.sweep.reader import load_sweep

    text = SWEEP.format(out=tmp_path / "out")
    for old, new, key in [("orders = [1]", "orders = [1, 9]", "data.synthetic.orders"),
                          ("alphabet = 4", "alphabet = 4\ncolour = 1", "data.synthetic.colour"),
                          ("end_prob = 0.05", "end_prob = 1.5", "data.synthetic.end_prob")]:
        with pytest.raises(ConfigError) as e:
            load_sweep(write_sweep(tmp_path / "bad.toml", text.replace(old, new)))
        assert e.value.key == key and "bad.toml" in str(e.value)
