"""A run's resolved spec as its process receives it: `<out_dir>/runs/<run_id>/spec.json`.

The launcher that starts a run (local, SLURM, Ray) writes this file first, and the run's process
trains from it: it never reads the sweep file again or re-plans branches, so editing or deleting the
sweep file while runs are queued changes nothing for them. The file holds the run spec
(`RunSpec.to_dict`), where its records go, and the part of a branched sweep's plan that concerns this
run (the trunk it leaves, or the branches it writes seeds for). Its `run_id` is checked on reading: a
spec written by another version of the code, whose hash differs, is refused rather than trained
under a new id. JAX-free: the launchers' parent process reads and writes these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scaling import records
from scaling.config import ConfigError, RunSpec
from scaling.sweep.branch_plan import Branch, Plan
from scaling.sweep.branch_plan import plan as branch_plan

SPEC_FILE = "spec.json"
FORMAT = 1


@dataclass(frozen=True)
class Job:
    """What one run's process needs: its spec, its results folder, and its part of a branch plan."""

    spec: RunSpec
    out_dir: str
    sweep_file: str  # the sweep file it was resolved from (for messages and the devices check)
    branch: Branch | None = None  # this run leaves a trunk: it resumes from the trunk's seed
    branches: tuple[Branch, ...] = ()  # this run is a trunk: it writes these branches' seeds

    @property
    def plan(self) -> Plan | None:
        entries = {b.spec.run_id: b for b in (*self.branches, *((self.branch,) if self.branch else ()))}
        return Plan(entries) if entries else None

    @property
    def path(self) -> Path:
        return records.run_dir(self.out_dir, self.spec.run_id) / SPEC_FILE


def jobs_of(sweep, specs) -> list[Job]:
    """The jobs of some runs of a sweep (`SweepConfig`), with the results folder made absolute: a
    job may start in another folder, or on another host that shares the filesystem."""
    plan = branch_plan(sweep.runs) if sweep.branch else None
    out_dir = str(Path(sweep.out_dir).resolve())
    return [Job(spec=spec, out_dir=out_dir, sweep_file=str(sweep.path),
                branch=plan.branches.get(spec.run_id) if plan else None,
                branches=tuple(plan.of_trunk(spec.run_id)) if plan else ()) for spec in specs]


def check_writable(file: str, out_dir: str, *, create: bool) -> None:
    """Raises ConfigError (naming `file`, the sweep file) unless `out_dir` can take records, before
    anything trains: `create` makes it if missing; else (a dry run) nothing is written."""
    problem = records.writable(out_dir, create=create)
    if problem:
        raise ConfigError(file, "sweep.out_dir", f"{out_dir}: {problem}; expected a folder this user can write the "
                          "records to")


def write(job: Job) -> Path:
    """The job's spec.json (written whole or not at all, like every record file)."""
    branch = lambda b: {"trunk": b.trunk, "step": b.step, "spec": b.spec.to_dict()}
    records.write_json(job.path, {
        "format": FORMAT, "run_id": job.spec.run_id, "out_dir": job.out_dir, "sweep_file": job.sweep_file,
        "spec": job.spec.to_dict(), "branch": branch(job.branch) if job.branch else None,
        "branches": [branch(b) for b in job.branches]})
    return job.path


def read(path: str | Path) -> Job:
    """The job in a spec.json. Raises ConfigError (naming the file) for one that is missing, not
    JSON, of another format, or whose spec does not hash to its run_id."""
    file = str(path)
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file (a run's spec.json, written by its launcher)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(file, "", f"not a readable spec file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(file, "format", f"expected a spec file of format {FORMAT}")
    try:
        spec = RunSpec.from_dict(doc["spec"])
        branch = lambda b: Branch(spec=RunSpec.from_dict(b["spec"]), trunk=b["trunk"], step=int(b["step"]))
        job = Job(spec=spec, out_dir=doc["out_dir"], sweep_file=doc["sweep_file"],
                  branch=branch(doc["branch"]) if doc["branch"] else None,
                  branches=tuple(branch(b) for b in doc["branches"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(file, "spec", f"not a run spec this version reads ({type(e).__name__}: {e})") from None
    if spec.run_id != doc["run_id"]:
        raise ConfigError(file, "run_id", f"the spec hashes to {spec.run_id}, not {doc['run_id']}: it was written "
                          "by another version of scaling; launch the sweep again to rewrite it")
    return job
