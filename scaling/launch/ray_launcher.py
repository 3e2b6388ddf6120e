"""The ray launcher (optional extra: `pip install 'scaling[ray]'`): one Ray task per run on an
existing Ray cluster. The runner never starts or sizes the cluster.

Each task runs in a fresh worker process (`max_calls=1`: JAX's device state and compiled programs
die with it, as in the local launcher) and runs one run the way `scaling run` does
(scaling/launch/job.py), on the GPUs Ray gives it (`[ray] num_gpus`; Ray sets CUDA_VISIBLE_DEVICES). One
run is one process here: a run spanning hosts goes through SLURM or `scaling run --coordinator`.
At most `max_parallel` tasks are in flight. Workers read the sweep file and write the records
where the driver sees them: the cluster needs a shared filesystem, as SLURM does.
"""

from __future__ import annotations

import os

from scaling.launch import jobfile
from scaling.launch.report import LaunchError, SweepReport, finish_run, pending_runs
from scaling.sweep.reader import SweepConfig


def _run_task(spec_file: str, cwd: str) -> dict:
    """One run in a Ray worker, from the spec.json the driver wrote (scaling/launch/jobfile.py)."""
    from scaling.launch.job import outcome, run_one  # in the worker's process: JAX is imported there
    return outcome(run_one(jobfile.read(spec_file), cwd=cwd, distributed="off"))


def connect(address: str | None):
    """`ray.init(address=...)` unless this process is already connected (tests start a local one)."""
    try:
        import ray
    except ImportError:
        raise LaunchError("the ray launcher needs Ray: pip install 'scaling[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LaunchError(f"no Ray cluster at address {address!r} ({first}); start one with "
                              "`ray start --head` or set [ray] address / --ray-address") from None
    return ray


def run_ray(sweep: SweepConfig, runs, *, max_parallel: int | None = None, quiet: bool = False) -> SweepReport:
    """Run the sweep's unfinished runs as Ray tasks and wait for them (Ray cancels a driver's tasks
    when the driver exits, so this launcher always waits)."""
    report = SweepReport()
    todo = pending_runs(sweep, runs, report)
    if not todo:
        return report
    ray = connect(sweep.ray.address)
    remote = ray.remote(max_calls=1, num_cpus=sweep.ray.num_cpus, num_gpus=sweep.ray.num_gpus)(_run_task)
    workers = max_parallel or sweep.max_parallel
    cwd = os.getcwd()
    queue, active = jobfile.jobs_of(sweep, todo), {}
    try:
        while queue or active:
            while queue and len(active) < workers:
                job = queue.pop(0)
                spec = job.spec
                active[remote.remote(str(jobfile.write(job)), cwd)] = spec
                report.submitted.append(spec.run_id)
                if not quiet:
                    print(f"submitted {spec.run_id}", flush=True)
            report.max_running = max(report.max_running, len(active))
            ready, _ = ray.wait(list(active), num_returns=1)
            for ref in ready:
                spec = active.pop(ref)
                try:
                    out = ray.get(ref)
                    status, error = out.get("status"), out.get("error")
                except Exception as e:  # noqa: BLE001 - a crashed worker, an exception in the task
                    status, error = None, _task_error(e)
                status = finish_run(report, sweep, spec, status, error)
                print(f"{status} {spec.run_id}" + (f": {error}" if error else ""), flush=True)
    finally:
        for ref in active:
            ray.cancel(ref, force=True)
    return report


def _task_error(e: Exception) -> str:
    """Ray wraps a task's exception with its traceback; the last line names the error."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]
