"""How long the rest of a sweep will take: a cost model of each run, learned while the sweep runs.

A run's wall time is modelled as

    T = startup + steps * (a + f * u) + evals * (g * u + p)

with f the training FLOPs of one step and g the forward FLOPs of one evaluation (this project's exact
count, scaling/flops.py), u seconds per FLOP, a the fixed cost of a step (dispatch, host batching),
startup the process start, data and compilation, and p the fixed cost of one evaluation (probes,
checkpoint, records). FLOPs alone (rich's default ETA) mispredict a sweep whose small models run far
below the machine's peak, and a sweep ordered longest first runs its fast-MFU models early.

Everything is learned from the sweep itself: (a, u) by least squares in relative error over the
observed step times of every run so far (each run's own tokens/s), startup from spawn to first step,
p from finished runs' walls; until a quantity is observed, a prior stands in. The remaining time is
then a simulation of the launcher's own schedule: runs in queue order onto `workers` slots, each slot
first finishing its active run.

A running local sweep publishes its latest estimate in `<out_dir>/eta.json` (`EtaFile`), so that
`scaling status` in another shell shows it (`published_eta`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaling import records
from scaling.config import RunSpec
from scaling.flops import training_flops_per_token

PRIOR_STARTUP_S = 8.0  # a fresh process: imports, data, compile (or a cache hit)
PRIOR_STEP_OVERHEAD_S = 2e-3
PRIOR_EVAL_OVERHEAD_S = 0.3
ETA_FILE = "eta.json"
PUBLISH_EVERY_S = 5.0  # a status reader needs no finer grain, and the results folder may be on NFS


@dataclass(frozen=True)
class RunCost:
    """What the cost model needs of one run."""

    steps: int
    step_flops: float  # training FLOPs of one step
    evals: int
    eval_flops: float  # forward FLOPs of one evaluation

    @classmethod
    def of(cls, spec: RunSpec) -> "RunCost":
        per_token = training_flops_per_token(**dataclasses.asdict(spec.model))
        tokens_per_step = spec.batch_size * spec.model.seq_len
        eval_tokens = spec.train.eval_sequences * spec.model.seq_len
        return cls(steps=spec.steps, step_flops=per_token * tokens_per_step,
                   evals=len(spec.train.eval_steps(spec.steps)), eval_flops=per_token / 3 * eval_tokens)


@dataclass
class _Run:
    cost: RunCost
    spawned: float
    first_step_at: float | None = None
    step: int = 0
    step_seconds: float | None = None  # the run's own steady step time (from its tokens/s)


@dataclass
class Eta:
    """Feed it the launcher's events (with a clock), ask `remaining(now)`."""

    workers: int
    prior_flops_per_second: float  # e.g. 15% of the device's peak, until steps are observed
    active: dict[str, _Run] = field(default_factory=dict)
    queue: list[RunCost] = field(default_factory=list)  # not started, in launch order
    _steps: list[tuple[float, float]] = field(default_factory=list)  # (step_flops, seconds) per observed run
    _startups: list[float] = field(default_factory=list)
    _eval_overheads: list[float] = field(default_factory=list)

    def plan(self, costs: list[RunCost]) -> None:
        self.queue = list(costs)

    def started(self, run_id: str, cost: RunCost, now: float) -> None:
        if cost in self.queue:
            self.queue.remove(cost)
        self.active[run_id] = _Run(cost, spawned=now)

    def stepped(self, run_id: str, step: int, tokens_per_second: float | None, tokens_per_step: int,
                now: float) -> None:
        run = self.active.get(run_id)
        if run is None:
            return
        if run.first_step_at is None:
            run.first_step_at = now
            self._startups.append(now - run.spawned)
        run.step = step
        if tokens_per_second:
            run.step_seconds = tokens_per_step / tokens_per_second

    def finished(self, run_id: str, now: float) -> None:
        run = self.active.pop(run_id, None)
        if run is None or run.step_seconds is None or run.first_step_at is None:
            return
        c = run.cost
        self._steps.append((c.step_flops, run.step_seconds))
        a, u = self._step_model()
        if c.evals:
            rest = (now - run.first_step_at) - c.steps * run.step_seconds - c.evals * c.eval_flops * u
            self._eval_overheads.append(max(rest / c.evals, 0.0))

    # -- the model ---------------------------------------------------------------------------

    def _step_model(self) -> tuple[float, float]:
        """(a, u) minimising sum ((a + f u) / t - 1)^2 over observed runs (active ones included),
        with a weak pull towards the priors so one observed shape still gives a full model."""
        obs = list(self._steps) + [(r.cost.step_flops, r.step_seconds) for r in self.active.values()
                                   if r.step_seconds is not None]
        a0, u0 = PRIOR_STEP_OVERHEAD_S, 1.0 / self.prior_flops_per_second
        if not obs:
            return a0, u0
        f = np.array([o[0] for o in obs])
        t = np.array([o[1] for o in obs])
        rows = [np.stack([1.0 / t, f / t], axis=1)]
        target = [np.ones(len(t))]
        w = 0.05  # prior weight, relative to one observation
        rows.append(np.array([[w / a0, 0.0], [0.0, w / u0]]))
        target.append(np.array([w, w]))
        (a, u), *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(target), rcond=None)
        if a < 0 or u <= 0:  # one shape cannot split a from u: attribute it all to throughput
            a, u = 0.0, float(np.median(t / f))
        return float(a), float(u)

    def model(self) -> "_Model":
        """The cost model as learned so far (fitted once per ETA, not once per run)."""
        a, u = self._step_model()
        p = float(np.mean(self._eval_overheads)) if self._eval_overheads else PRIOR_EVAL_OVERHEAD_S
        startup = float(np.mean(self._startups)) if self._startups else PRIOR_STARTUP_S
        return _Model(a=a, u=u, p=p, startup=startup)

    def _left(self, run: _Run, now: float, m: "_Model") -> float:
        c = run.cost
        if run.first_step_at is None:
            return max(m.predict(c) - (now - run.spawned), 0.0)
        step_s = run.step_seconds if run.step_seconds is not None else m.step_seconds(c)
        evals_left = c.evals * (1 - run.step / c.steps) if c.steps else 0
        return (c.steps - run.step) * step_s + evals_left * m.eval_seconds(c)

    def remaining(self, now: float) -> float:
        """Seconds until the last run ends, scheduling the queue as the launcher does."""
        m = self.model()
        slots = sorted(self._left(r, now, m) for r in self.active.values())
        slots += [0.0] * max(self.workers - len(slots), 0)
        for cost in self.queue:
            i = int(np.argmin(slots))
            slots[i] += m.predict(cost)
        return max(slots) if slots else 0.0


@dataclass(frozen=True)
class _Model:
    a: float  # fixed seconds per step
    u: float  # seconds per FLOP
    p: float  # fixed seconds per evaluation
    startup: float  # seconds from spawn to the first step

    def step_seconds(self, cost: RunCost) -> float:
        return self.a + cost.step_flops * self.u

    def eval_seconds(self, cost: RunCost) -> float:
        return cost.eval_flops * self.u + self.p

    def predict(self, cost: RunCost) -> float:
        """Seconds for a whole run that has not started."""
        return self.startup + cost.steps * self.step_seconds(cost) + cost.evals * self.eval_seconds(cost)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EtaFile:
    """The sweep's ETA, published for `scaling status`: an `on_eta(elapsed_s, remaining_s)` callback
    for the launcher (scaling/launch/local.py) that rewrites `<out_dir>/eta.json` at most every
    PUBLISH_EVERY_S seconds; `close()` removes it when the sweep ends. Writing is best-effort: a
    results folder that refuses the file costs the status its ETA, never the sweep."""

    def __init__(self, out_dir: str | Path, clock=time.time):
        self.path, self.clock, self._written_at = Path(out_dir) / ETA_FILE, clock, -math.inf

    def __call__(self, elapsed_s: float, remaining_s: float) -> None:
        now = self.clock()
        if now - self._written_at < PUBLISH_EVERY_S:
            return
        self._written_at = now
        try:
            records.write_json(self.path, {"remaining_seconds": remaining_s, "written_at": now,
                                           "host": socket.gethostname(), "pid": os.getpid()})
        except OSError:
            pass

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def published_eta(out_dir: str | Path, now: float | None = None) -> tuple[float, float] | None:
    """(seconds left now, age of the estimate in seconds) from a running sweep's eta.json; None
    where there is none, it is unreadable, or the process that wrote it no longer runs (same host)."""
    try:
        eta = json.loads((Path(out_dir) / ETA_FILE).read_text())
        remaining, written_at = float(eta["remaining_seconds"]), float(eta["written_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if eta.get("host") == socket.gethostname() and not _alive(eta.get("pid")):
        return None
    age = max((time.time() if now is None else now) - written_at, 0.0)
    return max(remaining - age, 0.0), age


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
