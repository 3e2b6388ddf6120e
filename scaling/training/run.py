"""Runs from their specs to their records, under their locks: the entry that launchers use
(scaling/launch/job.py). The training itself is the one loop of scaling/training/loop.py.

    run_and_record(spec, out_dir)          one run (also over several processes)
    run_pack_and_record(specs, out_dir)    runs of one process, trained as packs where they may be
    preemption                             the stop signals a run obeys (SLURM's SIGUSR2, SIGINT, SIGTERM)

Each run's status is read again under its lock: a run that another process completed (or found
diverged) while this one waited is returned as it is, with `already` set, and nothing of it is
trained or written. An exception of a run becomes status `failed` with its text; the sweep goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import numpy as np

from scaling import records
from scaling.config import RunSpec
from scaling.sweep.pack_plan import pack_key
from scaling.training import preemption  # the stop-signal protocol that runs obey: launchers install it
from scaling.training.checkpoint import Checkpoints
from scaling.training.loop import Halt, enable_compilation_cache, train
from scaling.training.pack import PackError

__all__ = ["Halt", "enable_compilation_cache", "preemption", "run_and_record", "run_pack_and_record", "train_pack",
           "train_run"]

LOCKED = "another process is training this run"


def train_run(spec: RunSpec, out_dir: str | Path, **kwargs) -> dict:
    """Train `spec` alone (resuming from its checkpoint, or a branch's seed) and write its records;
    its summary row. Keyword arguments: those of `loop.Loop` (on_step, devices, halt_at, plan)."""
    return train([spec], out_dir, **kwargs)[0]


def train_pack(specs, out_dir: str | Path, **kwargs) -> list[dict]:
    """Train `specs` as one pack (resuming from their checkpoints, which must be at one step); one
    summary row per run, in order. Raises PackError before anything is written when the runs cannot
    be packed here."""
    return train(list(specs), out_dir, **kwargs)


def _claim(spec: RunSpec, out_dir) -> tuple[records.RunLock | None, dict | None]:
    """The run's lock, or the result to return instead of training: `locked`, or the status of a
    run found finished under the lock."""
    path = records.run_dir(out_dir, spec.run_id)
    lock = records.RunLock(path)
    if not lock.acquire():
        return None, {"run_id": spec.run_id, "status": "locked", "error": LOCKED}
    status = records.read_status(path)
    if status in records.DONE:
        lock.release()
        return None, {"run_id": spec.run_id, "status": status, "error": None, "already": True}
    return lock, None


def run_and_record(spec: RunSpec, out_dir: str | Path, **kwargs) -> dict:
    """`train_run` under the run's lock. Multi-host: process 0 claims the run and tells the others
    the verdict; only process 0 writes records."""
    lead = jax.process_index() == 0
    lock, answer = _claim(spec, out_dir) if lead else (None, None)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        # 0: train it; 1: another process holds it; 2 + i: it is already DONE[i].
        verdict = 0 if answer is None else 1 if answer["status"] == "locked" else 2 + records.DONE.index(answer["status"])
        verdict = int(multihost_utils.broadcast_one_to_all(np.int32(verdict)))
        if verdict and answer is None:
            answer = ({"run_id": spec.run_id, "status": "locked", "error": LOCKED} if verdict == 1 else
                      {"run_id": spec.run_id, "status": records.DONE[verdict - 2], "error": None, "already": True})
    if answer is not None:
        return answer
    try:
        return train_run(spec, out_dir, **kwargs)
    except Halt:
        raise
    except Exception as e:  # noqa: BLE001 - any error of one run must not stop the sweep
        message = records.record_error(spec, out_dir, e) if lead else records.error_line(e)
        return {"run_id": spec.run_id, "status": "failed", "error": message}
    finally:
        if lock is not None:
            lock.release()


def run_pack_and_record(specs, out_dir: str | Path, *, on_step: Callable[[dict], None] | None = None,
                        devices=None, halt_at: int | None = None) -> list[dict]:
    """Train `specs` as packs under their run locks and return each run's outcome, in order: status
    complete | diverged | failed | locked and error.

    Runs already finished are skipped (their recorded status is returned, read under their lock);
    runs another process holds are `locked`. The rest are grouped by what they compute (`pack_key`)
    and the step their checkpoints resume from, and each group trains as one pack (a group of one
    trains alone). When a group cannot be packed here (`PackError`: a mesh of several devices), its
    runs train alone, one after another. Events passed to `on_step` carry the run's `run_id`."""
    results: dict[str, dict] = {}
    todo, locks = [], []
    for spec in specs:
        lock, answer = _claim(spec, out_dir)
        if answer is not None:
            results[spec.run_id] = answer
            continue
        locks.append(lock)
        todo.append(spec)
    kwargs = {"on_step": on_step, "devices": devices, "halt_at": halt_at}
    try:
        groups: dict[tuple, list[RunSpec]] = {}
        for spec in todo:
            groups.setdefault((pack_key(spec), _latest_checkpoint(spec, out_dir)), []).append(spec)
        for group in groups.values():
            try:
                outcomes = train_pack(group, out_dir, **kwargs)
            except PackError:
                outcomes = [_alone(spec, out_dir, kwargs) for spec in group]
            except Halt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded per run, like a lone run's error
                outcomes = [_record_failure(spec, out_dir, e) for spec in group]
            results.update((spec.run_id, result) for spec, result in zip(group, outcomes))
    finally:
        for lock in locks:
            lock.release()
    return [results[s.run_id] for s in specs]


def _latest_checkpoint(spec: RunSpec, out_dir) -> int | None:
    folder = records.run_dir(out_dir, spec.run_id) / "checkpoints"
    if not folder.exists():
        return None
    ckpt = Checkpoints(folder)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _record_failure(spec: RunSpec, out_dir, error: Exception) -> dict:
    """A run whose records do not say it finished is marked failed with `error`."""
    status = records.read_status(records.run_dir(out_dir, spec.run_id))
    if status in records.DONE:
        return {"run_id": spec.run_id, "status": status, "error": None}
    return {"run_id": spec.run_id, "status": "failed", "error": records.record_error(spec, out_dir, error)}


def _alone(spec: RunSpec, out_dir, kwargs: dict) -> dict:
    """`train_run` with the run's lock already held (by this process)."""
    try:
        return train_run(spec, out_dir, **kwargs)
    except Halt:
        raise
    except Exception as e:  # noqa: BLE001 - one run's error must not stop the others
        return _record_failure(spec, out_dir, e)
