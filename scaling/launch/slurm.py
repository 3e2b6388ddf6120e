"""The slurm launcher: one SLURM job array per sweep, through submitit.

Each array task runs one run the way `scaling run` does (scaling/launch/job.py), on `nodes` x
`gpus_per_node` devices with one process per GPU (JAX joins them: scaling/launch/distributed.py). At most
`max_parallel` tasks run at once (`#SBATCH --array=0-N%max_parallel`).

Preemption and time-outs: SLURM sends SIGUSR2 `signal_delay_s` before it kills the job. A run in
one process finishes its step, saves a checkpoint of it and stops (scaling/training/preemption.py); submitit
then calls the task's `checkpoint()`, which resubmits the same task, and requeues the job. The task
starts again and the runner resumes from that checkpoint, so no step is trained twice. A run over
several processes is stopped by submitit at once (after any checkpoint being written) and resumes
from its last checkpoint (saved every `checkpoint_every` steps and at every evaluation). A run
longer than the time limit therefore chains through several jobs (at most `max_timeouts` + 1).

Submitit's pickles and the jobs' logs go to `[slurm] folder` (default `<out_dir>/slurm`), which,
like the sweep file and the results, must be on a filesystem the compute nodes share.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import submitit

from scaling.config import SlurmConfig
from scaling.launch import jobfile
from scaling.launch.report import LaunchError, SweepReport, finish_run, pending_runs
from scaling.sweep.reader import SweepConfig
from scaling.training.run import preemption

# How often the waiting launcher asks about its jobs (submitit caches `sacct` between asks).
POLL_SECONDS = {"slurm": 30.0, "local": 1.0, "debug": 0.0}


class RunTask(submitit.helpers.Checkpointable):
    """One run of a sweep, as a picklable callable (what one array task executes): the path of the
    run's spec.json, which this launcher writes before submitting (scaling/launch/jobfile.py), so a
    queued task trains what was submitted whatever happens to the sweep file meanwhile.

    `checkpoint()` (inherited) resubmits this same task when the job is preempted or times out; the
    run itself needs nothing pickled, since it resumes from its own checkpoint folder."""

    def __init__(self, spec_file: str, cwd: str, distributed: str = "auto"):
        self.spec_file, self.cwd, self.distributed = spec_file, cwd, distributed

    def __call__(self) -> dict:
        from scaling.launch.job import outcome, run_one  # in the task's process: JAX is imported there
        with preemption.deferred():  # SIGUSR2 stops the run between steps, then submitit requeues
            return outcome(run_one(jobfile.read(self.spec_file), cwd=self.cwd, distributed=self.distributed))
        # Reached only where submitit's handler returned instead of exiting (a task of rank > 0).
        return {"run_id": Path(self.spec_file).parent.name, "status": "preempted", "error": None}

    def __repr__(self) -> str:
        return f"RunTask({Path(self.spec_file).parent.name})"


def folder(sweep: SweepConfig) -> Path:
    return Path(sweep.slurm.folder or Path(sweep.out_dir) / "slurm").resolve()


def executor_parameters(sweep: SweepConfig, max_parallel: int) -> dict:
    """SlurmExecutor.update_parameters arguments (sbatch's own names)."""
    cfg: SlurmConfig = sweep.slurm
    params = dict(job_name=f"scaling-{sweep.name}", time=cfg.time_min, nodes=cfg.nodes,
                  ntasks_per_node=cfg.tasks_per_node, signal_delay_s=cfg.signal_delay_s,
                  array_parallelism=max_parallel)
    mem = None if cfg.mem_gb is None else (f"{int(cfg.mem_gb)}GB" if cfg.mem_gb == int(cfg.mem_gb)
                                           else f"{int(cfg.mem_gb * 1024)}MB")
    optional = dict(gpus_per_node=cfg.gpus_per_node or None, cpus_per_task=cfg.cpus_per_task, mem=mem,
                    partition=cfg.partition, account=cfg.account, qos=cfg.qos, constraint=cfg.constraint,
                    setup=list(cfg.setup) or None)
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def make_executor(sweep: SweepConfig, max_parallel: int, cluster: str = "slurm") -> submitit.Executor:
    """The submitit executor: `slurm` for a cluster; `local` (each job a local process) or `debug`
    (in this process) to try the same code path without one."""
    if cluster == "slurm":
        ex = submitit.SlurmExecutor(folder(sweep), max_num_timeout=sweep.slurm.max_timeouts)
        ex.update_parameters(**executor_parameters(sweep, max_parallel))
        return ex
    ex = submitit.AutoExecutor(folder(sweep), cluster=cluster)
    ex.update_parameters(timeout_min=sweep.slurm.time_min, name=f"scaling-{sweep.name}")
    return ex


class _ScriptOnlyExecutor(submitit.SlurmExecutor):
    """A SlurmExecutor that can be built where `srun` is missing, to show the batch script."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def sbatch_script(sweep: SweepConfig, n_runs: int, max_parallel: int) -> str:
    """The batch script that `run_slurm` submits for `n_runs` runs, made by submitit itself without
    submitting anything (`scaling sweep --launcher slurm --dry-run` prints it)."""
    ex = _ScriptOnlyExecutor(folder(sweep), max_num_timeout=sweep.slurm.max_timeouts)
    ex.update_parameters(**executor_parameters(sweep, max_parallel))
    if n_runs > 1:
        ex.parameters["map_count"] = n_runs  # what submitit sets for a job array
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


def run_slurm(sweep: SweepConfig, runs, *, max_parallel: int | None = None, wait: bool = False,
              quiet: bool = False, cluster: str = "slurm") -> SweepReport:
    """Submit the sweep's unfinished runs as one job array; with `wait`, follow the jobs to the end.

    `cluster="local"` runs the same tasks as local submitit jobs (no arrays there: this launcher then
    keeps at most `max_parallel` of them going) and always waits."""
    report = SweepReport()
    todo = pending_runs(sweep, runs, report)
    if not todo:
        return report
    workers = max_parallel or sweep.max_parallel
    wait = wait or cluster != "slurm"
    report.awaited = wait
    # Each task trains from the spec written here (absolute paths), in this folder.
    cwd = os.getcwd()
    tasks = [(job.spec, RunTask(str(jobfile.write(job)), cwd, "auto" if cluster == "slurm" else "off"))
             for job in jobfile.jobs_of(sweep, todo)]
    try:
        ex = make_executor(sweep, workers, cluster)
    except (RuntimeError, ValueError, OSError) as e:
        raise LaunchError(f"cannot submit to {cluster}: {_first_line(e)}") from None

    active: dict[str, tuple[object, object]] = {}  # job_id -> (job, spec)
    queue = list(tasks)
    if cluster == "slurm":
        try:
            jobs = ex.submit_array([task for _, task in tasks])
        except Exception as e:  # noqa: BLE001 - sbatch's own message is the error text
            raise LaunchError(f"sbatch refused the job array, nothing was submitted: {_sbatch_error(e)}") from None
        for job, (spec, _) in zip(jobs, tasks):
            active[job.job_id] = (job, spec)
            report.submitted.append(spec.run_id)
        queue = []
        array_id = jobs[0].job_id.split("_")[0]
        report.notes.append(f"job array {array_id}: {len(jobs)} runs, at most {min(workers, len(jobs))} at once; "
                            f"logs in {folder(sweep)}")
        if not wait:
            report.notes.append(f"follow with `squeue -j {array_id}` and `scaling status {sweep.out_dir}`; once "
                                "the array is done, rerun this command to resubmit the runs that did not complete")
            return report

    while queue or active:
        while queue and len(active) < workers:
            spec, task = queue.pop(0)
            job = ex.submit(task)
            active[job.job_id] = (job, spec)
            report.submitted.append(spec.run_id)
            if not quiet:
                print(f"submitted {spec.run_id} as job {job.job_id}", flush=True)
        report.max_running = max(report.max_running, len(active))
        done = [job_id for job_id, (job, _) in active.items() if job.done()]
        for job_id in done:
            job, spec = active.pop(job_id)
            status, error = _result(job)
            status = finish_run(report, sweep, spec, status, error)
            print(f"{status} {spec.run_id}" + (f": {error}" if error else ""), flush=True)
        if not done:
            time.sleep(POLL_SECONDS.get(cluster, 1.0))
    return report


def _result(job) -> tuple[str | None, str | None]:
    """(status, error) of a finished job: the run's own summary, or None and the job's error."""
    try:
        out = job.result()
    except Exception as e:  # noqa: BLE001 - a failed or killed job (OOM, node failure, too many time-outs)
        return None, f"job {job.job_id}: {_job_error(e)}"
    return out.get("status"), out.get("error")


def _job_error(e: Exception) -> str:
    """The last line of the job's traceback when submitit has one, else the first line of the error."""
    text = str(e)
    trace = text.split("You can check full logs")[0]
    lines = [line.strip() for line in trace.splitlines() if line.strip() and not line.startswith("---")]
    return lines[-1][:300] if len(lines) > 1 else _first_line(e)


def _sbatch_error(e: Exception) -> str:
    """submitit wraps sbatch's stderr in a longer message; keep sbatch's own words."""
    lines = [line.strip() for line in str(e).splitlines() if "error" in line.lower()]
    return (lines[-1] if lines else _first_line(e))[:300]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
