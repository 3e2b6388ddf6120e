"""Metrics against hand-computed values; the jitted eval step against them; the objective options."""

import dataclasses
import math

import numpy as np
import pytest

from conftest import tiny_sweep
from scaling.science import metrics
from scaling.training import sharding as shd
from scaling.training import step as tr
from scaling.config import MeshConfig
from scaling.data.batches import Batcher, validation_windows
from scaling.data.sources import open_source
from scaling.sweep.reader import load_sweep


def test_entropy_by_hand():
    assert metrics.entropy([0.5, 0.5]) == pytest.approx(math.log(2))
    assert metrics.entropy([1.0, 0.0, 0.0]) == 0.0
    assert metrics.entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert metrics.entropy([0.9, 0.1]) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_ece_by_hand():
    # Bins of width 1/15. Two predictions at 0.95 (bin 14), one right: |0.5 - 0.95| * 2/4.
    # Two at 0.5 (bin 7), both right: |1.0 - 0.5| * 2/4. ECE = 0.225 + 0.25.
    conf = [0.95, 0.95, 0.5, 0.5]
    correct = [1, 0, 1, 1]
    assert metrics.ece(conf, correct) == pytest.approx(0.225 + 0.25)
    assert metrics.ece([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)  # calibrated
    assert metrics.ece([1.0], [1]) == 0.0  # a confidence of 1 falls in the last bin
    table = metrics.reliability_table(metrics.reliability_bins(conf, correct))
    assert len(table) == 15 and table[14]["accuracy"] == 0.5 and table[14]["confidence"] == pytest.approx(0.95)
    assert table[7]["count"] == 2 and math.isnan(table[0]["accuracy"])


def test_brier_by_hand():
    assert metrics.brier([[1.0, 0.0]], [0])[0] == 0.0
    assert metrics.brier([[0.0, 1.0]], [0])[0] == 2.0
    assert metrics.brier([[0.5, 0.5]], [0])[0] == pytest.approx(0.5)
    assert metrics.brier([[0.7, 0.2, 0.1]], [1])[0] == pytest.approx(0.49 + 0.64 + 0.01)


def test_edit_distance_by_hand():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance("", "abc") == 3 and metrics.edit_distance("abc", "") == 3
    assert metrics.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert metrics.edit_distance("582", "258") == 2
    assert metrics.edit_distance(b"flaw", b"lawn") == 2


def test_distinct_n_and_repetition_by_hand():
    seqs = [[1, 2, 1, 2], [3, 3, 3, 3]]
    assert metrics.distinct_n(seqs, 1) == pytest.approx(3 / 8)
    assert metrics.distinct_n(seqs, 2) == pytest.approx(3 / 6)  # (1,2) (2,1) (3,3)
    assert metrics.distinct_n(seqs, 3) == pytest.approx(3 / 4)  # (1,2,1) (2,1,2) (3,3,3)
    # seq-rep-2: [1,2,1,2] has 3 bigrams, 2 distinct -> 1/3; [3,3,3,3] -> 1 - 1/3.
    assert metrics.repetition_rate(seqs, 2) == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert metrics.repetition_rate([[1, 2, 3, 4, 5]], 4) == 0.0


@pytest.fixture(scope="module")
def tiny_program(tmp_path_factory):
    spec = load_sweep(tiny_sweep(tmp_path_factory.mktemp("m")), device_count=1).runs[0]
    mesh = shd.make_mesh(MeshConfig(size=1))
    return spec, mesh, tr.build_program(spec, mesh)


def test_eval_step_entropy_and_ece_match_the_numpy_definitions(tiny_program):
    spec, mesh, program = tiny_program
    params = program.init_params()
    # Sharper than at initialisation, so confidences spread over several bins.
    params = {k: v * 40 if v.ndim == 2 else v for k, v in params.items()}
    windows = validation_windows(open_source("stdlib").val, spec.model.seq_len, 8)
    ev = tr.evaluate(program, params, windows, 8)
    logits = np.asarray(program.model(params)(windows[:, :-1]), dtype=np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    targets = windows[:, 1:]
    assert ev["val_entropy"] == pytest.approx(metrics.entropy(probs).mean(), rel=1e-4)
    correct = probs.argmax(-1) == targets
    assert ev["val_ece"] == pytest.approx(metrics.ece(probs.max(-1), correct), abs=1e-4)
    assert sum(c > 0 for c in ev["ece_bins"]["bin_count"]) >= 2


def _trained_entropy(spec, mesh, steps=30):
    program = tr.build_program(spec, mesh)
    params = program.init_params()
    opt_state = program.init_opt_state(params)
    source = open_source("stdlib")
    batcher = Batcher(source.train, spec.model.seq_len, spec.batch_size, 0)
    shape = (1, spec.batch_size, spec.model.seq_len + 1)
    for s in range(steps):
        batch = tr.to_global(batcher.batch(s)[None], shd.batch_sharding(mesh), shape)
        params, opt_state, _ = program.train_step(params, opt_state, batch)
    windows = validation_windows(source.val, spec.model.seq_len, 8)
    return tr.evaluate(program, params, windows, 8)


def _variant(spec, **train):
    spec = dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, lr=1e-2))
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **train))


def test_entropy_bonus_raises_predictive_entropy(tiny_program):
    """entropy_coef > 0 (the confidence penalty of Pereyra et al. 2017) leaves the model less sure
    than plain cross-entropy after the same steps."""
    spec, mesh, _ = tiny_program
    plain = _trained_entropy(_variant(spec), mesh)
    bonus = _trained_entropy(_variant(spec, entropy_coef=0.5), mesh)
    assert bonus["val_entropy"] > plain["val_entropy"] + 0.1


@pytest.mark.slow
def test_negative_entropy_coef_sharpens_and_label_smoothing_softens(tiny_program):
    spec, mesh, _ = tiny_program
    plain = _trained_entropy(_variant(spec), mesh)
    sharpen = _trained_entropy(_variant(spec, entropy_coef=-0.3), mesh)
    smooth = _trained_entropy(_variant(spec, label_smoothing=0.3), mesh)
    assert sharpen["val_entropy"] < plain["val_entropy"] - 0.1
    assert smooth["val_entropy"] > plain["val_entropy"] + 0.1
