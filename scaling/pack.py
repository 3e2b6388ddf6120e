"""Packed runs: runs of one shape that differ only in seed or scalar hyper-parameters train together
in one program, vmapped over a leading member axis, each writing its own records as if alone.

What members may differ in (`pack_key` blanks exactly these): `seed`, `optim.lr`,
`optim.weight_decay`, `train.label_smoothing`, `train.entropy_coef`. Everything else is equal,
`data_seed` included, so the batch is loaded once and shared (vmap `in_axes=None`). A hyper-parameter
that differs between members enters the step as a float32 array [K] and the optimizer is built from it
inside the vmapped function; one that all members share stays a Python number, so a pack whose
members differ only in seed traces exactly the lone run's step under vmap.

One pack is one process. On a mesh of several devices (the `dp` preset: parameters replicated, as
the CPU's one-device-per-core mesh, scaling/cpu.py) every member's batch is split over the devices
and each member's gradients are summed once per step, as in its lone step; other presets, or several
processes, train the runs one after another, alone (`PackError` says why, the caller falls back).

Records are each member's own, in its own run folder, with the lone run's columns and `pack_size` = K
(config.json also lists the pack):
- every member starts exactly as its lone run would (its seed's initial parameters);
- timing: `wall_seconds` is the pack's wall time; `tokens_per_second` is the member's own tokens over
  the pack's training time, i.e. the pack's aggregate throughput / K, so the members' `mfu` add up to
  the pack's;
- checkpoints: each member's slice in its own folder, in the lone layout, so a killed pack resumes
  (as a pack, or a member alone) from them;
- a member that diverges is recorded `diverged` and the others go on (it keeps its slot in the
  compiled step until the pack ends; its numbers are ignored).
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scaling import records
from scaling.config import RunSpec
from scaling.flops import flops_6nd, training_flops_per_token
from scaling.run import (Halt, _git_commit, _versions, base_row, enable_compilation_cache, record_error,
                         train_run)

HYPER = ("lr", "weight_decay", "label_smoothing", "entropy_coef")
PACK_PRESET = "dp"  # the mesh preset a pack may split its batch over (parameters replicated)
DONE = ("complete", "diverged")


class PackError(Exception):
    """These runs cannot train as one pack here; the caller trains them alone."""


def hyper_values(spec: RunSpec) -> dict[str, float]:
    return {"lr": spec.optim.lr, "weight_decay": spec.optim.weight_decay,
            "label_smoothing": spec.train.label_smoothing, "entropy_coef": spec.train.entropy_coef}


def pack_key(spec: RunSpec) -> str:
    """Equal for runs that may share a pack: the spec with what members may differ in blanked."""
    same = dataclasses.replace(spec, seed=0, optim=dataclasses.replace(spec.optim, lr=1.0, weight_decay=0.0),
                               train=dataclasses.replace(spec.train, label_smoothing=0.0, entropy_coef=0.0))
    return json.dumps(same.to_dict(), sort_keys=True, default=str)


def plan_packs(runs, pack_size: int) -> list[list[RunSpec]]:
    """Runs grouped into packs of at most `pack_size` runs that may train together (in the order
    given); a group larger than `pack_size` is split into near-equal packs."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in runs:
        groups.setdefault(pack_key(spec), []).append(spec)
    out = []
    for members in groups.values():
        n_packs = -(-len(members) // pack_size)
        size, extra = divmod(len(members), n_packs)
        start = 0
        for k in range(n_packs):
            end = start + size + (k < extra)
            out.append(members[start:end])
            start = end
    return out


def check_packable(specs, mesh) -> None:
    import jax
    if len({pack_key(s) for s in specs}) > 1:
        raise PackError("the runs differ in more than seed, lr, weight decay, label smoothing and entropy coefficient")
    if len({s.run_id for s in specs}) < len(specs):
        raise PackError("a run appears twice")
    if jax.process_count() > 1:
        raise PackError(f"a pack trains in one process; this run has {jax.process_count()}")
    if mesh.size > 1 and specs[0].mesh.preset != PACK_PRESET:
        raise PackError(f"a pack splits its batch over devices with the {PACK_PRESET} mesh preset only, "
                        f"not {specs[0].mesh.preset}")


@dataclass
class PackedProgram:
    """The lone program of the shape (evaluation, probes, checkpoint layout) and the vmapped train
    step of K members. Parameters and optimizer state carry a leading member axis."""

    lone: object  # train.Program of the first member: everything but the train step is shared
    specs: tuple[RunSpec, ...]
    hyper: dict  # name -> float32[K]: the hyper-parameters that differ between members
    step: Callable  # jitted (params, opt_state, hyper, batch) -> (params, opt_state, metrics [K])
    init: Callable  # jitted seeds [K] -> params
    init_opt: Callable
    take: Callable  # jitted (tree, i) -> member i's slice

    @property
    def n_micro(self) -> int:
        return self.lone.n_micro

    def train_step(self, params, opt_state, batch):
        return self.step(params, opt_state, self.hyper, batch)

    def init_state(self):
        import jax.numpy as jnp
        params = self.init(jnp.asarray([s.seed for s in self.specs], jnp.int32))
        return params, self.init_opt(params)

    def member(self, tree, i: int):
        return self.take(tree, i)

    @staticmethod
    def stack(trees):
        import jax
        import jax.numpy as jnp
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def build_packed_program(specs, mesh, lone=None) -> PackedProgram:
    """`lone`: the first member's train.Program, when the caller has built it already."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from scaling import sharding as shd
    from scaling import train as tr
    from scaling.model import GPT

    spec = specs[0]
    lone = lone or tr.build_program(spec, mesh)
    values = [hyper_values(s) for s in specs]
    varying = [k for k in HYPER if len({v[k] for v in values}) > 1]
    hyper = {k: jnp.asarray([v[k] for v in values], jnp.float32) for k in varying}
    shared = {k: values[0][k] for k in HYPER if k not in varying}
    forward = lambda params, inputs_bs: lone.model(params)(inputs_bs)

    def member_step(params, opt_state, member_hyper, batch_mbs):
        h = {**shared, **member_hyper}
        values = {**tr.schedule_values(spec.optim, spec.steps), "lr": h["lr"],
                  "floor": h["lr"] * spec.optim.min_lr_ratio, "weight_decay": h["weight_decay"]}
        step = tr.make_train_step(forward, tr.make_optimizer(spec.optim, spec.steps, values), lone.n_micro,
                                  h["label_smoothing"], h["entropy_coef"], mesh=dp_mesh)
        return step(params, opt_state, batch_mbs)

    def init_one(seed):
        # nnx.Rngs(int) is nnx.Rngs(jax.random.key(int)); a traced seed needs the key made explicitly.
        model = GPT(spec.model, rngs=nnx.Rngs(jax.random.key(seed)), **tr._dtypes(spec))
        return tr._flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    # Everything replicated but the batch, whose rows split over the mesh as in the lone step.
    dp_mesh = mesh if tr.local_accumulation(mesh, lone.param_shardings) else None
    rep = shd.replicated(mesh)
    hyper = jax.device_put(hyper, rep)
    step = jax.jit(jax.vmap(member_step, in_axes=(0, 0, 0, None)), donate_argnums=(0, 1),
                   in_shardings=(rep, rep, rep, shd.batch_sharding(mesh)), out_shardings=rep)
    take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=rep)
    return PackedProgram(lone=lone, specs=tuple(specs), hyper=hyper, step=step,
                         init=jax.jit(jax.vmap(init_one), out_shardings=rep),
                         init_opt=jax.jit(jax.vmap(lone.tx.init), out_shardings=rep), take=take)


class _Member:
    """One run of a pack: its folder, its records so far, its checkpoints and host-side counters,
    kept as `run.train_run` keeps them for a lone run."""

    def __init__(self, spec: RunSpec, out_dir, base: dict, config: dict):
        from scaling import train as tr
        from scaling.checkpoint import Checkpoints
        self.spec = spec
        self.path = records.run_dir(out_dir, spec.run_id)
        self.base = {**base_row(spec), **base}
        self.schedule = tr.lr_schedule(spec.optim, spec.steps)
        self.history: list[dict] = []
        self.calibration: list[dict] = []
        self.losses_since_eval: list[float] = []
        self.wall_offset = 0.0
        self.active = True
        self.result: dict | None = None
        records.write_json(self.path / "config.json", {
            "run_id": spec.run_id, "spec": spec.to_dict(), "versions": _versions(), "git_commit": _git_commit(),
            "host": socket.gethostname(), **config})
        self.ckpt = Checkpoints(self.path / "checkpoints")

    @property
    def history_path(self) -> Path:
        return self.path / "history.parquet"

    def restore(self, abstract_state) -> tuple[int, dict | None]:
        """(step, state) from the latest checkpoint, or (0, None) for a fresh start."""
        from scaling.checkpoint import CheckpointError
        latest = self.ckpt.latest_step()
        if latest is None:
            if self.history_path.exists() and records.read_rows(self.history_path):
                raise CheckpointError(f"{self.history_path} has records but {self.ckpt.folder} holds no checkpoint; "
                                      "delete the run folder to start it over")
            return 0, None
        state, host = self.ckpt.restore(latest, abstract_state)
        self.losses_since_eval = host["losses_since_eval"]
        if self.history_path.exists():
            self.history = [r for r in records.read_rows(self.history_path) if r["step"] <= latest]
        calibration_path = self.path / "calibration.parquet"
        if calibration_path.exists():
            self.calibration = [r for r in records.read_rows(calibration_path) if r["step"] <= latest]
        self.wall_offset = self.history[-1]["wall_seconds"] if self.history else 0.0
        return latest, state

    def row(self, flops_per_token: float, tokens_per_step: int, extra: dict, **values) -> dict:
        tokens = values["step"] * tokens_per_step
        return {**self.base, "status": "running", "error": None, "tokens": tokens, "flops": flops_per_token * tokens,
                "flops_6nd": flops_6nd(self.base["n_params_nonembed"], tokens), "val_bits_per_byte": math.nan,
                **extra, **values}

    def write(self, status: str, summary_row: dict, error: str | None = None) -> None:
        records.write_rows(self.history_path, self.history)
        if self.calibration:
            records.write_table(self.path / "calibration.parquet", self.calibration)
        records.write_rows(self.path / "summary.parquet", [{**summary_row, "status": status, "error": error}])


def train_pack(specs, out_dir: str | Path, *, on_step: Callable[[dict], None] | None = None, devices=None,
               halt_at: int | None = None) -> list[dict]:
    """Train `specs` as one pack (resuming from their checkpoints, which must be at one step) and
    write each run's records. Returns one summary row per run, in order.

    A member whose checkpoint cannot be read is recorded failed and left out; divergence is per
    member; any other exception propagates (the caller records the unfinished members failed).
    Raises PackError before anything is written when the runs cannot be packed here."""
    import jax
    import numpy as np

    from scaling import data as data_mod
    from scaling import hardware, probes, sampling
    from scaling import sharding as shd
    from scaling import train as tr
    from scaling.checkpoint import CheckpointError
    from scaling.metrics import reliability_table

    t_start = time.perf_counter()
    enable_compilation_cache()
    spec = specs[0]
    m, t = spec.model, spec.train
    mesh = shd.make_mesh(spec.mesh, devices)
    check_packable(specs, mesh)
    source = data_mod.open_source(spec.data.source, paths=spec.data.paths, dtype=spec.data.dtype,
                                  vocab_size=m.vocab_size, val_fraction=spec.data.val_fraction,
                                  base_dir=spec.data.base_dir, synthetic=spec.data.synthetic, tasks=spec.data.tasks)
    batcher = data_mod.Batcher(source.train, m.seq_len, spec.batch_size, spec.data.data_seed)
    data_share, n_shares, local_shards = shd.process_share(mesh)
    n_val = tr.n_eval_windows(spec, shd.batch_shards(mesh), len(source.val) // m.seq_len)
    val_windows = data_mod.validation_windows(source.val, m.seq_len, n_val)
    val_loss_optimal = float(np.mean(source.optimal_nll(val_windows))) if source.optimal_nll else math.nan
    lone = tr.build_program(spec, mesh)
    probe_set = probes.Probes(spec.data.tasks, m, t.compute_dtype) if spec.data.tasks else None
    extra = {"val_loss_optimal": val_loss_optimal, **(probe_set.chance_columns() if probe_set else {})}
    peak = hardware.peak_flops(t.compute_dtype, n_devices=mesh.size)
    flops_per_token = training_flops_per_token(**dataclasses.asdict(m))
    tokens_per_step = spec.batch_size * m.seq_len
    device_kind = jax.devices()[0].device_kind
    base = {"peak_flops": peak.flops_per_second, "peak_flops_source": peak.source, "device_kind": device_kind,
            "n_devices": mesh.size, "mesh": f"{spec.mesh.preset}:{shd.describe(mesh)}", "pack_size": len(specs)}
    config = {"data_content_hash": source.content_hash, "device_kind": device_kind, "n_devices": mesh.size,
              "process_count": jax.process_count(), "mesh": base["mesh"], "steps": spec.steps,
              "batch_size": spec.batch_size, "micro_batches": lone.n_micro, "eval_sequences": len(val_windows),
              "flops_per_token": flops_per_token, "pack": [s.run_id for s in specs]}

    members: list[_Member] = []
    try:
        states, start = [], None
        for s in specs:
            mb = _Member(s, out_dir, base, config)
            members.append(mb)
            try:
                step, state = mb.restore(lone.abstract_state())
            except CheckpointError as e:
                mb.ckpt.close()
                mb.result = {"run_id": s.run_id, "status": "failed", "error": record_error(s, out_dir, e)}
                continue
            if start is not None and step != start:
                raise PackError(f"the runs resume from different steps ({start} and {step})")
            start = step
            states.append(state)
        live = [mb for mb in members if mb.result is None]
        if not live:
            return [mb.result for mb in members]
        program = build_packed_program([mb.spec for mb in live], mesh, lone)
        if start:
            params = program.stack([s["params"] for s in states])
            opt_state = program.stack([s["opt_state"] for s in states])
        else:
            params, opt_state = program.init_state()
        step = start
        row = lambda mb, **values: mb.row(flops_per_token, tokens_per_step, extra, **values)
        for mb in live:
            if not mb.history:
                records.write_rows(mb.path / "summary.parquet", [row(mb, step=step, status="running", wall_seconds=0.0)])

        evals = set(tr.eval_steps(spec.steps, t.eval_points))
        chunk = tr.eval_chunk(spec, shd.batch_shards(mesh))
        batch_sharding = shd.batch_sharding(mesh)
        global_shape = (lone.n_micro, spec.batch_size // lone.n_micro, m.seq_len + 1)
        # Per member: its own tokens over the pack's training seconds (evaluation and compile excluded).
        timed_tokens, timed_seconds = 0, 0.0
        interval_tokens, interval_seconds = 0, 0.0
        timed_from = None  # (step, clock) where the current timed stretch began
        pending = None  # (step, metrics) dispatched but not yet read

        def wall(mb):
            return mb.wall_offset + time.perf_counter() - t_start

        def diverge(mb, message):
            bad = row(mb, step=step, train_loss=math.nan, val_loss=math.nan, val_entropy=math.nan, val_ece=math.nan,
                      lr=float(mb.schedule(step - 1)), grad_norm=math.nan, wall_seconds=wall(mb),
                      tokens_per_second=math.nan, mfu=math.nan)
            mb.history.append(bad)
            mb.write("diverged", bad, message)
            mb.ckpt.close()
            mb.active = False
            mb.result = {**bad, "status": "diverged", "error": message}

        def read(pending_item):
            s, metrics = pending_item
            losses, norms = np.asarray(metrics["loss"]), np.asarray(metrics["grad_norm"])
            for i, mb in enumerate(live):
                if not mb.active:
                    continue
                if not math.isfinite(losses[i]):
                    diverge(mb, f"non-finite training loss at step {s}")
                    continue
                mb.losses_since_eval.append(float(losses[i]))
                if on_step:  # every step, whether read while the next one runs or at a sync point
                    on_step({"run_id": mb.spec.run_id, "step": s, "steps": spec.steps, "tokens": s * tokens_per_step,
                             "loss": float(losses[i]),
                             "tokens_per_second": timed_tokens / timed_seconds if timed_seconds else None})
            return losses, norms

        while step < spec.steps and any(mb.active for mb in live):
            step += 1
            local = batcher.batch(step - 1, data_share, n_shares)
            batch = tr.to_global(tr.micro_batches(local, local_shards, lone.n_micro), batch_sharding, global_shape)
            params, opt_state, metrics = program.train_step(params, opt_state, batch)
            if pending is not None:
                read(pending)
            pending = (step, metrics)
            if timed_from is None:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                timed_from = (step, time.perf_counter())
            if not (step in evals or (t.checkpoint_every and step % t.checkpoint_every == 0)):
                continue
            losses, norms = read(pending)
            pending = None
            n_tok, dt = (step - timed_from[0]) * tokens_per_step, time.perf_counter() - timed_from[1]
            if n_tok:
                timed_tokens, timed_seconds = timed_tokens + n_tok, timed_seconds + dt
                interval_tokens, interval_seconds = interval_tokens + n_tok, interval_seconds + dt
            tps = interval_tokens / interval_seconds if interval_seconds else math.nan
            for i, mb in enumerate(live):
                if not mb.active:
                    continue
                member_params = program.member(params, i)
                if step in evals:
                    ev = tr.evaluate(lone, member_params, val_windows, chunk)
                    r = row(mb, step=step, train_loss=float(np.mean(mb.losses_since_eval)), val_loss=ev["val_loss"],
                            val_entropy=ev["val_entropy"], val_ece=ev["val_ece"], lr=float(mb.schedule(step - 1)),
                            grad_norm=float(norms[i]), wall_seconds=wall(mb), tokens_per_second=tps,
                            mfu=tps * flops_per_token / peak.flops_per_second)
                    if source.bytes_per_token:
                        r["val_bits_per_byte"] = ev["val_loss"] / math.log(2) / source.bytes_per_token
                    if probe_set:
                        r.update(probe_set.evaluate(member_params))
                    mb.history.append(r)
                    mb.calibration.extend({"run_id": mb.spec.run_id, "step": step, "tokens": r["tokens"], **b}
                                          for b in reliability_table(ev["ece_bins"]))
                    mb.losses_since_eval.clear()
                mb.ckpt.save(step, {"params": member_params, "opt_state": program.member(opt_state, i)},
                             {"losses_since_eval": mb.losses_since_eval})
                if step in evals:
                    mb.write("running", mb.history[-1])
            if step in evals:
                interval_tokens, interval_seconds = 0, 0.0
            if halt_at is not None and step >= halt_at:
                raise Halt(step)
            timed_from = (step, time.perf_counter())
        for i, mb in enumerate(live):
            if not mb.active:
                continue
            final = dict(mb.history[-1])
            tps = timed_tokens / timed_seconds if timed_seconds else final["tokens_per_second"]
            final.update(wall_seconds=wall(mb), tokens_per_second=tps, mfu=tps * flops_per_token / peak.flops_per_second)
            if mb.spec.sampling:
                member_params = program.member(params, i)
                columns, texts = sampling.sample_all(member_params, m, val_windows, mb.spec.sampling, t.compute_dtype)
                final.update(columns)
                text = sampling.render(texts, mb.spec.sampling, as_bytes=source.bytes_per_token == 1.0)
                records.write_text(mb.path / "samples.txt", text)
            mb.write("complete", final)
            if not t.keep_checkpoints:
                mb.ckpt.delete_all()
            else:
                mb.ckpt.close()
            mb.result = {**final, "status": "complete"}
        return [mb.result for mb in members]
    finally:
        for mb in members:
            if mb.result is None:
                mb.ckpt.close()


def _latest_checkpoint(spec: RunSpec, out_dir) -> int | None:
    from scaling.checkpoint import Checkpoints
    folder = records.run_dir(out_dir, spec.run_id) / "checkpoints"
    if not folder.exists():
        return None
    ckpt = Checkpoints(folder)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _record_failure(specs, out_dir, error: Exception) -> dict[str, dict]:
    """Every run of `specs` whose records do not say it finished is marked failed with `error`."""
    out = {}
    for spec in specs:
        status = records.read_status(records.run_dir(out_dir, spec.run_id))
        if status in DONE:
            out[spec.run_id] = {"run_id": spec.run_id, "status": status, "error": None}
        else:
            out[spec.run_id] = {"run_id": spec.run_id, "status": "failed",
                                "error": record_error(spec, out_dir, error)}
    return out


def _alone(spec: RunSpec, out_dir, on_step, **kwargs) -> dict:
    """`train_run` with the run's lock already held (by this process)."""
    def tagged(event):
        on_step({"run_id": spec.run_id, **event})
    try:
        return train_run(spec, out_dir, on_step=tagged if on_step else None, **kwargs)
    except Halt:
        raise
    except Exception as e:  # noqa: BLE001 - one run's error must not stop the others
        return _record_failure([spec], out_dir, e)[spec.run_id]


def run_pack_and_record(specs, out_dir: str | Path, *, on_step: Callable[[dict], None] | None = None,
                        devices=None, halt_at: int | None = None) -> list[dict]:
    """Train `specs` as packs under their run locks and return each run's outcome, in order: status
    complete | diverged | failed | locked and error.

    Runs already finished are skipped (their recorded status is returned); runs another process
    holds are `locked`. The rest are grouped by what they compute (`pack_key`) and the step their
    checkpoints resume from, and each group trains as one pack (a group of one trains alone). When
    a group cannot be packed here (`PackError`: a mesh of several devices), its runs train alone,
    one after another. Events passed to `on_step` carry the run's `run_id`."""
    results: dict[str, dict] = {}
    todo, locks = [], []
    for spec in specs:
        path = records.run_dir(out_dir, spec.run_id)
        status = records.read_status(path)
        if status in DONE:
            results[spec.run_id] = {"run_id": spec.run_id, "status": status, "error": None}
            continue
        lock = records.RunLock(path)
        if not lock.acquire():
            results[spec.run_id] = {"run_id": spec.run_id, "status": "locked",
                                    "error": "another process is training this run"}
            continue
        locks.append(lock)
        todo.append(spec)
    kwargs = {"devices": devices, "halt_at": halt_at}
    try:
        groups: dict[tuple, list[RunSpec]] = {}
        for spec in todo:
            groups.setdefault((pack_key(spec), _latest_checkpoint(spec, out_dir)), []).append(spec)
        for group in groups.values():
            if len(group) == 1:
                results[group[0].run_id] = _alone(group[0], out_dir, on_step, **kwargs)
                continue
            try:
                for spec, result in zip(group, train_pack(group, out_dir, on_step=on_step, **kwargs)):
                    results[spec.run_id] = result
            except PackError:
                for spec in group:
                    results[spec.run_id] = _alone(spec, out_dir, on_step, **kwargs)
            except Halt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded per run, like a lone run's error
                results.update(_record_failure(group, out_dir, e))
    finally:
        for lock in locks:
            lock.release()
    return [results[s.run_id] for s in specs]
