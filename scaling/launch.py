"""The local launcher: every run in its own process, at most `max_parallel` at once; and the sweep
report that every launcher (local, scaling/slurm.py, scaling/ray_launcher.py) fills in.

A crash or out-of-memory in one run cannot take the sweep down: the parent records it as failed and
goes on. Children report progress as JSON lines on stdout; the parent draws one rich progress view
(the sweep's runs and ETA, and each active run's step, loss and tokens/s), or plain lines in quiet mode.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from scaling import records
from scaling.config import RunSpec
from scaling.flops import training_flops_per_token
from scaling.run import write_failure
from scaling.sweep import SweepConfig

DONE = ("complete", "diverged")


class LaunchError(Exception):
    """A launcher cannot start its runs at all (no cluster, sbatch refused, Ray missing): one line."""


def run_flops(spec: RunSpec) -> float:
    return training_flops_per_token(**dataclasses.asdict(spec.model)) * spec.steps * spec.batch_size * spec.model.seq_len


@dataclass
class SweepReport:
    skipped: list[str] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    # Runs handed to a cluster (slurm, ray). When the launcher returns without waiting for them
    # (`awaited` False), their outcome is in the records: `scaling status <out_dir>`.
    submitted: list[str] = field(default_factory=list)
    awaited: bool = True
    notes: list[str] = field(default_factory=list)  # job ids, log folders, where to look next
    max_running: int = 0  # the most runs this launcher had going at once

    def record(self, run_id: str, status: str, error: str | None) -> None:
        {"complete": self.complete, "diverged": self.diverged, "locked": self.locked}.get(status, []).append(run_id)
        if status not in ("complete", "diverged", "locked"):
            self.failed.append((run_id, error or status))

    def lines(self) -> list[str]:
        if self.awaited:
            out = [(f"submitted {len(self.submitted)}: " if self.submitted else "")
                   + f"complete {len(self.complete)}, skipped (already done) {len(self.skipped)}, "
                   f"diverged {len(self.diverged)}, failed {len(self.failed)}"
                   + (f", running elsewhere {len(self.locked)}" if self.locked else "")]
        else:
            out = [f"submitted {len(self.submitted)}, skipped (already done) {len(self.skipped)}, "
                   f"failed {len(self.failed)}"]
        out += [f"  failed {run_id}: {err}" for run_id, err in self.failed]
        out += [f"  diverged {run_id}" for run_id in self.diverged]
        out += [f"  {note}" for note in self.notes]
        return out


def finish_run(report: SweepReport, sweep: SweepConfig, spec: RunSpec, status: str | None, error: str | None) -> str:
    """Record one run's outcome as its launcher saw it. A run that ended without saying how (a killed
    process, a failed job) is marked failed in its records too, unless its records say it finished."""
    if status is None:
        status = "failed"
        if records.read_status(records.run_dir(sweep.out_dir, spec.run_id)) not in DONE:
            write_failure(spec, sweep.out_dir, "failed", error or "the run ended without a result")
    report.record(spec.run_id, status, error)
    return status


def pending_runs(sweep: SweepConfig, runs, report: SweepReport) -> list[RunSpec]:
    todo = []
    for spec in runs:
        if records.read_status(records.run_dir(sweep.out_dir, spec.run_id)) in DONE:
            report.skipped.append(spec.run_id)
        else:
            todo.append(spec)
    # Longest first: the sweep's wall time approaches total work / workers (LPT scheduling).
    return sorted(todo, key=run_flops, reverse=True)


def die_with_parent():
    """Linux: this (child) process gets SIGTERM when its parent dies, so no orphan keeps a run's lock.
    Called by the child itself: a preexec_fn would make Popen fork a multithreaded (JAX) parent."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Display:
    def __init__(self, total_flops: float, n_runs: int, quiet: bool):
        self.quiet, self.n_runs, self.done = quiet, n_runs, 0
        self.progress = None
        if not quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), refresh_per_second=4)
            self.sweep_task = self.progress.add_task(f"sweep 0/{n_runs} runs", total=total_flops, info="")
            self.run_tasks: dict[str, tuple[int, float]] = {}
            self.progress.start()
        self.total_flops = total_flops

    def start(self, spec: RunSpec):
        if self.quiet:
            print(f"start {spec.run_id} (N={_n(spec)}, D={spec.steps * spec.batch_size * spec.model.seq_len:.3g})",
                  flush=True)
        else:
            task = self.progress.add_task(f"  {spec.run_id}", total=spec.steps, info="compiling")
            self.run_tasks[spec.run_id] = (task, 0.0)

    def update(self, spec: RunSpec, event: dict):
        if self.quiet:
            return
        task, flops_seen = self.run_tasks[spec.run_id]
        flops_now = run_flops(spec) * event["step"] / spec.steps
        tps = event.get("tokens_per_second")
        info = f"step {event['step']}/{spec.steps} loss {event['loss']:.3f}" + (f" {tps:,.0f} tok/s" if tps else "")
        self.progress.update(task, completed=event["step"], info=info)
        self.progress.advance(self.sweep_task, flops_now - flops_seen)
        self.run_tasks[spec.run_id] = (task, flops_now)

    def finish(self, spec: RunSpec, status: str, error: str | None):
        self.done += 1
        if self.quiet:
            print(f"{status} {spec.run_id}" + (f": {error}" if error else ""), flush=True)
            return
        task, flops_seen = self.run_tasks.pop(spec.run_id)
        self.progress.remove_task(task)
        self.progress.advance(self.sweep_task, run_flops(spec) - flops_seen)
        self.progress.update(self.sweep_task, description=f"sweep {self.done}/{self.n_runs} runs")
        if status != "complete":
            self.progress.console.print(f"[red]{status}[/red] {spec.run_id}" + (f": {error}" if error else ""))

    def close(self):
        if self.progress:
            self.progress.stop()


def _n(spec: RunSpec) -> str:
    from scaling.flops import param_counts
    return f"{param_counts(**dataclasses.asdict(spec.model)).n_params_nonembed:.3g}"


def _next_run(queue: list[RunSpec], plan, out_dir, unfinished: set[str], idle: bool) -> RunSpec | None:
    """The first queued run that may start: a branch waits for its trunk's seed (scaling/branch.py)."""
    if plan is None:
        return queue[0]
    ready = next((s for s in queue if plan.ready(s, out_dir, unfinished)), None)
    return ready or (queue[0] if idle else None)


def run_local(sweep: SweepConfig, runs, *, max_parallel: int | None = None, quiet: bool = False,
              extra_env: dict | None = None) -> SweepReport:
    report = SweepReport()
    todo = pending_runs(sweep, runs, report)
    if not todo:
        return report
    workers = max_parallel or sweep.max_parallel
    plan = None
    if sweep.branch:
        from scaling.branch import plan as branch_plan
        plan = branch_plan(sweep.runs)
    display = _Display(sum(map(run_flops, todo)), len(todo), quiet)
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    sel = selectors.DefaultSelector()
    active: dict[int, tuple[subprocess.Popen, RunSpec, dict]] = {}
    queue = list(todo)
    try:
        while queue or active:
            while queue and len(active) < workers:
                spec = _next_run(queue, plan, sweep.out_dir, {s.run_id for s in queue} |
                                 {a[1].run_id for a in active.values()}, idle=not active)
                if spec is None:
                    break
                queue.remove(spec)
                # --distributed off: one process per run here, even inside an salloc shell whose
                # SLURM variables the child inherits.
                proc = subprocess.Popen([sys.executable, "-m", "scaling", "run", sweep.path, "--run-id", spec.run_id,
                                         "--progress", "jsonl", "--distributed", "off"], stdout=subprocess.PIPE,
                                        env=env, text=True, bufsize=1)
                state = {"status": None, "error": None}
                active[proc.pid] = (proc, spec, state)
                report.max_running = max(report.max_running, len(active))
                sel.register(proc.stdout, selectors.EVENT_READ, proc.pid)
                display.start(spec)
            for key, _ in sel.select(timeout=1.0):
                proc, spec, state = active[key.data]
                line = key.fileobj.readline()
                if line:
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a library printing to stdout
                    if event.get("event") == "step":
                        display.update(spec, event)
                    elif event.get("event") == "done":
                        state.update(status=event["status"], error=event.get("error"))
                    continue
                sel.unregister(key.fileobj)
                code = proc.wait()
                status, error = state["status"], state["error"]
                if status is None:  # the child died without reporting: a crash, OOM or kill
                    error = f"run process exited with code {code}"
                status = finish_run(report, sweep, spec, status, error)
                display.finish(spec, status, error)
                del active[key.data]
    finally:
        for proc, _, _ in active.values():
            proc.terminate()
        display.close()
    return report
