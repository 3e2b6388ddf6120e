"""What a run's process executes, whichever launcher started it: `scaling run` (local children, or a
person), a SLURM array task (scaling/launch/slurm.py), a Ray task (scaling/launch/ray_launcher.py).

A launcher hands over jobs (scaling/launch/jobfile.py: the resolved spec, written before the run
starts); a person may name runs of a sweep file instead (`resolve`). Either way the spec is checked
here against the devices that the run really has (after `jax.distributed` has joined the hosts, so
the count is global), and the training goes through the one entry of the training tier,
scaling/training/run.py.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path
from typing import Callable

import jax

from scaling.config import ConfigError
from scaling.launch import distributed as dist
from scaling.launch.jobfile import Job, check_writable, jobs_of
from scaling.sweep import check_runs, load_sweep
from scaling.training.run import run_and_record, run_pack_and_record


def resolve(sweep_path: str | Path, run_ids: list[str], **overrides) -> list[Job]:
    """The jobs of runs `run_ids` of a sweep file, as a person names them (`scaling run SWEEP
    --run-id ID`; `overrides`: load_sweep's, for --set and --out). Raises ConfigError for a bad file
    or an unknown run id."""
    sweep = load_sweep(sweep_path, **overrides)
    by_id = {s.run_id: s for s in sweep.runs}
    for run_id in run_ids:
        if run_id not in by_id:
            raise ConfigError(str(sweep_path), "--run-id", f"no run {run_id!r} in this sweep (see --dry-run)")
    return jobs_of(sweep, [by_id[r] for r in run_ids])


def run_one(job: Job, *, on_step: Callable[[dict], None] | None = None, distributed: str = "auto",
            coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
            cwd: str | Path | None = None) -> dict:
    """Train one run (resuming from its checkpoint) and return its summary: at least run_id, status
    (complete | diverged | failed | locked) and error. It may span several processes.

    `cwd`: the folder the sweep was started from, for a task that starts elsewhere. Raises
    ConfigError for a spec that does not fit here, DistributedError for bad flags."""
    _enter(cwd, job)
    dist.initialize(distributed, coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    _check(job)
    if jax.process_index() != 0:
        on_step = None  # one progress report per run, from the process that writes its records
    return run_and_record(job.spec, job.out_dir, on_step=on_step, plan=job.plan)


def run_together(jobs: list[Job], *, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Train several runs in this one process and return each run's summary, in order: as packs where
    they may share one (scaling/training/pack.py), or, in a branched sweep, a trunk and its branches
    one after another (each branch resuming from the seed its trunk wrote: one process start-up and
    one loaded compiled step for the group). One process, no `jax.distributed`."""
    for job in jobs:
        _check(job)
    if not any(job.plan for job in jobs):
        return run_pack_and_record([job.spec for job in jobs], jobs[0].out_dir, on_step=on_step)
    results = []
    for job in jobs:
        tagged = (lambda event, r=job.spec.run_id: on_step({**event, "run_id": r})) if on_step else None
        result = run_and_record(job.spec, job.out_dir, on_step=tagged, plan=job.plan)
        results.append({**result, "run_id": job.spec.run_id})
    return results


def die_with_parent():
    """Linux: this (child) process gets SIGTERM when its parent dies, so no orphan keeps a run's lock.
    Called by the child itself: a preexec_fn would make Popen fork a multithreaded (JAX) parent."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def outcome(result: dict) -> dict:
    """The small, picklable part of a run's summary that a launcher reports back."""
    return {"run_id": result.get("run_id"), "status": result.get("status"), "error": result.get("error")}


def _enter(cwd, job: Job) -> None:
    if cwd is None:
        return
    try:
        os.chdir(cwd)
    except OSError as e:
        raise ConfigError(str(job.path), "", f"cannot enter the sweep's folder {cwd} on this machine ({e.strerror}); "
                          "launchers need a filesystem shared with the submitting host") from None


def _check(job: Job) -> None:
    """The spec fits the devices this run has, and its results folder takes records."""
    check_runs(job.sweep_file, [job.spec], jax.device_count())
    if jax.process_index() == 0:
        check_writable(job.sweep_file, job.out_dir, create=True)
