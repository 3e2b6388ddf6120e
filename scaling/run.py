"""One training run from its spec to its records: resume, train, evaluate, checkpoint, write.

History rows are written at every evaluation together with a checkpoint, so after a kill the
history on disk never runs ahead of a restorable state (rows past the checkpoint are dropped on
resume and recomputed identically: training is deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import socket
import subprocess
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Callable

from scaling import branch as branching
from scaling import preemption, records
from scaling.config import RunSpec
from scaling.flops import FLOPS_CONVENTION, flops_6nd, param_counts, training_flops_per_token


class Halt(Exception):
    """Raised by `halt_at` to simulate a kill after a checkpoint (tests)."""


def base_row(spec: RunSpec) -> dict:
    """The columns that follow from the spec alone (no JAX needed)."""
    m, counts = spec.model, param_counts(**dataclasses.asdict(spec.model))
    return {
        "run_id": spec.run_id, "sweep": spec.sweep, "seed": spec.seed, "data_seed": spec.data.data_seed,
        "grid": spec.grid, "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "d_ff": m.d_ff,
        "vocab_size": m.vocab_size, "seq_len": m.seq_len, "n_params": counts.n_params,
        "n_params_nonembed": counts.n_params_nonembed, "n_params_embed": counts.n_params_embed,
        "batch_tokens": spec.batch_size * m.seq_len, "target_tokens": spec.steps * spec.batch_size * m.seq_len,
        "flops_convention": FLOPS_CONVENTION,
        "flops_budget": spec.flops_budget if spec.flops_budget is not None else math.nan, "pack_size": 1,
        "branched_from": None, "branch_step": None,  # set where a run resumes from its trunk's seed
    }


def write_failure(spec: RunSpec, out_dir: str | Path, status: str, error: str) -> None:
    """Mark a run failed (or diverged) even when it died before training started."""
    path = records.run_dir(out_dir, spec.run_id)
    summary = path / "summary.parquet"
    row = records.read_rows(summary)[0] if records.read_status(path) else {**base_row(spec), "step": 0, "tokens": 0}
    records.write_rows(summary, [{**row, "status": status, "error": error}])


def error_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def record_error(spec: RunSpec, out_dir: str | Path, error: BaseException) -> str:
    """Mark a run failed by the exception being handled: its traceback in the run's error.txt, its
    first line (returned) in the records."""
    message = error_line(error)
    (records.run_dir(out_dir, spec.run_id) / "error.txt").write_text(traceback.format_exc())
    write_failure(spec, out_dir, "failed", message)
    return message


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in the user's cache folder: a rerun, or a second run of the
    same shape, loads its compiled steps instead of compiling them again."""
    import jax

    from scaling.data import cache_dir
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
        # Every program, however quick to compile: a run has a dozen small ones (init, eval,
        # probes, sampling) whose compiles add up to more than the train step's.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def train_run(spec: RunSpec, out_dir: str | Path, *, on_step: Callable[[dict], None] | None = None,
              devices=None, halt_at: int | None = None, plan: branching.Plan | None = None) -> dict:
    """Train `spec` (resuming from its checkpoint if one exists) and write its records.

    `plan` (a branched sweep, scaling/branch.py): a trunk also records its branches' rows and writes
    their seeds; a branch without a checkpoint of its own resumes from its seed if there is one.
    Single-process runs only: a multi-process run trains alone.

    Returns the summary row. Divergence is recorded as status `diverged`; other exceptions propagate
    (the caller records them as `failed`).
    """
    import jax
    import numpy as np

    from scaling import data as data_mod
    from scaling import hardware, probes, sampling
    from scaling.metrics import reliability_table
    from scaling import sharding as shd
    from scaling import train as tr
    from scaling.checkpoint import CheckpointError, Checkpoints

    t_start = time.perf_counter()
    enable_compilation_cache()
    path = records.run_dir(out_dir, spec.run_id)
    writer = jax.process_index() == 0
    m, t = spec.model, spec.train
    source = data_mod.open_source(spec.data.source, paths=spec.data.paths, dtype=spec.data.dtype,
                                  vocab_size=m.vocab_size, val_fraction=spec.data.val_fraction,
                                  base_dir=spec.data.base_dir, synthetic=spec.data.synthetic, tasks=spec.data.tasks)
    batcher = data_mod.Batcher(source.train, m.seq_len, spec.batch_size, spec.data.data_seed)
    mesh = shd.make_mesh(spec.mesh, devices)
    n_dev = mesh.size
    # This process loads share `data_share` of `n_shares` of every batch's rows (multi-host: only its own).
    data_share, n_shares, local_shards = shd.process_share(mesh)
    n_val = tr.n_eval_windows(spec, shd.batch_shards(mesh), len(source.val) // m.seq_len)
    val_windows = data_mod.validation_windows(source.val, m.seq_len, n_val)
    # A source with a known distribution: its exact optimal loss on exactly these windows.
    val_loss_optimal = float(np.mean(source.optimal_nll(val_windows))) if source.optimal_nll else math.nan
    program = tr.build_program(spec, mesh)
    probe_set = probes.Probes(spec.data.tasks, m, t.compute_dtype) if spec.data.tasks else None
    chance = probe_set.chance_columns() if probe_set else {}
    peak = hardware.peak_flops(t.compute_dtype, n_devices=n_dev)
    flops_per_token = training_flops_per_token(**dataclasses.asdict(m))
    tokens_per_step = spec.batch_size * m.seq_len
    schedule = tr.lr_schedule(spec.optim, spec.steps)
    device_kind = jax.devices()[0].device_kind

    base = {**base_row(spec), "peak_flops": peak.flops_per_second, "peak_flops_source": peak.source,
            "device_kind": device_kind, "n_devices": n_dev, "mesh": f"{spec.mesh.preset}:{shd.describe(mesh)}"}
    if writer:
        records.write_json(path / "config.json", {
            "run_id": spec.run_id, "spec": spec.to_dict(), "versions": _versions(), "git_commit": _git_commit(),
            "host": socket.gethostname(), "data_content_hash": source.content_hash, "device_kind": device_kind,
            "n_devices": n_dev, "process_count": jax.process_count(), "mesh": base["mesh"],
            "steps": spec.steps, "batch_size": spec.batch_size, "micro_batches": program.n_micro,
            "eval_sequences": len(val_windows), "flops_per_token": flops_per_token,
        })

    ckpt = Checkpoints(path / "checkpoints")
    history: list[dict] = []
    history_path = path / "history.parquet"
    calibration: list[dict] = []  # the reliability table of every evaluation (15 confidence bins)
    calibration_path = path / "calibration.parquet"
    single = jax.process_count() == 1
    branch = plan.branches.get(spec.run_id) if plan and single else None
    latest = ckpt.latest_step()
    seed = branching.open_seed(out_dir, branch) if latest is None and branch is not None else None
    wall_offset = 0.0
    host: dict = {}
    if seed is not None:  # a branch adopts the state its trunk had at the branch point
        seed_ckpt = Checkpoints(seed.folder / "checkpoints")
        state, host = seed_ckpt.restore(seed.step, program.abstract_state())
        seed_ckpt.close()
        params, opt_state, step = state["params"], state["opt_state"], seed.step
        losses_since_eval = host["losses_since_eval"]
        history, calibration = seed.history, seed.calibration
        wall_offset = history[-1]["wall_seconds"] if history else 0.0
        if writer:
            records.write_json(path / "branch.json", seed.info)
    elif latest is not None:
        state, host = ckpt.restore(latest, program.abstract_state())
        params, opt_state, step = state["params"], state["opt_state"], latest
        losses_since_eval = host["losses_since_eval"]
        if history_path.exists():
            history = [r for r in records.read_rows(history_path) if r["step"] <= latest]
        if calibration_path.exists():
            calibration = [r for r in records.read_rows(calibration_path) if r["step"] <= latest]
        wall_offset = history[-1]["wall_seconds"] if history else 0.0
    else:
        if history_path.exists() and records.read_rows(history_path):
            raise CheckpointError(f"{history_path} has records but {ckpt.folder} holds no checkpoint; "
                                  "delete the run folder to start it over")
        params = program.init_params()
        opt_state = program.init_opt_state(params)
        step = 0
        losses_since_eval = []
    if (path / "branch.json").exists():  # this run left its trunk at branch_step (its records say so)
        base.update(json.loads((path / "branch.json").read_text()))
    branches = plan.of_trunk(spec.run_id) if plan and single and writer else []
    seeder = branching.Seeder(out_dir, spec, branches, latest, host) if branches else None
    if seeder is not None and not seeder.active:
        seeder = None

    def row(over: dict | None = None, **values) -> dict:
        tokens = values["step"] * tokens_per_step
        return {**base, **(over or {}), "status": "running", "error": None, "tokens": tokens,
                "flops": flops_per_token * tokens,
                "flops_6nd": flops_6nd(base["n_params_nonembed"], tokens), "val_bits_per_byte": math.nan,
                "val_loss_optimal": val_loss_optimal, **chance, **values}

    def write(status: str, summary_row: dict, error: str | None = None):
        if writer:
            records.write_rows(history_path, history)
            if calibration:
                records.write_table(calibration_path, calibration)
            records.write_rows(path / "summary.parquet", [{**summary_row, "status": status, "error": error}])

    if writer and not history:
        records.write_rows(path / "summary.parquet", [row(step=step, status="running", wall_seconds=0.0)])
    elif writer and seed is not None:
        write("running", history[-1])

    evals = set(tr.eval_steps(spec.steps, t.eval_points))
    chunk = tr.eval_chunk(spec, shd.batch_shards(mesh))
    batch_sharding = shd.batch_sharding(mesh)
    global_shape = (program.n_micro, spec.batch_size // program.n_micro, m.seq_len + 1)

    timed_tokens, timed_seconds = 0, 0.0  # whole run, compile step excluded
    interval_tokens, interval_seconds = 0, 0.0
    pending = None  # (step, metrics) dispatched but not yet read
    clock = None
    first_step = True

    def read(pending_item):
        s, metrics = pending_item
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise tr.Diverged(f"non-finite training loss at step {s}")
        losses_since_eval.append(loss)
        if seeder is not None:
            seeder.on_loss(loss)
        if on_step:  # every step, whether read while the next one runs or at a sync point
            on_step({"step": s, "steps": spec.steps, "tokens": s * tokens_per_step, "loss": loss,
                     "tokens_per_second": timed_tokens / timed_seconds if timed_seconds else None})
        return loss, float(metrics["grad_norm"])

    measured: dict = {}

    def measure(at: int, params, grad_norm: float) -> tuple[dict, dict]:
        """Evaluation columns of the state after `at` updates, and its calibration bins: computed once,
        shared by this run's row and its branches' rows at the same step."""
        if at not in measured:
            ev = tr.evaluate(program, params, val_windows, chunk)
            tps = interval_tokens / interval_seconds if interval_seconds else math.nan
            values = dict(val_loss=ev["val_loss"], val_entropy=ev["val_entropy"], val_ece=ev["val_ece"],
                          grad_norm=grad_norm, wall_seconds=wall_offset + time.perf_counter() - t_start,
                          tokens_per_second=tps, mfu=tps * flops_per_token / peak.flops_per_second)
            if source.bytes_per_token:
                values["val_bits_per_byte"] = ev["val_loss"] / math.log(2) / source.bytes_per_token
            if probe_set:
                values.update(probe_set.evaluate(params))
            measured.clear()
            measured[at] = (values, ev["ece_bins"])
        return measured[at]

    def save(at: int) -> None:
        if seeder is not None:
            seeder.save_pending()
        ckpt.save(at, {"params": params, "opt_state": opt_state},
                  {"losses_since_eval": losses_since_eval, **(seeder.host_state() if seeder else {})})

    last = {"step": step, "wall_seconds": wall_offset}
    try:
        # One process stops between steps when its job is being preempted (scaling/preemption.py);
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
                local = batcher.batch(step - 1, data_share, n_shares)
                micro = tr.micro_batches(local, local_shards, program.n_micro)
                batch = tr.to_global(micro, batch_sharding, global_shape)
                params, opt_state, metrics = program.train_step(params, opt_state, batch)
                if pending is not None:
                    read(pending)
                pending = (step, metrics)
                if first_step:
                    jax.block_until_ready(metrics)
                    first_step, clock = False, time.perf_counter()
                    if (step not in evals and step != spec.steps and step % max(t.checkpoint_every, 1) != 0
                            and not (seeder and seeder.needs(step))):
                        continue
                own_sync = step in evals or (t.checkpoint_every and step % t.checkpoint_every == 0)
                if own_sync or (seeder and seeder.needs(step)):
                    loss, grad_norm = read(pending)
                    pending = None
                    now = time.perf_counter()
                    if clock is not None:
                        dt = now - clock
                        n_tok = (step - last["step_timed"]) * tokens_per_step if "step_timed" in last else 0
                        timed_tokens += n_tok
                        timed_seconds += dt if n_tok else 0.0
                        interval_tokens += n_tok
                        interval_seconds += dt if n_tok else 0.0
                    if step in evals:
                        values, bins = measure(step, params, grad_norm)
                        r = row(step=step, train_loss=float(np.mean(losses_since_eval)), lr=float(schedule(step - 1)),
                                **values)
                        history.append(r)
                        calibration.extend({"run_id": spec.run_id, "step": step, "tokens": r["tokens"], **b}
                                           for b in reliability_table(bins))
                        losses_since_eval.clear()
                    if seeder is not None:
                        seeder.at_step(step, lambda at: measure(at, params, grad_norm), row,
                                       {"params": params, "opt_state": opt_state})
                    if step in evals:
                        interval_tokens, interval_seconds = 0, 0.0
                    if own_sync:
                        save(step)
                        if step in evals:
                            write("running", history[-1])
                        if halt_at is not None and step >= halt_at:
                            raise Halt(step)
                    clock = time.perf_counter()
                    last["step_timed"] = step
                elif clock is not None and "step_timed" not in last:
                    last["step_timed"] = step - 1
        final = dict(history[-1])
        tps = timed_tokens / timed_seconds if timed_seconds else final["tokens_per_second"]
        final.update(wall_seconds=wall_offset + time.perf_counter() - t_start, tokens_per_second=tps,
                     mfu=tps * flops_per_token / peak.flops_per_second)
        if spec.sampling:
            columns, texts = sampling.sample_all(params, m, val_windows, spec.sampling, t.compute_dtype)
            final.update(columns)
            if writer:
                text = sampling.render(texts, spec.sampling, as_bytes=source.bytes_per_token == 1.0)
                records.write_text(path / "samples.txt", text)
        write("complete", final)
        if branch is not None and not t.keep_checkpoints:
            branching.remove_seed(out_dir, branch)
        if not t.keep_checkpoints:
            ckpt.delete_all()
        else:
            ckpt.close()
        return {**final, "status": "complete"}
    except preemption.Preempted:
        ckpt.close()
        raise
    except tr.Diverged as e:
        bad = row(step=step, train_loss=math.nan, val_loss=math.nan, val_entropy=math.nan, val_ece=math.nan,
                  lr=float(schedule(step - 1)), grad_norm=math.nan,
                  wall_seconds=wall_offset + time.perf_counter() - t_start, tokens_per_second=math.nan, mfu=math.nan)
        history.append(bad)
        write("diverged", bad, str(e))
        ckpt.close()
        return {**bad, "status": "diverged", "error": str(e)}


def run_and_record(spec: RunSpec, out_dir: str | Path, **kwargs) -> dict:
    """`train_run` under the run's lock; an exception becomes status `failed` with its text.

    Multi-host: process 0 takes the lock and tells the others whether it got it; only process 0
    writes the failure records."""
    import jax

    path = records.run_dir(out_dir, spec.run_id)
    lead = jax.process_index() == 0
    lock = records.RunLock(path) if lead else None
    acquired = lock.acquire() if lead else True
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        acquired = bool(multihost_utils.broadcast_one_to_all(np.int32(acquired)))
    if not acquired:
        return {"run_id": spec.run_id, "status": "locked", "error": "another process is training this run"}
    try:
        return train_run(spec, out_dir, **kwargs)
    except Halt:
        raise
    except Exception as e:  # noqa: BLE001 - any error of one run must not stop the sweep
        message = record_error(spec, out_dir, e) if lead else error_line(e)
        return {"run_id": spec.run_id, "status": "failed", "error": message}
    finally:
        if lock is not None:
            lock.release()
