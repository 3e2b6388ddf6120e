"""The one training loop: a lone run, a pack of runs (scaling/training/pack.py) and a branch trunk
(scaling/training/seeding.py) all train here.

A loop trains K members of one shape on one mesh. K = 1 steps the run's own compiled program; K > 1
steps the packed program, whose state carries a leading member axis. Everything else is written
once, per member: resume (from its checkpoint, or a branch's seed), the training losses, the
evaluations and their records, checkpoints, divergence (a member that diverges is recorded and the
others go on), the final summary. Observers hook in at the step boundaries: the branch seeder (a
trunk's branches' rows and seeds) and preemption (a stop signal: a checkpoint of the step, then
`Preempted`).

History rows are written at every evaluation together with a checkpoint, so after a kill the
history on disk never runs ahead of a restorable state (rows past the checkpoint are dropped on
resume and recomputed identically: training is deterministic).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from scaling import records
from scaling.config import RunSpec
from scaling.data.sources import cache_dir
from scaling.sweep.branch_plan import Plan, open_seed, remove_seed
from scaling.training import preemption, sharding as shd, step as tr
from scaling.training.checkpoint import CheckpointError, Checkpoints
from scaling.training.pack import PackError, build_packed_program, check_packable
from scaling.training.runlog import RunContext, RunLog, Throughput, rows_until
from scaling.training.seeding import Seeder
from scaling.training.tracker import open_tracker


class Halt(Exception):
    """Raised by `halt_at` to simulate a kill after a checkpoint (tests)."""


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, in the user's cache folder unless JAX_COMPILATION_CACHE_DIR
    (or jax.config) names another: a rerun, or a second run of the same shape, loads its compiled
    steps instead of compiling them again. Every program is cached, whichever folder holds them: a
    run has a dozen small ones (init, eval, checkpoint copies, probes, sampling) whose compiles add
    up to more than the train step's, and JAX's defaults (at least 1 s of compile) would leave them
    out. A threshold the user set in the environment is kept."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    for env, key in (("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "jax_persistent_cache_min_compile_time_secs"),
                     ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "jax_persistent_cache_min_entry_size_bytes")):
        if env not in os.environ:
            jax.config.update(key, 0)


class Member:
    """One run of a loop: its records as they grow (`RunLog`), its checkpoints, where it resumes
    from, and, once it has one, its outcome (`result`)."""

    def __init__(self, spec: RunSpec, out_dir, ctx: RunContext, *, t_start: float, pack: list[str] | None,
                 plan: Plan | None):
        self.spec, self.out_dir = spec, out_dir
        writer = jax.process_index() == 0
        columns = {"pack_size": len(pack)} if pack else None
        self.log = RunLog(spec, out_dir, ctx, writer=writer, columns=columns, t_start=t_start)
        self.log.write_config(**({"pack": pack} if pack else {}))
        self.ckpt = Checkpoints(self.log.path / "checkpoints")
        single = jax.process_count() == 1
        self.branch = plan.branches.get(spec.run_id) if plan and single else None
        self.result: dict | None = None
        self.seeded = False  # resumed from its trunk's seed rather than a checkpoint of its own
        self.restored_step: int | None = None
        self.host: dict = {}  # the host state of the checkpoint it resumed from

    @property
    def active(self) -> bool:
        return self.result is None

    def restore(self, abstract_state) -> tuple[int, dict | None]:
        """(step, state) to resume from: the latest checkpoint, else a branch's seed (the state its
        trunk had at the branch point), else (0, None) for a fresh start."""
        latest = self.ckpt.latest_step()
        seed = open_seed(self.out_dir, self.branch) if latest is None and self.branch is not None else None
        step, state = 0, None
        if seed is not None:
            seed_ckpt = Checkpoints(seed.folder / "checkpoints")
            state, self.host = seed_ckpt.restore(seed.step, abstract_state)
            seed_ckpt.close()
            step, self.seeded = seed.step, True
            self.log.resume(self.host["losses_since_eval"], seed.history, seed.calibration)
            if self.log.writer:
                records.write_json(self.log.path / "branch.json", seed.info)
        elif latest is not None:
            state, self.host = self.ckpt.restore(latest, abstract_state)
            step = self.restored_step = latest
            self.log.resume(self.host["losses_since_eval"], *rows_until(self.log.path, latest))
        else:
            self.log.check_fresh(self.ckpt.folder)
        if (self.log.path / "branch.json").exists():  # it left its trunk at branch_step (its records say so)
            self.log.base.update(json.loads((self.log.path / "branch.json").read_text()))
        return step, state

    def start(self, step: int) -> None:
        """The summary says `running` from the start (a resumed run's says so already); the tracker
        opens and gets the rows the run resumed with."""
        self.log.tracker = open_tracker(self.spec, writer=self.log.writer)
        for row in self.log.history:
            self.log.tracker.log(row)
        if self.seeded and self.log.history:
            self.log.write("running", self.log.history[-1])
        else:
            self.log.started(step)

    def fail(self, error: Exception) -> None:
        """Recorded failed (by the process that writes records; the others only say why)."""
        self.ckpt.close()
        line = records.record_error(self.spec, self.out_dir, error) if self.log.writer else records.error_line(error)
        self.result = {"run_id": self.spec.run_id, "status": "failed", "error": line}

    def finish(self, params, tokens_per_second: float | None) -> None:
        keep = self.spec.train.keep_checkpoints
        self.result = self.log.complete(params, tokens_per_second)
        if self.branch is not None and not keep:
            remove_seed(self.out_dir, self.branch)
        self.ckpt.finish(keep=keep)


class Loop:
    """K members of one shape trained by one compiled step, read one step behind (the loss of step
    k is read while step k + 1 runs)."""

    def __init__(self, specs: list[RunSpec], out_dir, *, on_step: Callable[[dict], None] | None = None,
                 devices=None, halt_at: int | None = None, plan: Plan | None = None):
        t_start = time.perf_counter()
        enable_compilation_cache()
        spec = specs[0]
        self.mesh = shd.make_mesh(spec.mesh, devices)
        if len(specs) > 1:
            check_packable(specs, self.mesh)
        self.lone = tr.build_program(spec, self.mesh)
        # The members' data, evaluation and accounting: one shape, one data_seed.
        self.ctx = RunContext(spec, self.mesh, self.lone)
        pack = [s.run_id for s in specs] if len(specs) > 1 else None
        self.members = [Member(s, out_dir, self.ctx, t_start=t_start, pack=pack, plan=plan) for s in specs]
        self.spec, self.out_dir, self.on_step, self.halt_at, self.plan = spec, out_dir, on_step, halt_at, plan
        self.single = jax.process_count() == 1
        self.timer = Throughput(self.ctx.tokens_per_step)
        self.measured: dict = {}

    def run(self) -> list[dict]:
        """Train every member to its last step; one result row per member, in order."""
        try:
            params, opt_state, step = self._resume()
            if self.live:
                self._train(params, opt_state, step)
            return [mb.result for mb in self.members]
        finally:
            for mb in self.members:
                if mb.result is None:
                    mb.ckpt.close()
                mb.log.tracker.finish((mb.result or {}).get("status", "failed"))

    # -- setting up ------------------------------------------------------------------------------

    def _resume(self):
        """Each member's state (a member whose checkpoint cannot be read is recorded failed and left
        out), then the program that steps the members that are left: the lone one for one member."""
        states, start = [], None
        for mb in self.members:
            try:
                step, state = mb.restore(self.lone.abstract_state())
            except CheckpointError as e:
                mb.fail(e)
                continue
            if start is not None and step != start:
                raise PackError(f"the runs resume from different steps ({start} and {step})")
            start = step
            states.append(state)
        self.live = [mb for mb in self.members if mb.active]
        if not self.live:
            return None, None, 0
        self.packed = len(self.live) > 1
        if self.packed:
            self.program = build_packed_program([mb.spec for mb in self.live], self.mesh, self.lone)
            if start:
                params = self.program.stack([s["params"] for s in states])
                opt_state = self.program.stack([s["opt_state"] for s in states])
            else:
                params, opt_state = self.program.init_state()
        else:  # one member left: its own program (the lone one was built for the first member's spec)
            live = self.live[0]
            self.program = self.lone if live is self.members[0] else tr.build_program(live.spec, self.mesh)
            if start:
                params, opt_state = states[0]["params"], states[0]["opt_state"]
            else:
                params = self.program.init_params()
                opt_state = self.program.init_opt_state(params)
        self.seeder = self._seeder()
        for mb in self.live:
            mb.start(start)
        return params, opt_state, start

    def _seeder(self) -> Seeder | None:
        """A trunk (one member, one process) records its branches' rows and writes their seeds."""
        mb = self.live[0]
        if self.packed or not self.plan or not self.single or not mb.log.writer:
            return None
        branches = self.plan.of_trunk(mb.spec.run_id)
        seeder = Seeder(self.out_dir, mb.spec, branches, mb.restored_step, mb.host, self.ctx) if branches else None
        return seeder if seeder is not None and seeder.active else None

    # -- the loop --------------------------------------------------------------------------------

    def _train(self, params, opt_state, step: int) -> None:
        pending = None  # (step, metrics) dispatched but not yet read
        # One process stops between steps when its job is being preempted (scaling/training/preemption.py);
        # several would first have to agree on the step, so theirs stop where submitit stops them.
        with preemption.polling() if self.single else contextlib.nullcontext():
            while step < self.spec.steps and self.active:
                if preemption.requested() and self.single:
                    self._stop(step, pending, params, opt_state)
                step += 1
                params, opt_state, metrics = self.program.train_step(params, opt_state, self.ctx.batch(step))
                if pending is not None:
                    self._read(pending, step)
                pending = (step, metrics)
                if self.timer.mark is None:  # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    self.timer.start(step)
                own_sync = self.ctx.syncs(step)
                if own_sync or (self.seeder and self.seeder.needs(step)):
                    self._sync(step, pending, params, opt_state, own_sync)
                    pending = None
        for i, mb in enumerate(self.live):
            if mb.active:
                mb.finish(self._member(params, i), self.timer.overall())

    @property
    def active(self) -> list[Member]:
        return [mb for mb in self.live if mb.active]

    def _member(self, tree, i: int):
        return self.program.member(tree, i) if self.packed else tree

    def _read(self, pending, step: int) -> np.ndarray:
        """The losses of a dispatched step, into each member's log; a member whose loss is not finite
        is recorded diverged at `step` (it keeps its slot in a packed step; its numbers are ignored).
        Returns the members' gradient norms."""
        s, metrics = pending
        losses = np.asarray(metrics["loss"]).reshape(-1)
        for i, mb in enumerate(self.live):
            if not mb.active:
                continue
            loss = float(losses[i])
            if not math.isfinite(loss):
                mb.result = mb.log.diverged(step, f"non-finite training loss at step {s}")
                mb.ckpt.close()
                continue
            mb.log.losses_since_eval.append(loss)
            if self.seeder is not None:
                self.seeder.on_loss(loss)
            if self.on_step:  # every step, whether read while the next one runs or at a sync point
                self.on_step({"run_id": mb.spec.run_id, "step": s, "steps": self.spec.steps,
                              "tokens": s * self.ctx.tokens_per_step, "loss": loss,
                              "tokens_per_second": self.timer.overall()})
        return np.asarray(metrics["grad_norm"]).reshape(-1)

    def _sync(self, step: int, pending, params, opt_state, own_sync: bool) -> None:
        """The run stops after `step`: evaluation, the seeder's rows and seeds, a checkpoint."""
        norms = self._read(pending, step)
        if not self.active:
            return
        self.timer.lap(step)
        evaluates = step in self.ctx.evals
        if evaluates:
            for i, mb in enumerate(self.live):
                if mb.active:
                    mb.log.evaluation(step, *self._measure(i, step, params, float(norms[i])))
        if self.seeder is not None:
            self.seeder.at_step(step, lambda at: self._measure(0, at, params, float(norms[0])),
                                {"params": params, "opt_state": opt_state})
        if evaluates:
            self.timer.new_interval()
        if own_sync:
            self._save(step, params, opt_state)
            if evaluates:
                for mb in self.active:
                    mb.log.write("running", mb.log.history[-1])
            if self.halt_at is not None and step >= self.halt_at:
                raise Halt(step)
        self.timer.start(step)

    def _measure(self, i: int, at: int, params, grad_norm: float) -> tuple[dict, list]:
        """Evaluation columns of member i's state after `at` updates, and its calibration bins:
        computed once, shared by a trunk's row and its branches' rows at the same step."""
        if (i, at) not in self.measured:
            if all(step != at for _, step in self.measured):
                self.measured.clear()
            values, bins = self.ctx.evaluate(self._member(params, i), grad_norm, self.timer.interval())
            self.measured[(i, at)] = ({**values, "wall_seconds": self.live[i].log.wall()}, bins)
        return self.measured[(i, at)]

    def _save(self, at: int, params, opt_state) -> None:
        if self.seeder is not None:
            self.seeder.save_pending()
        for i, mb in enumerate(self.live):
            if mb.active:
                host = {"losses_since_eval": mb.log.losses_since_eval,
                        **(self.seeder.host_state() if self.seeder else {})}
                mb.ckpt.save(at, {"params": self._member(params, i), "opt_state": self._member(opt_state, i)}, host)

    def _stop(self, step: int, pending, params, opt_state) -> None:
        """The job is being stopped: read the last step, save its checkpoint (unless there is one of
        it), raise `Preempted`. Not one step is redone on resume."""
        if pending is not None:
            self._read(pending, step)
        if not self.active:  # the last step diverged: nothing to resume
            return
        if step and self.active[0].ckpt.latest_step() != step:
            self._save(step, params, opt_state)
        raise preemption.Preempted(step)


def train(specs: list[RunSpec], out_dir: str | Path, **kwargs) -> list[dict]:
    """Train `specs` (one run, or a pack of runs that `check_packable` accepts) in one loop and write
    each run's records; one summary row per run, in order. See `Loop` for the keyword arguments."""
    return Loop(specs, out_dir, **kwargs).run()
