"""One run for many data sizes: WSD branching (`[schedule] branch = true`).

Under the WSD schedule the learning rate is constant between warmup and cool-down, so runs that
differ only in their number of tokens D compute the same thing until their own cool-down starts
(Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations",
Sec. 4). In a branched group the longest run (the trunk) trains once; every shorter run (a branch)
starts from the trunk's state at its branch point, `steps - decay_steps`, and trains only its own
cool-down. Two things make a branch exactly the computation of its own spec trained alone:

- the group shares one warmup in absolute steps (`warmup * the trunk's steps`), stored in each
  spec where it differs from the spec's own fraction (`OptimConfig.warmup_steps`, part of run_id);
- batches are a pure function of (data_seed, step), so the shared prefix sees the same data.

Mechanism: a branch is a run that was stopped at its branch step. The trunk evaluates at the
branch's own evaluation steps (up to its branch point) and, at the branch point, writes a *seed*
into its own folder, `runs/<trunk>/branches/<branch>/`: a checkpoint, the branch's history rows
(its own columns: run_id, target_tokens, ...), and `branch.json`. The seed is built in a temporary
folder and renamed into place, so it is whole or absent. A branch run with no checkpoint of its own
adopts its seed and resumes from it through the ordinary resume path. A branch whose seed does not
exist (its trunk failed, or ran before the branch was added) trains alone from step 0: the same
computation, at full cost. Rows written for a branch before its seed is complete sit in
`branches/.pending-<branch>/` and follow the trunk's checkpoints, so a killed trunk resumes them.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from scaling import records
from scaling.config import ConfigError, RunSpec, decay_steps


def branch_step(spec: RunSpec) -> int:
    """The last update before the run's own cool-down: where it leaves its trunk."""
    return spec.steps - decay_steps(spec.optim.decay, spec.steps)


def _group_key(spec: RunSpec) -> str:
    """What a group's runs share: everything but their length (tokens, the budget that set it) and
    the warmup that the group fixes."""
    d = spec.to_dict()
    d["train"].pop("tokens")
    d["optim"].pop("warmup_steps")
    d.pop("flops_budget")
    return json.dumps(d, sort_keys=True, default=str)


def _groups(runs) -> list[list[RunSpec]]:
    groups: dict[str, list[RunSpec]] = {}
    for spec in runs:
        groups.setdefault(_group_key(spec), []).append(spec)
    return list(groups.values())


def share_warmup(runs: list[RunSpec], file: str) -> list[RunSpec]:
    """The runs of a branched sweep, each group's warmup fixed at `round(warmup * longest steps)`.

    Raises ConfigError unless every run is WSD and the shared warmup ends before every run's own
    cool-down starts."""
    for spec in runs:
        if spec.optim.schedule != "wsd":
            raise ConfigError(file, "schedule.branch", f'expected schedule.kind = "wsd" (branching shares the WSD '
                              f"stable phase), got {spec.optim.schedule!r} (run {spec.run_id})")
    longest: dict[str, int] = {}
    for spec in runs:
        key = _group_key(spec)
        longest[key] = max(longest.get(key, 0), spec.steps)
    out = []
    for spec in runs:
        group_steps = longest[_group_key(spec)]
        shared = int(round(spec.optim.warmup * group_steps))
        if shared > branch_step(spec):
            raise ConfigError(file, "schedule.warmup", f"with branch = true the warmup is shared: {shared} steps "
                              f"(warmup x the longest run's {group_steps} steps), longer than run {spec.run_id}'s "
                              f"stable phase (its cool-down starts after step {branch_step(spec)}); expected a "
                              "smaller warmup or a narrower range of tokens")
        # Stored only where it differs from the run's own fraction: the trunk keeps its run_id.
        own = int(round(spec.optim.warmup * spec.steps))
        out.append(dataclasses.replace(spec, optim=dataclasses.replace(
            spec.optim, warmup_steps=None if own == shared else shared)))
    return out


@dataclass(frozen=True)
class Branch:
    spec: RunSpec
    trunk: str  # run_id of the group's longest run
    step: int  # the branch point: the seed holds the state after this many updates


@dataclass(frozen=True)
class Plan:
    """Who branches from whom in a sweep (the same in the launcher and in every run process: both
    derive it from the sweep's full list of runs)."""

    branches: dict[str, Branch]

    def of_trunk(self, run_id: str) -> list[Branch]:
        return sorted((b for b in self.branches.values() if b.trunk == run_id), key=lambda b: b.step)

    def trained_steps(self, spec: RunSpec) -> int:
        """Updates this run trains itself when its seed is there: only its cool-down for a branch."""
        b = self.branches.get(spec.run_id)
        return spec.steps - b.step if b else spec.steps

    def ready(self, spec: RunSpec, out_dir, unfinished: set[str]) -> bool:
        """Whether to start `spec` now: a branch waits while its trunk is still to run and has not yet
        written its seed (started earlier it would train alone: right, but at full cost)."""
        b = self.branches.get(spec.run_id)
        if b is None or b.trunk not in unfinished or seed_dir(out_dir, b).exists():
            return True
        return (records.run_dir(out_dir, spec.run_id) / "checkpoints").exists()


def plan(runs) -> Plan:
    """Every run of a group but the trunk (the longest; ties go to the smaller run_id) is a branch,
    unless its branch point is step 0 (nothing to share)."""
    branches = {}
    for group in _groups(runs):
        trunk = max(group, key=lambda s: (s.steps, _neg(s.run_id)))
        for spec in group:
            k = branch_step(spec)
            if spec is not trunk and k >= 1:
                branches[spec.run_id] = Branch(spec=spec, trunk=trunk.run_id, step=k)
    return Plan(branches)


def _neg(text: str) -> tuple:
    return tuple(-ord(c) for c in text)


def seed_dir(out_dir, b: Branch) -> Path:
    return records.run_dir(out_dir, b.trunk) / "branches" / b.spec.run_id


@dataclass
class Seed:
    """A branch's seed as its run adopts it."""

    folder: Path
    info: dict  # branched_from, branch_step
    history: list[dict]
    calibration: list[dict]

    @property
    def step(self) -> int:
        return int(self.info["branch_step"])


def open_seed(out_dir, b: Branch) -> Seed | None:
    folder = seed_dir(out_dir, b)
    if not folder.is_dir():
        return None
    info = json.loads((folder / "branch.json").read_text())
    calibration = folder / "calibration.parquet"
    return Seed(folder, info, records.read_rows(folder / "history.parquet"),
                records.read_rows(calibration) if calibration.exists() else [])


def remove_seed(out_dir, b: Branch) -> None:
    shutil.rmtree(seed_dir(out_dir, b), ignore_errors=True)


