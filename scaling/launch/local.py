"""The local launcher: every run in its own process, at most `max_parallel` at once, each trained
from the spec.json written for it (scaling/launch/jobfile.py); it fills in the sweep's report
(scaling/launch/report.py) as the SLURM and Ray launchers do.

A crash or out-of-memory in one run cannot take the sweep down: the parent records it as failed and
goes on. Children report progress as JSON lines on stdout; the parent draws one rich progress view
(the sweep's runs and ETA, and each active run's step, loss and tokens/s), or plain lines in quiet mode.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time

from scaling import records
from scaling.config import RunSpec
from scaling.launch import cpu, jobfile
from scaling.launch.display import Display
from scaling.launch.report import SweepReport, finish_run, pending_runs, run_flops
from scaling.sweep.branch_plan import plan as branch_plan
from scaling.sweep.pack_plan import PACK_PRESET, plan_packs
from scaling.sweep.reader import SweepConfig


def local_jobs(sweep: SweepConfig, todo: list[RunSpec], report: SweepReport, workers: int = 1) -> list[list[RunSpec]]:
    """The runs of each local process: one run each, or with `pack = true` packs of runs that train
    together (scaling/training/pack.py), largest work first. A pack needs the dp mesh preset (parameters
    replicated); runs with another preset train alone (and the report says so)."""
    if sweep.branch and workers == 1:
        return branch_jobs(sweep, todo)
    if not sweep.pack:  # (branch and pack exclude each other: with several workers a branch starts
        return [[spec] for spec in todo]  # in its own process as soon as its seed is there)
    single, alone = [], []
    for spec in todo:
        (single if spec.mesh.preset == PACK_PRESET else alone).append(spec)
    alone = [[spec] for spec in alone]
    if alone:
        report.notes.append(f"pack = true: {len(alone)} run(s) have a mesh preset other than dp and train alone")
    jobs = plan_packs(single, sweep.pack_size) + alone
    return sorted(jobs, key=lambda job: sum(map(run_flops, job)), reverse=True)


def branch_jobs(sweep: SweepConfig, todo: list[RunSpec]) -> list[list[RunSpec]]:
    """A branched sweep's processes, one run at a time: each trunk with its unfinished branches,
    trunk first (a branch costs only its cool-down, so a process start-up of its own would be a
    large part of it), and each branch whose trunk is done or not in `todo`, alone. Largest work
    first."""
    plan = branch_plan(sweep.runs)
    groups: dict[str, list[RunSpec]] = {}
    for spec in todo:
        b = plan.branches.get(spec.run_id)
        groups.setdefault(b.trunk if b else spec.run_id, []).append(spec)
    jobs = [sorted(g, key=lambda s: s.run_id != trunk) for trunk, g in groups.items()]
    return sorted(jobs, key=lambda job: sum(map(run_flops, job)), reverse=True)


def _next_job(queue: list[list[RunSpec]], plan, out_dir, unfinished: set[str], idle: bool) -> list[RunSpec] | None:
    """The first queued job that may start: a branch waits for its trunk's seed (scaling/sweep/branch_plan.py);
    when nothing runs, the first job starts anyway (a branch without a seed trains from step 0)."""
    if plan is None:
        return queue[0]
    # A job's later runs are its first run's branches (branch_jobs): the first decides.
    ready = next((job for job in queue if plan.ready(job[0], out_dir, unfinished)), None)
    return ready or (queue[0] if idle else None)


# How long a stopped sweep waits for its runs to save their checkpoints and exit before it kills them.
STOP_GRACE_SECONDS = 120.0
# The end of a run process's stderr kept for its records when it dies without reporting.
STDERR_TAIL_BYTES = 16_000


class _StopSignals:
    """SIGINT and SIGTERM, while installed, set `signum` instead of stopping the parent at once: the
    launcher then asks its runs to stop at a checkpoint and waits for them."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _stderr_file():
    """A run process's stderr: a temporary file outside the results folder (which may be the disk
    that is full), read back only when the run dies without a result. Libraries' warnings and the
    tracebacks of their threads stay out of the sweep's output."""
    try:
        return tempfile.TemporaryFile()
    except OSError:
        return None


def _tail(stderr) -> str:
    if stderr is None:
        return ""
    try:
        stderr.seek(0, os.SEEK_END)
        size = stderr.tell()
        stderr.seek(max(0, size - STDERR_TAIL_BYTES))
        return stderr.read().decode(errors="replace")
    except OSError:
        return ""


def _save_stderr(out_dir, spec: RunSpec, text: str) -> None:
    """The end of a dead run process's stderr, in its folder's error.txt unless it has one."""
    path = records.run_dir(out_dir, spec.run_id) / "error.txt"
    if text.strip() and not path.exists():
        try:
            records.write_text(path, text)
        except OSError:
            pass


def run_local(sweep: SweepConfig, runs, *, max_parallel: int | None = None, quiet: bool = False,
              extra_env: dict | None = None, on_eta=None) -> SweepReport:
    """Train `runs` here, at most `max_parallel` processes at once (a pack of runs is one), longest
    first. `on_eta(elapsed_s, remaining_s)` is called with every ETA the display computes
    (benchmarks/bench_schedule.py checks them).

    SIGINT or SIGTERM stops the sweep: no run starts after it, every running one is asked to stop
    (it saves a checkpoint of its step and exits) and is waited for, and the report's `stopped_by`
    and `interrupted` say so; a rerun resumes them."""
    report = SweepReport()
    todo = pending_runs(sweep, runs, report)
    if not todo:
        return report
    workers = max_parallel or sweep.max_parallel
    plan = None
    if sweep.branch:
        plan = branch_plan(sweep.runs)
    display = Display(todo, workers, quiet, on_eta)
    # One CPU device per core of each run's share (scaling/launch/cpu.py), chosen for every run of the
    # sweep: each run process validates the whole sweep file against its devices.
    env = {**os.environ, **cpu.run_env(sweep.runs, workers), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    sel = selectors.DefaultSelector()
    active: dict[int, tuple[subprocess.Popen, dict[str, RunSpec], dict[str, dict], object]] = {}
    queue = local_jobs(sweep, todo, report, workers)
    stop_deadline = None
    with _StopSignals() as stop:
        try:
            while (queue and stop.signum is None) or active:
                if stop.signum is not None and stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
                    for proc, *_ in active.values():  # each run stops at a checkpoint (preemption.py)
                        _signal(proc, signal.SIGTERM)
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    for proc, *_ in active.values():
                        _signal(proc, signal.SIGKILL)
                while queue and len(active) < workers and stop.signum is None:
                    unfinished = {s.run_id for job in queue for s in job} | {r for a in active.values() for r in a[1]}
                    picked = _next_job(queue, plan, sweep.out_dir, unfinished, idle=not active)
                    if picked is None:
                        break
                    queue.remove(picked)
                    job = {spec.run_id: spec for spec in picked}
                    # The child trains from the specs written here, not from the sweep file. --distributed
                    # off: one process per run (or pack) here, even inside an salloc shell whose SLURM
                    # variables the child inherits.
                    specs = [arg for j in jobfile.jobs_of(sweep, picked) for arg in ("--spec", str(jobfile.write(j)))]
                    stderr = _stderr_file()
                    proc = subprocess.Popen([sys.executable, "-m", "scaling", "run", *specs,
                                             "--progress", "jsonl", "--distributed", "off"], stdout=subprocess.PIPE,
                                            stderr=stderr, env=env, text=True, bufsize=1)
                    states = {run_id: {"status": None, "error": None} for run_id in job}
                    active[proc.pid] = (proc, job, states, stderr)
                    report.max_running = max(report.max_running, sum(len(a[1]) for a in active.values()))
                    sel.register(proc.stdout, selectors.EVENT_READ, proc.pid)
                    # A pack's runs train at once; a trunk's group (branch_jobs) one after another: each
                    # of its later runs is shown, and counted by the ETA, from its first step.
                    for spec in (picked[:1] if sweep.branch else picked):
                        display.start(spec)
                for key, _ in sel.select(timeout=1.0):
                    proc, job, states, stderr = active[key.data]
                    line = key.fileobj.readline()
                    if line:
                        _event(line, job, states, display)
                        continue
                    sel.unregister(key.fileobj)
                    code = proc.wait()
                    for run_id, spec in job.items():
                        status, error = states[run_id]["status"], states[run_id]["error"]
                        if status is None and stop.signum is not None:
                            status = "interrupted"  # stopped before it could say so: its records resume it
                        if status is None:  # the child died without reporting: a crash, OOM or kill
                            error = f"run process exited with code {code}"
                            _save_stderr(sweep.out_dir, spec, _tail(stderr))
                        status = finish_run(report, sweep, spec, status, error)
                        display.start(spec)  # if it ended before its first step (failed, or found complete)
                        display.finish(spec, status, error)
                    if stderr is not None:
                        stderr.close()
                    del active[key.data]
        finally:
            for proc, *_ in active.values():  # an error of the launcher itself: no run is left behind
                _signal(proc, signal.SIGTERM)
            for proc, *_ in active.values():
                try:
                    proc.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            display.close()
    report.stopped_by = stop.signum
    return report


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def _event(line: str, job: dict[str, RunSpec], states: dict[str, dict], display: Display) -> None:
    """One JSON line from a run process: a step (progress) or a run's outcome."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return  # a library printing to stdout
    # A lone run's events carry no run_id; a pack's name their run.
    run_id = event.get("run_id") if len(job) > 1 else next(iter(job))
    if run_id not in job:
        return
    if event.get("event") == "step":
        display.start(job[run_id])
        display.update(job[run_id], event)
    elif event.get("event") == "done":
        states[run_id].update(status=event["status"], error=event.get("error"))
