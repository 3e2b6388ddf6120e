"""One training run from its spec to its records: resume, train, evaluate, checkpoint, write.

History rows are written at every evaluation together with a checkpoint, so after a kill the
history on disk never runs ahead of a restorable state (rows past the checkpoint are dropped on
resume and recomputed identically: training is deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
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


# errno values that say the results folder, not the run, is at fault, as the user should read them.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}


def storage_problem(error: BaseException) -> str | None:
    """'no space left on the device (writing <file>)' and the like, when `error` or an exception it
    was raised from is a storage error: orbax reports a full disk as a ValueError whose text carries
    the OS error, pyarrow as an OSError, Python's own writes as OSError with the errno set."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            where = f" (writing {error.filename})" if error.filename else ""
            return _STORAGE_ERRNOS[error.errno] + where
        text = str(error)
        for code, phrase in _STORAGE_ERRNOS.items():
            if os.strerror(code) in text or f"[Errno {code}]" in text:
                return f"{phrase} (while writing the run's records or checkpoint)"
        error = error.__cause__ or error.__context__
    return None


def error_line(error: BaseException) -> str:
    """The one line that the records and the sweep's report give for a run's error."""
    problem = storage_problem(error)
    if problem:
        return problem
    return f"{type(error).__name__}: {error}".splitlines()[0][:400]


def record_error(spec: RunSpec, out_dir: str | Path, error: BaseException) -> str:
    """Mark a run failed by the exception being handled: its traceback in the run's error.txt, its
    first line (returned) in the records. A full or read-only disk may refuse either write: the
    temporary files of the failed write are removed first (they would keep a disk full), and what
    cannot be written is left out; the returned line still reaches the sweep's report."""
    message = error_line(error)
    path = records.run_dir(out_dir, spec.run_id)
    records.remove_temporaries(path)
    try:
        records.write_text(path / "error.txt", traceback.format_exc())
    except OSError:
        pass
    try:
        write_failure(spec, out_dir, "failed", message)
    except OSError as e:
        return f"{message}; the failure could not be recorded either ({error_line(e)})"
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


class RunContext:
    """What the runs of one shape on one mesh share, whether trained alone or packed: the data and
    its batches, the evaluation windows and probes, the FLOP accounting, and the record columns
    that the hardware sets."""

    def __init__(self, spec: RunSpec, mesh, program):
        import jax
        import numpy as np

        from scaling import data as data_mod
        from scaling import hardware, probes
        from scaling import sharding as shd
        from scaling import train as tr

        m, t = spec.model, spec.train
        self.spec, self.program = spec, program
        self.source = data_mod.open_source(spec.data.source, paths=spec.data.paths, dtype=spec.data.dtype,
                                           vocab_size=m.vocab_size, val_fraction=spec.data.val_fraction,
                                           base_dir=spec.data.base_dir, synthetic=spec.data.synthetic,
                                           tasks=spec.data.tasks)
        self.batcher = data_mod.Batcher(self.source.train, m.seq_len, spec.batch_size, spec.data.data_seed)
        # This process loads share `data_share` of `n_shares` of every batch's rows (multi-host: only its own).
        self.data_share, self.n_shares, self.local_shards = shd.process_share(mesh)
        n_val = tr.n_eval_windows(spec, shd.batch_shards(mesh), len(self.source.val) // m.seq_len)
        self.val_windows = data_mod.validation_windows(self.source.val, m.seq_len, n_val)
        self.chunk = tr.eval_chunk(spec, shd.batch_shards(mesh))
        self.evals = set(tr.eval_steps(spec.steps, t.eval_points))
        self.probes = probes.Probes(spec.data.tasks, m, t.compute_dtype) if spec.data.tasks else None
        # A source with a known distribution: its exact optimal loss on exactly these windows.
        optimal = float(np.mean(self.source.optimal_nll(self.val_windows))) if self.source.optimal_nll else math.nan
        self.extra = {"val_loss_optimal": optimal, **(self.probes.chance_columns() if self.probes else {})}
        self.peak = hardware.peak_flops(t.compute_dtype, n_devices=mesh.size)
        self.flops_per_token = training_flops_per_token(**dataclasses.asdict(m))
        self.tokens_per_step = spec.batch_size * m.seq_len
        self.batch_sharding = shd.batch_sharding(mesh)
        self.global_shape = (program.n_micro, spec.batch_size // program.n_micro, m.seq_len + 1)
        device_kind = jax.devices()[0].device_kind
        self.columns = {"peak_flops": self.peak.flops_per_second, "peak_flops_source": self.peak.source,
                        "device_kind": device_kind, "n_devices": mesh.size,
                        "mesh": f"{spec.mesh.preset}:{shd.describe(mesh)}"}
        self.config = {"data_content_hash": self.source.content_hash, "device_kind": device_kind,
                       "n_devices": mesh.size, "process_count": jax.process_count(), "mesh": self.columns["mesh"],
                       "steps": spec.steps, "batch_size": spec.batch_size, "micro_batches": program.n_micro,
                       "eval_sequences": len(self.val_windows), "flops_per_token": self.flops_per_token}

    def batch(self, step: int):
        """The global batch of update `step` (1-based), from this process's rows of it."""
        from scaling import train as tr
        local = self.batcher.batch(step - 1, self.data_share, self.n_shares)
        micro = tr.micro_batches(local, self.local_shards, self.program.n_micro)
        return tr.to_global(micro, self.batch_sharding, self.global_shape)

    def syncs(self, step: int) -> bool:
        """Whether the run stops after `step` to evaluate or checkpoint."""
        every = self.spec.train.checkpoint_every
        return step in self.evals or bool(every and step % every == 0)

    def mfu(self, tokens_per_second: float) -> float:
        return tokens_per_second * self.flops_per_token / self.peak.flops_per_second

    def evaluate(self, params, grad_norm: float, tokens_per_second: float) -> tuple[dict, list]:
        """The evaluation columns of `params` and their calibration bins."""
        from scaling import train as tr
        ev = tr.evaluate(self.program, params, self.val_windows, self.chunk)
        values = dict(val_loss=ev["val_loss"], val_entropy=ev["val_entropy"], val_ece=ev["val_ece"],
                      grad_norm=grad_norm, tokens_per_second=tokens_per_second, mfu=self.mfu(tokens_per_second))
        if self.source.bytes_per_token:
            values["val_bits_per_byte"] = ev["val_loss"] / math.log(2) / self.source.bytes_per_token
        if self.probes:
            values.update(self.probes.evaluate(params))
        return values, ev["ece_bins"]


class Throughput:
    """Training tokens per second, compile and evaluation left out: timed from the end of the first
    (compiling) step, in stretches between the steps where the run stops to evaluate or save."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.mark: tuple[int, float] | None = None  # (step, clock) where the current stretch began
        self.tokens, self.seconds = 0, 0.0  # the whole run
        self.interval_tokens, self.interval_seconds = 0, 0.0  # since the last evaluation

    def start(self, step: int) -> None:
        """From the end of `step` on (call after it has finished)."""
        self.mark = (step, time.perf_counter())

    def lap(self, step: int) -> None:
        """The stretch up to the end of `step` (finished) counts."""
        n_tok = (step - self.mark[0]) * self.tokens_per_step
        if n_tok:
            dt = time.perf_counter() - self.mark[1]
            self.tokens, self.seconds = self.tokens + n_tok, self.seconds + dt
            self.interval_tokens, self.interval_seconds = self.interval_tokens + n_tok, self.interval_seconds + dt

    def overall(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    def interval(self) -> float:
        return self.interval_tokens / self.interval_seconds if self.interval_seconds else math.nan

    def new_interval(self) -> None:
        self.interval_tokens, self.interval_seconds = 0, 0.0


def rows_until(folder: Path, step: int) -> tuple[list[dict], list[dict]]:
    """The history and calibration rows a run folder holds up to `step`, a checkpoint's: rows past it
    are dropped on resume and recomputed identically."""
    def read(name: str) -> list[dict]:
        path = folder / name
        return [r for r in records.read_rows(path) if r["step"] <= step] if path.exists() else []
    return read("history.parquet"), read("calibration.parquet")


class RunLog:
    """One run's records as they grow, as its folder holds them: history rows (one per
    evaluation), calibration bins, and the training losses since the last evaluation. Only the
    process that writes records (`writer`) touches the folder. `t_start` (perf_counter) is when this
    process took the run up: `wall()` counts from there, on top of the wall seconds already recorded."""

    def __init__(self, spec: RunSpec, out_dir: str | Path, ctx: RunContext, *, writer: bool = True,
                 columns: dict | None = None, t_start: float | None = None):
        from scaling import train as tr
        self.spec, self.ctx, self.writer = spec, ctx, writer
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.path = records.run_dir(out_dir, spec.run_id)
        self.base = {**base_row(spec), **ctx.columns, **(columns or {})}
        self.schedule = tr.lr_schedule(spec.optim, spec.steps)
        self.history: list[dict] = []
        self.calibration: list[dict] = []  # the reliability table of every evaluation (15 confidence bins)
        self.losses_since_eval: list[float] = []
        self.wall_offset = 0.0  # wall seconds of the run before this process took it up

    @property
    def history_path(self) -> Path:
        return self.path / "history.parquet"

    @property
    def calibration_path(self) -> Path:
        return self.path / "calibration.parquet"

    def write_config(self, **more) -> None:
        if self.writer:
            records.write_json(self.path / "config.json", {
                "run_id": self.spec.run_id, "spec": self.spec.to_dict(), "versions": _versions(),
                "git_commit": _git_commit(), "host": socket.gethostname(), **self.ctx.config, **more})

    def check_fresh(self, folder) -> None:
        """A run without a checkpoint must not have records either (they could not be continued)."""
        from scaling.checkpoint import CheckpointError
        if self.history_path.exists() and records.read_rows(self.history_path):
            raise CheckpointError(f"{self.history_path} has records but {folder} holds no checkpoint to "
                                  f"continue them from; delete the run folder {self.path} to train this run "
                                  "again from step 0")

    def resume(self, losses_since_eval: list[float], history: list[dict], calibration: list[dict]) -> None:
        """Continue from a saved state: its training losses since the last evaluation and the records
        up to its step (`rows_until`)."""
        self.losses_since_eval = list(losses_since_eval)
        self.history, self.calibration = history, calibration
        self.wall_offset = history[-1]["wall_seconds"] if history else 0.0

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t_start

    def row(self, over: dict | None = None, **values) -> dict:
        tokens = values["step"] * self.ctx.tokens_per_step
        return {**self.base, **(over or {}), "status": "running", "error": None, "tokens": tokens,
                "flops": self.ctx.flops_per_token * tokens,
                "flops_6nd": flops_6nd(self.base["n_params_nonembed"], tokens), "val_bits_per_byte": math.nan,
                **self.ctx.extra, **values}

    def evaluation(self, step: int, values: dict, bins) -> dict:
        """A history row (and its calibration bins) for the evaluation after `step` updates."""
        from scaling.metrics import reliability_table
        import numpy as np
        r = self.row(step=step, train_loss=float(np.mean(self.losses_since_eval)), lr=float(self.schedule(step - 1)),
                     **values)
        self.history.append(r)
        self.calibration.extend({"run_id": self.spec.run_id, "step": step, "tokens": r["tokens"], **b}
                                for b in reliability_table(bins))
        self.losses_since_eval.clear()
        return r

    def write(self, status: str, summary_row: dict, error: str | None = None) -> None:
        if self.writer:
            records.write_rows(self.history_path, self.history)
            if self.calibration:
                records.write_table(self.calibration_path, self.calibration)
            records.write_rows(self.path / "summary.parquet", [{**summary_row, "status": status, "error": error}])

    def started(self, step: int) -> None:
        """The summary says `running` from the start (a resumed run's says so already)."""
        if self.writer and not self.history:
            records.write_rows(self.path / "summary.parquet", [self.row(step=step, status="running", wall_seconds=0.0)])

    def diverged(self, step: int, message: str) -> dict:
        bad = self.row(step=step, train_loss=math.nan, val_loss=math.nan, val_entropy=math.nan, val_ece=math.nan,
                       lr=float(self.schedule(step - 1)), grad_norm=math.nan, wall_seconds=self.wall(),
                       tokens_per_second=math.nan, mfu=math.nan)
        self.history.append(bad)
        self.write("diverged", bad, message)
        return {**bad, "status": "diverged", "error": message}

    def complete(self, params, tokens_per_second: float | None) -> dict:
        """The summary of the finished run (its last evaluation, the whole run's throughput, the
        samples' columns) written with status `complete`."""
        from scaling import sampling
        ctx, m = self.ctx, self.spec.model
        final = dict(self.history[-1])
        tps = tokens_per_second or final["tokens_per_second"]
        final.update(wall_seconds=self.wall(), tokens_per_second=tps, mfu=ctx.mfu(tps))
        if self.spec.sampling:
            columns, texts = sampling.sample_all(params, m, ctx.val_windows, self.spec.sampling,
                                                 self.spec.train.compute_dtype)
            final.update(columns)
            if self.writer:
                text = sampling.render(texts, self.spec.sampling, as_bytes=ctx.source.bytes_per_token == 1.0)
                records.write_text(self.path / "samples.txt", text)
        self.write("complete", final)
        return {**final, "status": "complete"}


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

    from scaling import sharding as shd
    from scaling import train as tr
    from scaling.checkpoint import Checkpoints

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
    seed = branching.open_seed(out_dir, branch) if latest is None and branch is not None else None
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
    seeder = branching.Seeder(out_dir, spec, branches, latest, host, ctx) if branches else None
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
            branching.remove_seed(out_dir, branch)
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
