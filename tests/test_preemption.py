"""A job's stop signal (SLURM's SIGUSR2) stops a run between steps, after a checkpoint of that step,
and only then reaches the handler that was there before (submitit's, which requeues and exits).

The end-to-end version, through submitit's local executor, is in test_launchers.py."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import tiny_sweep
from scaling import records
from scaling.training import preemption
from scaling.training.checkpoint import Checkpoints
from scaling.sweep.reader import load_sweep


class Requeued(BaseException):
    """What the stand-in for submitit's handler raises (submitit's exits the process)."""


@pytest.fixture
def handler():
    """A Python handler for SIGUSR2 that records when it ran, as submitit installs one."""
    calls = []

    def requeue(signum, frame):
        calls.append(signum)
        raise Requeued()

    previous = signal.signal(signal.SIGUSR2, requeue)
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def _signal_self():
    os.kill(os.getpid(), signal.SIGUSR2)


def test_a_run_stops_at_the_next_step_saves_it_and_resumes_to_the_uninterrupted_result(tmp_path, handler):
    from scaling.training.run import train_run
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    assert spec.steps == 25 and spec.train.checkpoint_every == 10
    whole = train_run(spec, tmp_path / "whole")

    signalled = []

    def on_step(progress):  # called with step s once step s + 1 is dispatched
        if progress["step"] >= 4 and not signalled:
            signalled.append(progress["step"])
            _signal_self()

    with pytest.raises(Requeued):
        with preemption.deferred():
            train_run(spec, tmp_path / "out", on_step=on_step)
    assert handler == [signal.SIGUSR2]
    run = records.run_dir(tmp_path / "out", spec.run_id)
    saved = Checkpoints(run / "checkpoints").latest_step()
    assert saved == signalled[0] + 1 < 10, "the step in flight when the signal came is saved, not step 10"
    assert records.read_status(run) == "running"

    resumed = train_run(spec, tmp_path / "out")
    assert resumed["status"] == "complete"
    assert (resumed["val_loss"], resumed["train_loss"]) == (whole["val_loss"], whole["train_loss"])
    assert [r["val_loss"] for r in records.read_rows(run / "history.parquet")] == \
        [r["val_loss"] for r in records.read_rows(records.run_dir(tmp_path / "whole", spec.run_id) / "history.parquet")]


def test_a_signal_during_a_checkpoint_write_waits_for_the_write(tmp_path, handler, monkeypatch):
    from scaling.training.run import train_run
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    real_save = Checkpoints.save
    seen = []

    def save_and_signal(self, step, state, host):
        if step == 10:
            _signal_self()  # while this save runs: it must complete before anything stops
        real_save(self, step, state, host)
        seen.append((step, list(handler)))

    monkeypatch.setattr(Checkpoints, "save", save_and_signal)
    with pytest.raises(Requeued):
        with preemption.deferred():
            train_run(spec, tmp_path / "out")
    # The handler had not run when the step-10 save returned; the run then stopped at step 10.
    assert seen[-1] == (10, []) and handler == [signal.SIGUSR2]
    run = records.run_dir(tmp_path / "out", spec.run_id)
    assert Checkpoints(run / "checkpoints").latest_step() == 10


def test_outside_a_polling_run_the_signal_is_handed_on_at_once_or_after_the_write(handler):
    with preemption.deferred():
        with pytest.raises(Requeued):
            _signal_self()
        assert handler == [signal.SIGUSR2]
        with pytest.raises(Requeued):
            with preemption.critical():
                _signal_self()
                assert handler == [signal.SIGUSR2], "waits while a checkpoint is being written"
        assert handler == [signal.SIGUSR2] * 2
    assert signal.getsignal(signal.SIGUSR2) is not preemption._on_signal


def test_without_a_python_handler_nothing_is_deferred():
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with preemption.deferred():
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_checkpoint_being_written_is_finished_before_the_handler_runs(tmp_path, handler):
    import numpy as np
    ckpt = Checkpoints(tmp_path / "checkpoints")
    write = ckpt.manager.save

    def signal_then_write(*args, **kwargs):
        _signal_self()  # arrives as orbax starts writing
        return write(*args, **kwargs)

    ckpt.manager.save = signal_then_write
    with preemption.deferred():
        with pytest.raises(Requeued):
            ckpt.save(7, {"w": np.arange(3.0)}, {"losses_since_eval": []})
    assert handler == [signal.SIGUSR2] and ckpt.latest_step() == 7
    ckpt.close()
