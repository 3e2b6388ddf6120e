"""What a launcher reports of a sweep (`SweepReport`), and how a run's outcome reaches its records
when its process could not write it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from scaling import records
from scaling.config import RunSpec
from scaling.flops import training_flops_per_token
from scaling.records import write_failure
from scaling.sweep.reader import SweepConfig


DONE = records.DONE
# The utilisation assumed before any step is measured (dry-run estimates, the ETA's prior).
ASSUMED_MFU = 0.15


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
    # A local sweep stopped by SIGINT / SIGTERM: the signal, and the runs it stopped at a checkpoint.
    stopped_by: int | None = None
    interrupted: list[str] = field(default_factory=list)

    def record(self, run_id: str, status: str, error: str | None) -> None:
        {"complete": self.complete, "diverged": self.diverged, "locked": self.locked,
         "interrupted": self.interrupted}.get(status, []).append(run_id)
        if status not in ("complete", "diverged", "locked", "interrupted"):
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
    process, a failed job) is marked failed in its records too, unless its records say it finished
    or another process has taken it up since."""
    if status is None:
        status, error = "failed", error or "the run ended without a result"
        recorded = mark_failed(sweep.out_dir, spec, error)
        if recorded in DONE:
            status, error = recorded, None
    elif status == "failed":
        # The run's process has exited, and with it any writer thread that outlived its error (orbax
        # finishing a checkpoint on a full disk): what they left is removed now.
        mark_failed(sweep.out_dir, spec, None)
    report.record(spec.run_id, status, error)
    return status


def mark_failed(out_dir, spec: RunSpec, error: str | None) -> str | None:
    """Write status failed into a run's records, under its lock, unless they say it is complete or
    diverged (that status is returned) or another process holds the run, and remove the temporary
    files of its unfinished writes; `error` None: the run recorded its failure itself, only clean up.
    A disk that refuses the write leaves the records as they are: the sweep's report still names
    the failure."""
    path = records.run_dir(out_dir, spec.run_id)
    try:
        lock = records.RunLock(path)
        if not lock.acquire():
            return None
    except OSError:
        return None
    try:
        status = records.read_status(path)
        if status not in DONE:
            records.remove_temporaries(path)
            if error is not None:
                write_failure(spec, out_dir, "failed", error)
        return status
    except OSError:
        return None
    finally:
        lock.release()


def pending_runs(sweep: SweepConfig, runs, report: SweepReport) -> list[RunSpec]:
    todo = []
    for spec in runs:
        if records.read_status(records.run_dir(sweep.out_dir, spec.run_id)) in DONE:
            report.skipped.append(spec.run_id)
        else:
            todo.append(spec)
    # Longest first: the sweep's wall time approaches total work / workers (LPT scheduling).
    return sorted(todo, key=run_flops, reverse=True)


