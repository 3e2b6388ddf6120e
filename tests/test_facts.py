"""The facts source: its optimal loss is the exact Bayes-optimal loss, its exponents are those of
Hutter 2021 ("Learning Curve Theory") and Michaud et al. 2023 (the quantization model), and the
analysis reads a fit against them."""

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from conftest import write_sweep
from scaling.config import FactsConfig
from scaling.config_facts import ARROW, END
from scaling.data.batches import validation_windows
from scaling.data.facts import build_facts
from scaling.data.sources import open_source

# Three facts, keys of two symbols from three (so suffixes are shared), one value symbol: L = 5.
TINY = FactsConfig(seed=1, n_facts=3, alpha=1.0, key_len=2, value_len=1, alphabet=3, train_tokens=1000,
                   val_tokens=20_000)
# Thirty facts whose keys share prefixes and suffixes: the posterior of a left-cut record is not trivial.
SMALL = FactsConfig(seed=2, n_facts=30, alpha=0.7, key_len=3, value_len=2, alphabet=4, train_tokens=20_000,
                    val_tokens=20_000)

# A million facts (alpha = 1): the ideal learners' curves over the ranges tested stay far from K.
HUGE = FactsConfig(n_facts=1 << 20, alpha=1.0)


def _windows(stream, n, width, start=0):
    starts = start + (width - 1) * np.arange(n)
    return np.stack([stream[s:s + width] for s in starts]).astype(np.int64)


def _enumerate(facts, width):
    """{prefix: P(prefix)} over every window of `width` tokens: phase uniform over the L offsets, the
    records covering the window i.i.d. from the prior (the generative law, written out)."""
    length, k = facts.record_len, len(facts.prior)
    probs = {}
    for phi in range(length):
        n_records = -(-(phi + width) // length)
        for combo in itertools.product(range(k), repeat=n_records):
            tokens = np.concatenate([facts.records[i] for i in combo])[phi:phi + width]
            p = np.prod(facts.prior[list(combo)]) / length
            for t in range(1, width + 1):
                probs[tuple(tokens[:t])] = probs.get(tuple(tokens[:t]), 0.0) + p
    return probs


def _reference_nll(facts, windows):
    """The optimal nll by direct matching of every fact at every phase (no sorted tables)."""
    length = facts.record_len
    out = np.zeros((len(windows), windows.shape[1] - 1))
    for n, w in enumerate(windows):
        joint = np.zeros((length, len(w)))
        for phi in range(length):
            log_p, t = 0.0, 0
            offset = phi
            while t < len(w):
                seg = w[t:t + length - offset]
                for j in range(len(seg)):
                    match = (facts.records[:, offset:offset + j + 1] == seg[:j + 1]).all(axis=1)
                    mass = facts.prior[match].sum()
                    joint[phi, t + j] = log_p + (np.log(mass) if mass > 0 else -np.inf)
                log_p = joint[phi, t + len(seg) - 1]
                t, offset = t + len(seg), 0
        top = joint.max(axis=0)
        log_prefix = top + np.log(np.exp(joint - top).sum(axis=0))
        out[n] = -np.diff(log_prefix)
    return out


def test_optimal_nll_equals_brute_force_bayes():
    """Exact against the generative law enumerated over phases and facts, windows cut anywhere."""
    facts = build_facts(TINY)
    width = 8
    probs = _enumerate(facts, width)
    windows = np.array(sorted(k for k in probs if len(k) == width))
    expected = np.array([[-math.log(probs[tuple(w[:t + 1])] / probs[tuple(w[:t])]) for t in range(1, width)]
                         for w in windows])
    np.testing.assert_allclose(facts.optimal_nll(windows), expected, rtol=0, atol=1e-12)
    # Thirty facts, windows of the validation stream at every phase: the same as matching each fact.
    many = build_facts(SMALL)
    stream = many.generate(4000, stream_seed=2)
    windows = np.concatenate([_windows(stream, 6, 21, start=s) for s in range(many.record_len)])
    np.testing.assert_allclose(many.optimal_nll(windows), _reference_nll(many, windows), rtol=0, atol=1e-10)


def test_recorded_optimal_loss_matches_monte_carlo():
    """E on the validation windows (what a run records) against the expected optimal loss of the
    law (exact, enumerated) and a Monte Carlo of the optimal predictor on windows sampled afresh."""
    facts = build_facts(TINY)
    width = 8
    probs = _enumerate(facts, width)
    expected = sum(p * -math.log(p) for w, p in probs.items() if len(w) == width)
    expected -= sum(p * -math.log(p) for w, p in probs.items() if len(w) == 1)
    expected /= width - 1  # mean over the S targets of a window: H(w_1..w_S | w_0) / S
    recorded = facts.optimal_nll(_windows(facts.generate(TINY.val_tokens, stream_seed=2), 2500, width)).mean()
    rng = np.random.default_rng(7)
    stream = facts.generate(200_000, stream_seed=9)
    starts = rng.integers(0, len(stream) - width, size=4000)  # uniform phase
    fresh = facts.optimal_nll(np.stack([stream[s:s + width] for s in starts]).astype(np.int64)).mean(axis=1)
    se = fresh.std() / math.sqrt(len(fresh))
    assert abs(fresh.mean() - expected) < 4 * se
    assert abs(recorded - expected) < 4 * se * math.sqrt(len(fresh) / 2500)
    # Long windows: E tends to the entropy of the prior per record, H(P) / L. 64 windows of 2000
    # targets hold ~18000 records: the Monte Carlo error of the mean is ~0.0015 nats a token, and the
    # window's first record (phase and fact unknown) adds at most ~log(L * K) / 2000 < 0.003.
    small = build_facts(SMALL)
    long = small.optimal_nll(_windows(small.generate(130_000, stream_seed=2), 64, 2001)).mean()
    assert abs(long - small.entropy() / small.record_len) < 0.008
    # And it is optimal: a predictor with a uniform prior loses on the same tokens.
    windows = _windows(small.generate(20_000, stream_seed=3), 200, 65)
    wrong = dataclasses.replace(small, prior=np.full(len(small.prior), 1 / len(small.prior)))
    worse = wrong.optimal_nll(windows).mean(axis=1) - small.optimal_nll(windows).mean(axis=1)
    assert worse.mean() > 4 * worse.std() / math.sqrt(len(worse))


def _slope(x, y) -> float:
    return float(-np.polyfit(np.log(x), np.log(y), 1)[0])


def test_ideal_counting_learner_has_the_data_exponent():
    """Hutter 2021: a learner that knows every fact it has seen has excess loss ~ D^(-alpha/(1+alpha)).
    Simulated on K = 2^20 facts over D = 1e3..1e5 records, where the facts seen stay far below K:
    the exact finite-K curve's slope over that range is within 0.01 of the asymptote (asserted, it
    is the finite-K and finite-D bias), and the simulation within 0.02 of that curve (Monte Carlo)."""
    facts = build_facts(HUGE)
    truth = facts.true_exponents[0]
    d = np.unique(np.geomspace(1000, 100_000, 8).astype(int))
    exact = facts.counting_excess(d)
    assert abs(_slope(d, exact) - truth) < 0.01
    rng = np.random.default_rng(0)
    cdf = np.cumsum(facts.prior)
    curves = []
    for _ in range(8):
        draws = np.searchsorted(cdf, rng.random(d[-1]) * cdf[-1], side="right")
        seen = np.zeros(len(facts.prior), dtype=bool)
        curve, done = [], 0
        for n in d:
            seen[draws[done:n]] = True
            done = n
            # The learner's expected excess on a fresh record: the value cost of the unseen facts.
            curve.append(facts.value_cost() / facts.record_len * facts.prior[~seen].sum())
        curves.append(curve)
    simulated = np.mean(curves, axis=0)
    assert np.allclose(simulated, exact, rtol=0.1)
    assert abs(_slope(d, simulated) - truth) < 0.03


def test_storing_the_top_facts_has_the_parameter_exponent():
    """Michaud et al. 2023: storing the n most frequent facts leaves excess ~ n^-alpha. The tail is
    sum_{n<i<=K} i^-(1+alpha) ~ (n^-alpha - K^-alpha) / alpha, so finite K steepens the local slope to
    alpha / (1 - (n/K)^alpha): by 0.01 at n = K/100 (alpha = 1, K = 2^20), the top of the range used
    here; the sum's discreteness moves it by O(1/n), 0.005 at n = 100, its bottom. Hence 0.02."""
    facts = build_facts(HUGE)
    n = np.geomspace(100, 10_000, 6).astype(int)
    local = _slope(n, facts.storing_excess(n))
    assert abs(local - facts.true_exponents[1]) < 0.02
    assert facts.storing_excess(len(facts.prior))[0] == 0.0


def test_generation_is_deterministic_from_the_seed():
    facts = build_facts(SMALL)
    a, b = facts.generate(5000, 1), facts.generate(5000, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, facts.generate(5000, 2))
    assert len(a) % facts.record_len == 0 and a.dtype == np.uint8
    rebuilt = build_facts.__wrapped__(SMALL)  # not the cached object: rebuilt from the seed
    assert np.array_equal(rebuilt.records, facts.records) and np.array_equal(rebuilt.prior, facts.prior)
    other = build_facts.__wrapped__(dataclasses.replace(SMALL, seed=3))
    assert not np.array_equal(other.records, facts.records)
    # The format: distinct keys, ARROW and END where they belong, symbols 1..A; frequencies Zipf.
    r = facts.records
    assert len(np.unique(r[:, :SMALL.key_len], axis=0)) == SMALL.n_facts
    assert (r[:, SMALL.key_len] == ARROW).all() and (r[:, -1] == END).all()
    symbols = np.delete(r, [SMALL.key_len, r.shape[1] - 1], axis=1)
    assert symbols.min() >= 1 and symbols.max() <= SMALL.alphabet
    np.testing.assert_allclose(facts.prior[0] / facts.prior[1], 2 ** (1 + SMALL.alpha))


def test_validation_is_held_out_and_the_source_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    src = open_source("facts", facts=SMALL)
    facts = build_facts(SMALL)
    assert src.name == "facts" and src.vocab_size == 256 and src.true_exponents == (0.7 / 1.7, 0.7)
    # Two independent streams of the same facts: the validation tokens are no training positions.
    assert np.array_equal(src.train, facts.generate(SMALL.train_tokens, 1))
    assert np.array_equal(src.val, facts.generate(SMALL.val_tokens, 2))
    train = bytes(src.train)
    windows = validation_windows(src.val, 32, 16)
    for w in windows:  # every validation window is a piece of the validation split...
        assert bytes(w.astype(np.uint8)) in bytes(src.val)
    # ...and a long stretch of validation (some 20 records) is nowhere in the training split.
    for start in range(0, 4000, 500):
        assert bytes(src.val[start:start + 240]) not in train
    assert src.optimal_nll(windows).shape == (16, 32)
    assert list((tmp_path / "cache").glob("facts-*.json"))
    again = open_source("facts", facts=dataclasses.replace(SMALL, val_tokens=25_000))  # another setting: rebuilt
    assert len(list((tmp_path / "cache").glob("facts-*.json"))) == 2 and again.content_hash != src.content_hash
    # Task documents mixed in: the mix has no known answers.
    from scaling.config import TasksConfig, TaskSpec
    mixed = open_source("facts", facts=SMALL, tasks=TasksConfig(tasks=(TaskSpec(name="copy", kind="copy"),)))
    assert mixed.optimal_nll is None and mixed.true_exponents is None


SWEEP = """
[sweep]
out_dir = "{out}"
[data]
source = "facts"
seq_len = 32
[data.facts]
n_facts = 64
alpha = 1.0
key_len = 3
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


@pytest.mark.slow
def test_a_trained_model_records_the_truth_and_does_not_beat_the_optimum(tmp_path, monkeypatch):
    """A run's history and summary carry the known answers (about 20 s of training on a CPU)."""
    import pyarrow.parquet as pq

    from scaling import records
    from scaling.sweep.reader import load_sweep
    from scaling.training.run import train_run

    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    sweep = load_sweep(write_sweep(tmp_path / "s.toml", SWEEP.format(out=tmp_path / "out")), device_count=1)
    spec = sweep.runs[0]
    summary = train_run(spec, sweep.out_dir)
    hist = pq.read_table(records.run_dir(sweep.out_dir, spec.run_id) / "history.parquet").to_pandas()
    assert (hist["true_exponent_data"] == 0.5).all() and (hist["true_exponent_params"] == 1.0).all()
    assert summary["true_exponent_data"] == 0.5 and summary["true_exponent_params"] == 1.0
    optimal = summary["val_loss_optimal"]
    assert math.isfinite(optimal) and (hist["val_loss_optimal"] == optimal).all()
    assert (hist["val_loss"] > optimal - 0.1).all() and summary["val_loss"] < hist["val_loss"].iloc[0] - 1.0


def test_facts_sweep_settings_are_read_and_bad_ones_are_config_errors(tmp_path):
    from scaling.config import ConfigError
    from scaling.sweep.reader import load_sweep

    text = SWEEP.format(out=tmp_path / "out")
    spec = load_sweep(write_sweep(tmp_path / "s.toml", text)).runs[0]
    assert spec.data.facts == FactsConfig(n_facts=64, alpha=1.0, key_len=3, train_tokens=100_000, val_tokens=10_000)
    without_table = text[:text.index("[data.facts]")] + text[text.index("[model]"):]
    default = load_sweep(write_sweep(tmp_path / "d.toml", without_table)).runs[0]
    assert default.data.facts == FactsConfig()
    for old, new, key in [("alpha = 1.0", "alpha = -1.0", "data.facts.alpha"),
                          ("key_len = 3", "key_len = 3\ncolour = 1", "data.facts.colour"),
                          ("key_len = 3", "key_len = 1", "data.facts.key_len"),
                          ("n_facts = 64", 'n_facts = "many"', "data.facts.n_facts"),
                          ('source = "facts"', 'source = "synthetic"', "data.facts")]:
        with pytest.raises(ConfigError) as e:
            load_sweep(write_sweep(tmp_path / "bad.toml", text.replace(old, new)))
        assert e.value.key == key and "bad.toml" in str(e.value) and "\n" not in str(e.value)


def test_records_have_the_truth_columns():
    from scaling import records

    assert {"val_loss_optimal", "true_exponent_data", "true_exponent_params"} <= set(records.SCHEMA.names)
    assert open_source("stdlib").true_exponents is None  # NaN in the records of every other source


def _true_law_runs(seed: int) -> tuple[pd.DataFrame, dict]:
    """Records of the facts source's law, L = E + B / D^beta + A / N^alpha, with 1% scatter."""
    facts = build_facts(FactsConfig(n_facts=1 << 12))
    beta, alpha = facts.true_exponents
    e = 0.31
    rng = np.random.default_rng(seed)
    d = np.repeat(np.geomspace(1e5, 1e8, 12), 2)
    rows = pd.DataFrame({"tokens": d, "val_loss": (e + 30.0 / d ** beta) * np.exp(rng.normal(0, 0.01, d.size)),
                         "val_loss_optimal": e, "true_exponent_data": beta, "true_exponent_params": alpha})
    return rows, {"E": e, "alpha_D": beta}


def test_compare_with_truth_covers_the_true_law_and_reports_the_error():
    from analysis.fit import fit_power_law
    from analysis.truth import compare_with_truth

    covered = []
    for seed in range(20):  # 95% intervals: over 20 independent sweeps of the law, most cover the truth
        runs, truth = _true_law_runs(seed)
        fit = fit_power_law(runs["tokens"], runs["val_loss"], irreducible=True, x_name="D", y_name="L",
                            bootstrap=200, seed=seed)
        table = compare_with_truth(fit, runs).set_index("parameter")
        assert set(table.index) == {"E", "alpha_D"}  # D_c has no known truth
        for name, value in truth.items():
            row = table.loc[name]
            assert row["truth"] == pytest.approx(value) and row["truth_column"] in runs
            assert row["error"] == pytest.approx(row["fitted"] - value)
            assert row["lower"] <= row["fitted"] <= row["upper"]
            assert abs(row["relative_error"]) < 0.1
            covered.append(row["covered"])
    # A binomial(40, 0.95) falls below 34 with probability under 1%.
    assert sum(covered) >= 34
    # Without an interval there is no coverage to report; without truth columns, nothing to compare.
    exact = compare_with_truth(fit_power_law(runs["tokens"], runs["val_loss"], irreducible=True, x_name="D",
                                             bootstrap=0), runs)
    assert exact["covered"].isna().all() and exact["error"].notna().all()
    with pytest.raises(ValueError, match="no fitted parameter has a known truth"):
        compare_with_truth(fit, runs.drop(columns=["val_loss_optimal", "true_exponent_data"]))
    mixed = runs.assign(val_loss_optimal=np.linspace(0.3, 0.4, len(runs)))
    with pytest.raises(ValueError, match="disagree on val_loss_optimal"):
        compare_with_truth(fit, mixed)
