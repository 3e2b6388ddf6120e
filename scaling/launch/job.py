"""One run of a sweep, started the same way by every launcher: `scaling run`, a SLURM array task
(scaling/launch/slurm.py), a Ray task (scaling/launch/ray_launcher.py).

The sweep file is read again where the run starts, and validated against the devices that the run
really has there (after `jax.distributed` has joined the hosts, so the count is global).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from scaling import records
from scaling.config import ConfigError


def run_one(sweep_path: str | Path, run_id: str, *, on_step: Callable[[dict], None] | None = None,
            distributed: str = "auto", coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, cwd: str | Path | None = None) -> dict:
    """Train run `run_id` of the sweep file (resuming from its checkpoint) and return its summary:
    at least run_id, status (complete | diverged | failed | locked) and error.

    `cwd`: the folder the sweep was started from (relative paths in the file resolve against it).
    Raises ConfigError for a sweep file that is wrong here, DistributedError for bad flags."""
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as e:
            raise ConfigError(str(sweep_path), "", f"cannot enter the sweep's folder {cwd} on this machine "
                              f"({e.strerror}); launchers need a filesystem shared with the submitting host") from None
    from scaling.launch import distributed as dist
    dist.initialize(distributed, coordinator=coordinator, num_processes=num_processes, process_id=process_id)

    import jax

    from scaling.training.run import run_and_record
    from scaling.sweep.reader import load_sweep
    sweep = load_sweep(sweep_path, device_count=jax.device_count())
    spec = next((s for s in sweep.runs if s.run_id == run_id), None)
    if spec is None:
        raise ConfigError(str(sweep_path), "--run-id", f"no run {run_id!r} in this sweep (see --dry-run)")
    if jax.process_index() == 0:
        check_out_dir(sweep)
    if jax.process_index() != 0:
        on_step = None  # one progress report per run, from the process that writes its records
    plan = None
    if sweep.branch:
        from scaling.sweep.branch_plan import plan as branch_plan
        plan = branch_plan(sweep.runs)
    return run_and_record(spec, sweep.out_dir, on_step=on_step, plan=plan)


def check_out_dir(sweep, *, create: bool = True) -> None:
    """Raises ConfigError unless the sweep's results folder can take records, before anything trains:
    `create` makes it if missing; else (a dry run) nothing is written (`records.writable`)."""
    problem = records.writable(sweep.out_dir, create=create)
    if problem:
        raise ConfigError(sweep.path, "sweep.out_dir", f"{sweep.out_dir}: {problem}; expected a folder this "
                          "user can write the records to")


def outcome(result: dict) -> dict:
    """The small, picklable part of a run's summary that a launcher reports back."""
    return {"run_id": result.get("run_id"), "status": result.get("status"), "error": result.get("error")}


def run_pack(sweep_path: str | Path, run_ids: list[str], *, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Train runs `run_ids` of the sweep file together in this one process, as packs where they may
    share one (scaling/training/pack.py), or, in a branched sweep, a trunk and its branches one after another;
    return each run's summary, in order. One process, no
    `jax.distributed`. Raises ConfigError for an unknown run id."""
    import jax

    from scaling.training.pack import run_pack_and_record
    from scaling.sweep.reader import load_sweep
    sweep = load_sweep(sweep_path, device_count=jax.device_count())
    by_id = {s.run_id: s for s in sweep.runs}
    for run_id in run_ids:
        if run_id not in by_id:
            raise ConfigError(str(sweep_path), "--run-id", f"no run {run_id!r} in this sweep (see --dry-run)")
    check_out_dir(sweep)
    if sweep.branch:
        # A trunk and its branches (launch.local_jobs): one after another in this process, the
        # trunk first, each branch resuming from the seed the trunk wrote. One process start-up
        # and one loaded compiled step for the group instead of one per run.
        from scaling.sweep.branch_plan import plan as branch_plan
        from scaling.training.run import run_and_record
        plan = branch_plan(sweep.runs)
        results = []
        for run_id in run_ids:
            tagged = (lambda event, r=run_id: on_step({**event, "run_id": r})) if on_step else None
            result = run_and_record(by_id[run_id], sweep.out_dir, on_step=tagged, plan=plan)
            results.append({**result, "run_id": run_id})
        return results
    return run_pack_and_record([by_id[r] for r in run_ids], sweep.out_dir, on_step=on_step)
