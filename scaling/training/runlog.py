"""One run's records as they grow (`RunLog`), what the runs of one shape share (`RunContext`), and
their throughput clock (`Throughput`)."""
from __future__ import annotations

import dataclasses
import math
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from scaling import data as data_mod, hardware, records
from scaling.config import RunSpec
from scaling.flops import flops_6nd, training_flops_per_token
from scaling.records import base_row
from scaling.science import probes, sampling
from scaling.science.metrics import reliability_table
from scaling.training import sharding as shd, step as tr
from scaling.training.evalsets import EvalSets
from scaling.training.checkpoint import CheckpointError
from scaling.training.tracker import Tracker


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


class RunContext:
    """What the runs of one shape on one mesh share, whether trained alone or packed: the data and
    its batches, the evaluation windows and probes, the FLOP accounting, and the record columns
    that the hardware sets."""

    def __init__(self, spec: RunSpec, mesh, program):


        m, t = spec.model, spec.train
        self.spec, self.program = spec, program
        self.source = data_mod.open_source(spec.data.source, paths=spec.data.paths, dtype=spec.data.dtype,
                                           vocab_size=m.vocab_size, val_fraction=spec.data.val_fraction,
                                           base_dir=spec.data.base_dir, synthetic=spec.data.synthetic,
                                           tasks=spec.data.tasks, facts=spec.data.facts, recipe=spec.data.recipe)
        self.batcher = data_mod.Batcher(self.source.train, m.seq_len, spec.batch_size, spec.data.data_seed,
                                        spec.data.unique_tokens)
        # This process loads share `data_share` of `n_shares` of every batch's rows (multi-host: only its own).
        self.data_share, self.n_shares, self.local_shards = shd.process_share(mesh)
        n_val = tr.n_eval_windows(spec, shd.batch_shards(mesh), len(self.source.val) // m.seq_len)
        self.val_windows = data_mod.validation_windows(self.source.val, m.seq_len, n_val)
        self.chunk = tr.eval_chunk(spec, shd.batch_shards(mesh))
        self.eval_sets = EvalSets(spec, shd.batch_shards(mesh))  # [eval.sets.<name>]: scored beside val_windows
        self.evals = set(t.eval_steps(spec.steps))
        self.probes = probes.Probes(spec.data.tasks, m, t.compute_dtype) if spec.data.tasks else None
        # A source with a known distribution: its exact optimal loss on exactly these windows.
        optimal = float(np.mean(self.source.optimal_nll(self.val_windows))) if self.source.optimal_nll else math.nan
        exponents = self.source.true_exponents or (math.nan, math.nan)  # known: the facts source
        self.extra = {"val_loss_optimal": optimal, "true_exponent_data": exponents[0],
                      "true_exponent_params": exponents[1], **(self.probes.chance_columns() if self.probes else {})}
        self.peak = hardware.peak_flops(t.compute_dtype, n_devices=mesh.size)
        self.flops_per_token = training_flops_per_token(**dataclasses.asdict(m))
        self.tokens_per_step = spec.batch_size * m.seq_len
        self.batch_sharding = shd.batch_sharding(mesh)
        self.global_shape = (program.n_micro, spec.batch_size // program.n_micro, m.seq_len + 1)
        device_kind = jax.devices()[0].device_kind
        self.columns = {"peak_flops": self.peak.flops_per_second, "peak_flops_source": self.peak.source,
                        "device_kind": device_kind, "n_devices": mesh.size,
                        "mesh": f"{spec.mesh.preset}:{shd.describe(mesh)}",
                        # The distinct tokens training draws from: data.unique_tokens, else the whole split.
                        "unique_tokens": self.batcher.unique_tokens}
        self.config = {"data_content_hash": self.source.content_hash, "device_kind": device_kind,
                       "n_devices": mesh.size, "process_count": jax.process_count(), "mesh": self.columns["mesh"],
                       "steps": spec.steps, "batch_size": spec.batch_size, "micro_batches": program.n_micro,
                       "eval_sequences": len(self.val_windows), "flops_per_token": self.flops_per_token}
        if self.eval_sets.sets:
            self.config["eval_sets"] = self.eval_sets.describe()

    def batch(self, step: int):
        """The global batch of update `step` (1-based), from this process's rows of it."""
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
        ev = tr.evaluate(self.program, params, self.val_windows, self.chunk)
        values = dict(val_loss=ev["val_loss"], val_entropy=ev["val_entropy"], val_ece=ev["val_ece"],
                      grad_norm=grad_norm, tokens_per_second=tokens_per_second, mfu=self.mfu(tokens_per_second))
        if self.source.token_bytes is not None:  # the exact bytes of these windows' targets
            values["val_bits_per_byte"] = data_mod.bits_per_byte(ev["val_loss"], self.val_windows,
                                                                 self.source.token_bytes)
        values.update(self.eval_sets.evaluate(self.program, params, self.chunk))
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
        self.spec, self.ctx, self.writer = spec, ctx, writer
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.path = records.run_dir(out_dir, spec.run_id)
        self.base = {**base_row(spec), **ctx.columns, **(columns or {})}
        self.schedule = tr.lr_schedule(spec.optim, spec.steps)
        self.history: list[dict] = []
        self.calibration: list[dict] = []  # the reliability table of every evaluation (15 confidence bins)
        self.losses_since_eval: list[float] = []
        self.wall_offset = 0.0  # wall seconds of the run before this process took it up
        self.tracker = Tracker()  # where the history rows also go ([sweep] tracker); set by the loop

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
                "epochs": tokens / self.base["unique_tokens"], **self.ctx.eval_sets.blank(),
                **self.ctx.extra, **values}

    def evaluation(self, step: int, values: dict, bins) -> dict:
        """A history row (and its calibration bins) for the evaluation after `step` updates."""
        r = self.row(step=step, train_loss=float(np.mean(self.losses_since_eval)), lr=float(self.schedule(step - 1)),
                     **values)
        self.history.append(r)
        self.tracker.log(r)
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
        self.tracker.log(bad)
        self.write("diverged", bad, message)
        return {**bad, "status": "diverged", "error": message}

    def complete(self, params, tokens_per_second: float | None) -> dict:
        """The summary of the finished run (its last evaluation, the whole run's throughput, the
        samples' columns) written with status `complete`."""
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


