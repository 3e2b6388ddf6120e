"""One training run from its spec to its records: resume, train, evaluate, checkpoint, write.

History rows are written at every evaluation together with a checkpoint, so after a kill the
history on disk never runs ahead of a restorable state (rows past the checkpoint are dropped on
resume and recomputed identically: training is deterministic).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

from scaling.sweep.branch_plan import Plan, open_seed, remove_seed
from scaling.training.seeding import Seeder
from scaling import records
from scaling.training import preemption
from scaling.config import RunSpec
from scaling.records import error_line, record_error
from scaling.training.runlog import RunContext, RunLog, Throughput, rows_until


class Halt(Exception):
    """Raised by `halt_at` to simulate a kill after a checkpoint (tests)."""


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in the user's cache folder: a rerun, or a second run of the
    same shape, loads its compiled steps instead of compiling them again."""
    import jax

    from scaling.data.sources import cache_dir
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
        # Every program, however quick to compile: a run has a dozen small ones (init, eval,
        # probes, sampling) whose compiles add up to more than the train step's.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def train_run(spec: RunSpec, out_dir: str | Path, *, on_step: Callable[[dict], None] | None = None,
              devices=None, halt_at: int | None = None, plan: Plan | None = None) -> dict:
    """Train `spec` (resuming from its checkpoint if one exists) and write its records.

    `plan` (a branched sweep, scaling/sweep/branch_plan.py): a trunk also records its branches' rows and writes
    their seeds; a branch without a checkpoint of its own resumes from its seed if there is one.
    Single-process runs only: a multi-process run trains alone.

    Returns the summary row. Divergence is recorded as status `diverged`; other exceptions propagate
    (the caller records them as `failed`).
    """
    import jax

    from scaling.training import sharding as shd
    from scaling.training import step as tr
    from scaling.training.checkpoint import Checkpoints

    t_start = time.perf_counter()
    enable_compilation_cache()
    mesh = shd.make_mesh(spec.mesh, devices)
    program = tr.build_program(spec, mesh)
    ctx = RunContext(spec, mesh, program)
    single = jax.process_count() == 1
    log = RunLog(spec, out_dir, ctx, writer=jax.process_index() == 0, t_start=t_start)
    log.write_config()

    ckpt = Checkpoints(log.path / "checkpoints")
    branch = plan.branches.get(spec.run_id) if plan and single else None
    latest = ckpt.latest_step()
    seed = open_seed(out_dir, branch) if latest is None and branch is not None else None
    host: dict = {}
    if seed is not None:  # a branch adopts the state its trunk had at the branch point
        seed_ckpt = Checkpoints(seed.folder / "checkpoints")
        state, host = seed_ckpt.restore(seed.step, program.abstract_state())
        seed_ckpt.close()
        params, opt_state, step = state["params"], state["opt_state"], seed.step
        log.resume(host["losses_since_eval"], seed.history, seed.calibration)
        if log.writer:
            records.write_json(log.path / "branch.json", seed.info)
    elif latest is not None:
        state, host = ckpt.restore(latest, program.abstract_state())
        params, opt_state, step = state["params"], state["opt_state"], latest
        log.resume(host["losses_since_eval"], *rows_until(log.path, latest))
    else:
        log.check_fresh(ckpt.folder)
        params = program.init_params()
        opt_state = program.init_opt_state(params)
        step = 0
    if (log.path / "branch.json").exists():  # this run left its trunk at branch_step (its records say so)
        log.base.update(json.loads((log.path / "branch.json").read_text()))
    branches = plan.of_trunk(spec.run_id) if plan and single and log.writer else []
    seeder = Seeder(out_dir, spec, branches, latest, host, ctx) if branches else None
    if seeder is not None and not seeder.active:
        seeder = None

    if seed is not None and log.history:
        log.write("running", log.history[-1])
    else:
        log.started(step)

    timer = Throughput(ctx.tokens_per_step)
    pending = None  # (step, metrics) dispatched but not yet read

    def read(pending_item):
        s, metrics = pending_item
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise tr.Diverged(f"non-finite training loss at step {s}")
        log.losses_since_eval.append(loss)
        if seeder is not None:
            seeder.on_loss(loss)
        if on_step:  # every step, whether read while the next one runs or at a sync point
            on_step({"step": s, "steps": spec.steps, "tokens": s * ctx.tokens_per_step, "loss": loss,
                     "tokens_per_second": timer.overall()})
        return loss, float(metrics["grad_norm"])

    measured: dict = {}

    def measure(at: int, params, grad_norm: float) -> tuple[dict, list]:
        """Evaluation columns of the state after `at` updates, and its calibration bins: computed once,
        shared by this run's row and its branches' rows at the same step."""
        if at not in measured:
            values, bins = ctx.evaluate(params, grad_norm, timer.interval())
            measured.clear()
            measured[at] = ({**values, "wall_seconds": log.wall()}, bins)
        return measured[at]

    def save(at: int) -> None:
        if seeder is not None:
            seeder.save_pending()
        ckpt.save(at, {"params": params, "opt_state": opt_state},
                  {"losses_since_eval": log.losses_since_eval, **(seeder.host_state() if seeder else {})})

    try:
        # One process stops between steps when its job is being preempted (scaling/training/preemption.py);
        # several would first have to agree on the step, so theirs stop where submitit stops them.
        with preemption.polling() if single else contextlib.nullcontext():
            while step < spec.steps:
                if preemption.requested() and single:
                    if pending is not None:
                        read(pending)
                        pending = None
                    if step and ckpt.latest_step() != step:
                        save(step)
                    raise preemption.Preempted(step)
                step += 1
                params, opt_state, metrics = program.train_step(params, opt_state, ctx.batch(step))
                if pending is not None:
                    read(pending)
                pending = (step, metrics)
                if timer.mark is None:  # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    timer.start(step)
                own_sync = ctx.syncs(step)
                if not (own_sync or (seeder and seeder.needs(step))):
                    continue
                _, grad_norm = read(pending)
                pending = None
                timer.lap(step)
                if step in ctx.evals:
                    log.evaluation(step, *measure(step, params, grad_norm))
                if seeder is not None:
                    seeder.at_step(step, lambda at: measure(at, params, grad_norm),
                                   {"params": params, "opt_state": opt_state})
                if step in ctx.evals:
                    timer.new_interval()
                if own_sync:
                    save(step)
                    if step in ctx.evals:
                        log.write("running", log.history[-1])
                    if halt_at is not None and step >= halt_at:
                        raise Halt(step)
                timer.start(step)
        result = log.complete(params, timer.overall())
        if branch is not None and not spec.train.keep_checkpoints:
            remove_seed(out_dir, branch)
        ckpt.finish(keep=spec.train.keep_checkpoints)
        return result
    except preemption.Preempted:
        ckpt.close()
        raise
    except tr.Diverged as e:
        result = log.diverged(step, str(e))
        ckpt.close()
        return result


def run_and_record(spec: RunSpec, out_dir: str | Path, **kwargs) -> dict:
    """`train_run` under the run's lock; an exception becomes status `failed` with its text.

    The status is read again under the lock: a run that another process completed (or found
    diverged) while this one waited for it is returned as it is, with `already` set, and nothing
    of it is trained or written. Multi-host: process 0 takes the lock, reads the status and tells
    the others; only process 0 writes the failure records."""
    import jax

    path = records.run_dir(out_dir, spec.run_id)
    lead = jax.process_index() == 0
    lock = records.RunLock(path) if lead else None
    # 0: another process holds the run; 1: train it; 2 + i: it is already DONE[i].
    verdict = 0
    if lead and lock.acquire():
        status = records.read_status(path)
        verdict = 2 + records.DONE.index(status) if status in records.DONE else 1
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        verdict = int(multihost_utils.broadcast_one_to_all(np.int32(verdict)))
    try:
        if verdict == 0:
            return {"run_id": spec.run_id, "status": "locked", "error": "another process is training this run"}
        if verdict >= 2:
            return {"run_id": spec.run_id, "status": records.DONE[verdict - 2], "error": None, "already": True}
        return train_run(spec, out_dir, **kwargs)
    except Halt:
        raise
    except Exception as e:  # noqa: BLE001 - any error of one run must not stop the sweep
        message = record_error(spec, out_dir, e) if lead else error_line(e)
        return {"run_id": spec.run_id, "status": "failed", "error": message}
    finally:
        if lock is not None:
            lock.release()
