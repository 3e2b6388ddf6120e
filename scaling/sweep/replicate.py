"""More seeds where seed-to-seed noise is measured: the `[replicate]` table.

A law's interval should say how much a rerun with another initialisation would move it, and that
needs some grid points trained more than once. `[sweep] seeds` repeats every run; `[replicate]`
repeats chosen ones, at the cost of those alone:

    [replicate]
    seeds = [1]                      # extra seeds (none of them in [sweep] seeds)
    at = ["n_layer=2 d_model=32"]    # runs matching every `key=value` glob of one entry ...
    at = "minima"                    # ... or each IsoFLOP budget's least-loss run, once it is known

The labels are `--only`'s (`RunSpec.labels`: n_layer, d_model, tokens, budget, lr, ...) plus
`n_params` (non-embedding). A replica is its run's spec with another seed and nothing else changed,
taken after a branched sweep has fixed its groups' shared warmup: a replica computes exactly what
its run computes, from another initialisation. Replicas of one size branch from each other as the
main runs do (their stable phases are identical by the same argument).

`minima` needs results: the replicas of a budget exist once every main run of that budget is
complete or diverged, and `scaling sweep` trains them after the main grid, in the same invocation.
The analysis averages the seeds of a cell and resamples them in its bootstrap (analysis/seeds.py).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass

from scaling import records
from scaling.config import ConfigValueError, RunSpec
from scaling.config_checks import check, entries, integer
from scaling.flops import param_counts

MINIMA = "minima"


@dataclass(frozen=True)
class ReplicateConfig:
    seeds: tuple[int, ...] = ()
    at: str | tuple[str, ...] = ()

    def __post_init__(self):
        check(self, seeds=entries(integer(ge=0)))
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise ConfigValueError("seeds", f"expected a non-empty list of distinct seeds, got {list(self.seeds)}")
        if isinstance(self.at, str):
            if self.at != MINIMA:
                raise ConfigValueError("at", f'expected "{MINIMA}" or a list of `key=value` patterns, got {self.at!r}')
        elif not self.at or not all(isinstance(p, str) and p.split() and all("=" in part for part in p.split())
                                    for p in self.at):
            raise ConfigValueError("at", "expected a non-empty list of patterns, each one or more `key=value` globs "
                                   f'separated by spaces (e.g. "n_layer=2 d_model=32"), got {list(self.at)!r}')


def labels(spec: RunSpec) -> dict[str, str]:
    return {**spec.labels(), "n_params": str(param_counts(**dataclasses.asdict(spec.model)).n_params_nonembed)}


def matches(spec: RunSpec, pattern: str) -> bool:
    """Every `key=value` glob of `pattern` matches one of the run's labels."""
    have = [f"{k}={v}" for k, v in labels(spec).items()]
    return all(any(fnmatch.fnmatchcase(label, part) for label in have) for part in pattern.split())


def replicas(runs, config: ReplicateConfig, out_dir) -> list[RunSpec]:
    """The replicas that can be named now: of every run an `at` pattern matches, or (`minima`) of
    each IsoFLOP budget's least-loss run where every main run of that budget is done."""
    chosen = [spec for spec in runs if any(matches(spec, p) for p in config.at)] if not isinstance(config.at, str) \
        else _minima(runs, out_dir)
    return [dataclasses.replace(spec, seed=seed) for spec in chosen for seed in config.seeds]


def _minima(runs, out_dir) -> list[RunSpec]:
    budgets: dict[float, list[RunSpec]] = {}
    for spec in runs:
        if spec.flops_budget is not None:
            budgets.setdefault(spec.flops_budget, []).append(spec)
    out = []
    for group in budgets.values():
        losses = [_final_loss(out_dir, spec) for spec in group]
        if any(loss is None for loss in losses):
            continue  # some run of this budget has not finished: its minimum is not known yet
        finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
        if finite:
            out.append(group[min(finite)[1]])
    return out


def _final_loss(out_dir, spec: RunSpec) -> float | None:
    """A finished run's final validation loss (inf for a diverged or unreadable one); None while it is
    not finished."""
    path = records.run_dir(out_dir, spec.run_id)
    status = records.read_status(path)
    if status not in records.DONE:
        return None
    if status != "complete":
        return math.inf
    try:
        value = records.read_rows(path / "summary.parquet")[0].get("val_loss")
    except (OSError, IndexError, ValueError):
        return math.inf
    return float(value) if value is not None else math.inf
