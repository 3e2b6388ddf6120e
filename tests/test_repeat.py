"""Repeated data (`[data] unique_tokens`): the batch order, the run ids, the records' unique_tokens and
epochs, and the refusals."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_sweep
from scaling import records
from scaling.cli import main
from scaling.data.batches import Batcher
from scaling.data.errors import DataError
from scaling.sweep import branch_plan as branching
from scaling.sweep.pack_plan import plan_packs
from scaling.sweep.reader import load_sweep
from scaling.training.run import Halt, train_run

ROOT = Path(__file__).resolve().parent.parent
TOKENS = np.arange(200_003, dtype=np.int64) % 251  # 3,125 windows of 64


def test_repeated_batches_cycle_with_period_unique_tokens_over_batch_tokens():
    seq_len, batch_size, period = 64, 8, 5
    batcher = Batcher(TOKENS, seq_len, batch_size, data_seed=3, unique_tokens=period * batch_size * seq_len)
    assert batcher.unique_tokens == period * batch_size * seq_len and batcher.n_windows == 3125
    first = [batcher.window_indices(s) for s in range(period)]
    seen = np.concatenate(first)
    assert len(set(seen.tolist())) == period * batch_size  # one epoch: every unique window once
    for step in range(period, 4 * period + 3):
        np.testing.assert_array_equal(batcher.batch(step), batcher.batch(step % period))
    # The unique windows are the first of the unrepeated order (a sample over the whole split), so
    # epoch 1 of a repeated run is the unrepeated run's first epoch cut short, and limits nest.
    plain = Batcher(TOKENS, seq_len, batch_size, data_seed=3)
    np.testing.assert_array_equal(seen, np.concatenate([plain.window_indices(s) for s in range(period)]))
    smaller = Batcher(TOKENS, seq_len, batch_size, data_seed=3, unique_tokens=2 * batch_size * seq_len)
    assert set(np.concatenate([smaller.window_indices(s) for s in range(2)])) <= set(seen)
    assert seen.max() > 3125 // 2  # not the split's first files only
    # Without the key, epoch 2 is a fresh order of every window (as before).
    epoch = 3125 // batch_size
    assert not np.array_equal(plain.window_indices(epoch + 1), plain.window_indices(1))


def test_a_repeated_batch_is_a_function_of_seed_step_and_unique_tokens_alone():
    make = lambda seed, unique: Batcher(TOKENS, 64, 8, data_seed=seed, unique_tokens=unique)  # noqa: E731
    a, b = make(0, 64 * 24), make(0, 64 * 24)
    np.testing.assert_array_equal(a.batch(17), b.batch(17))  # a fresh Batcher (a resumed run): the same
    assert not np.array_equal(make(1, 64 * 24).batch(17), a.batch(17))
    assert not np.array_equal(make(0, 64 * 32).batch(17), a.batch(17))
    # Multi-host shares: each process's rows are its slice of the global batch.
    np.testing.assert_array_equal(np.concatenate([a.batch(17, p, 2) for p in range(2)]), a.batch(17))


def test_the_batcher_refuses_too_many_or_too_few_unique_tokens():
    with pytest.raises(DataError, match="data.unique_tokens = 300,000 exceeds the train split's 200,000"):
        Batcher(TOKENS, 64, 8, 0, unique_tokens=300_000)
    with pytest.raises(DataError, match="data.unique_tokens = 500 is below one batch of 512"):
        Batcher(TOKENS, 64, 8, 0, unique_tokens=500)


REPEAT = """
[sweep]
name = "repeat"
out_dir = "{out}"
[data]
seq_len = 16
{data_extra}
[model]
head_dim = 8
[schedule]
kind = "wsd"
warmup = 0.1
decay = 0.2
{schedule_extra}
[train]
batch_tokens = 128
eval_points = 4
eval_sequences = 8
checkpoint_every = 10
[grid]
models = [{{ n_layer = 1, d_model = 16 }}]
tokens = [{tokens}]
{axes}
"""


def repeat_sweep(tmp_path, data_extra="", axes="", tokens="2560", schedule_extra="", name="repeat.toml"):
    return write_sweep(tmp_path / name, REPEAT.format(out=tmp_path / "out", data_extra=data_extra, axes=axes,
                                                      tokens=tokens, schedule_extra=schedule_extra))


def test_shipped_run_ids_are_unchanged_and_the_key_enters_run_id_only_when_set(tmp_path):
    # The shipped Kaplan sweep's smallest longest run keeps the id its records carry.
    kaplan = load_sweep(ROOT / "sweeps" / "kaplan.toml", out_dir=ROOT / "results" / "kaplan")
    assert "L1-d16-t4e6-s0-1e1faab3" in {s.run_id for s in kaplan.runs}
    assert all(s.data.unique_tokens is None for s in kaplan.runs)
    plain = load_sweep(repeat_sweep(tmp_path))
    repeated = load_sweep(repeat_sweep(tmp_path, data_extra="unique_tokens = 512"))
    assert plain.runs[0].run_id != repeated.runs[0].run_id
    assert repeated.runs[0].data.unique_tokens == 512


def test_unique_tokens_is_a_sweep_axis(tmp_path):
    sweep = load_sweep(repeat_sweep(tmp_path, tokens="1280, 2560",
                                    axes='[axes]\n"data.unique_tokens" = [4096, 2560, 1e3, 512]'))
    # A limit a run never reaches is no limit: those points are the runs without the key, once each.
    plain = load_sweep(repeat_sweep(tmp_path, tokens="1280, 2560", name="plain.toml"))
    assert [s.data.unique_tokens for s in sweep.runs] == [None, 1000, 512, None, 1000, 512]
    assert {s.run_id for s in plain.runs} <= {s.run_id for s in sweep.runs}
    assert len({s.run_id for s in sweep.runs}) == 6
    assert sweep.select(["unique_tokens=512"]) == (sweep.runs[2], sweep.runs[5])
    # Packs and branch groups never mix unique_tokens: their members share one batch order.
    assert sorted(len(p) for p in plan_packs(sweep.runs, 8)) == [1] * 6
    branched = load_sweep(repeat_sweep(tmp_path, tokens="1280, 2560", schedule_extra="branch = true",
                                       axes='[axes]\n"data.unique_tokens" = [1024, 512]'))
    plan = branching.plan(branched.runs)
    by_id = {s.run_id: s for s in branched.runs}
    assert len(plan.branches) == 2  # one trunk and one branch per unique_tokens
    for b in plan.branches.values():
        assert by_id[b.trunk].data.unique_tokens == b.spec.data.unique_tokens


@pytest.mark.parametrize("data_extra, axes, expected", [
    ("unique_tokens = 0", "", "data.unique_tokens: expected an integer >= 1, got 0"),
    ("unique_tokens = 100", "", "data.unique_tokens: 100 tokens is below one batch of 128 tokens"),
    ("unique_tokens = 1500.5", "", "data.unique_tokens: expected an integer, got 1500.5"),
    ("", '[axes]\n"data.unique_tokens" = [512, -1]', 'axes."data.unique_tokens"[1]: expected an integer >= 1'),
    ('source = "synthetic"\nunique_tokens = 4000\n[data.synthetic]\ntrain_tokens = 2000', "",
     "data.unique_tokens: 4,000 exceeds the 1,984 tokens of the train split"),
])
def test_bad_unique_tokens_are_one_line_exit_2(tmp_path, capsys, data_extra, axes, expected):
    path = repeat_sweep(tmp_path, data_extra=data_extra, axes=axes)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {expected}" in err, err


def _rows(out, run_id, name):
    return pq.read_table(records.run_dir(out, run_id) / name).to_pylist()


def test_records_count_epochs_and_unique_tokens_and_resume_exactly(tmp_path):
    """20 steps of 128 tokens over 512 unique tokens: 5 epochs; killed at step 10 and resumed, the
    same losses as uninterrupted (the batch at step k depends on (data_seed, k, unique_tokens) only)."""
    spec = load_sweep(repeat_sweep(tmp_path, data_extra="unique_tokens = 512"), device_count=1).runs[0]
    whole, halted = tmp_path / "whole", tmp_path / "halted"
    summary = train_run(spec, whole)
    history = _rows(whole, spec.run_id, "history.parquet")
    assert summary["unique_tokens"] == 512 and summary["epochs"] == pytest.approx(5.0)
    for row in history:
        assert row["unique_tokens"] == 512 and row["epochs"] == pytest.approx(row["tokens"] / 512)
    assert _rows(whole, spec.run_id, "summary.parquet")[0]["epochs"] == pytest.approx(5.0)
    with pytest.raises(Halt):
        train_run(spec, halted, halt_at=10)
    train_run(spec, halted)
    assert [r["val_loss"] for r in _rows(halted, spec.run_id, "history.parquet")] == [r["val_loss"] for r in history]


def test_a_run_without_the_key_records_the_whole_split(tmp_path):
    """unique_tokens is then the train split's size in whole windows, so epochs < 1 for a short run."""
    from scaling.data import open_source
    spec = load_sweep(repeat_sweep(tmp_path, tokens="256"), device_count=1).runs[0]
    train_run(spec, tmp_path / "out")
    split = (len(open_source("stdlib", vocab_size=256).train) - 1) // 16 * 16
    (row,) = _rows(tmp_path / "out", spec.run_id, "summary.parquet")
    assert row["unique_tokens"] == split and row["epochs"] == pytest.approx(256 / split)
