"""Packed runs: runs of one shape that differ only in seed or scalar hyper-parameters train together
in one program, vmapped over a leading member axis, each writing its own records as if alone.

What members may differ in (`pack_key` blanks exactly these): `seed`, `optim.lr`,
`optim.weight_decay`, `train.label_smoothing`, `train.entropy_coef`. Everything else is equal,
`data_seed` included, so the batch is loaded once and shared (vmap `in_axes=None`). A hyper-parameter
that differs between members enters the step as a float32 array [K] and the optimizer is built from it
inside the vmapped function; one that all members share stays a Python number, so a pack whose
members differ only in seed traces exactly the lone run's step under vmap.

One pack is one process. On a mesh of several devices (the `dp` preset: parameters replicated, as
the CPU's one-device-per-core mesh, scaling/launch/cpu.py) every member's batch is split over the devices
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

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scaling import records
from scaling.config import RunSpec
from scaling.records import record_error
from scaling.training.run import Halt, enable_compilation_cache, train_run
from scaling.training.runlog import RunContext, RunLog, Throughput, rows_until
from scaling.sweep.pack_plan import HYPER, PACK_PRESET, hyper_values, pack_key


class PackError(Exception):
    """These runs cannot train as one pack here; the caller trains them alone."""


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

    from scaling.training import sharding as shd
    from scaling.training import step as tr
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
    """One run of a pack: its records (kept as `run.train_run` keeps a lone run's), its checkpoints
    and, once it has one, its outcome."""

    def __init__(self, log: RunLog, pack: list[str]):
        from scaling.training.checkpoint import Checkpoints
        self.log = log
        log.write_config(pack=pack)
        self.ckpt = Checkpoints(log.path / "checkpoints")
        self.result: dict | None = None

    @property
    def active(self) -> bool:
        return self.result is None

    def restore(self, abstract_state) -> tuple[int, dict | None]:
        """(step, state) from the latest checkpoint, or (0, None) for a fresh start."""
        latest = self.ckpt.latest_step()
        if latest is None:
            self.log.check_fresh(self.ckpt.folder)
            return 0, None
        state, host = self.ckpt.restore(latest, abstract_state)
        self.log.resume(host["losses_since_eval"], *rows_until(self.log.path, latest))
        return latest, state


def train_pack(specs, out_dir: str | Path, *, on_step: Callable[[dict], None] | None = None, devices=None,
               halt_at: int | None = None) -> list[dict]:
    """Train `specs` as one pack (resuming from their checkpoints, which must be at one step) and
    write each run's records. Returns one summary row per run, in order.

    A member whose checkpoint cannot be read is recorded failed and left out; divergence is per
    member; any other exception propagates (the caller records the unfinished members failed).
    Raises PackError before anything is written when the runs cannot be packed here."""
    import jax
    import numpy as np

    from scaling.training import sharding as shd
    from scaling.training import step as tr
    from scaling.training.checkpoint import CheckpointError

    t_start = time.perf_counter()
    enable_compilation_cache()
    spec = specs[0]
    mesh = shd.make_mesh(spec.mesh, devices)
    check_packable(specs, mesh)
    lone = tr.build_program(spec, mesh)
    ctx = RunContext(spec, mesh, lone)  # the members' data, evaluation and accounting: one shape, one data_seed

    members: list[_Member] = []
    try:
        states, start = [], None
        for s in specs:
            mb = _Member(RunLog(s, out_dir, ctx, columns={"pack_size": len(specs)}, t_start=t_start),
                         [x.run_id for x in specs])
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
        program = build_packed_program([mb.log.spec for mb in live], mesh, lone)
        if start:
            params = program.stack([s["params"] for s in states])
            opt_state = program.stack([s["opt_state"] for s in states])
        else:
            params, opt_state = program.init_state()
        step = start
        for mb in live:
            mb.log.started(step)

        # Per member: its own tokens over the pack's training seconds (evaluation and compile excluded).
        timer = Throughput(ctx.tokens_per_step)
        pending = None  # (step, metrics) dispatched but not yet read

        def read(pending_item):
            s, metrics = pending_item
            losses, norms = np.asarray(metrics["loss"]), np.asarray(metrics["grad_norm"])
            for i, mb in enumerate(live):
                if not mb.active:
                    continue
                if not math.isfinite(losses[i]):
                    # It keeps its slot in the compiled step until the pack ends; its numbers are ignored.
                    mb.result = mb.log.diverged(step, f"non-finite training loss at step {s}")
                    mb.ckpt.close()
                    continue
                mb.log.losses_since_eval.append(float(losses[i]))
                if on_step:  # every step, whether read while the next one runs or at a sync point
                    on_step({"run_id": mb.log.spec.run_id, "step": s, "steps": spec.steps,
                             "tokens": s * ctx.tokens_per_step, "loss": float(losses[i]),
                             "tokens_per_second": timer.overall()})
            return losses, norms

        while step < spec.steps and any(mb.active for mb in live):
            step += 1
            params, opt_state, metrics = program.train_step(params, opt_state, ctx.batch(step))
            if pending is not None:
                read(pending)
            pending = (step, metrics)
            if timer.mark is None:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                timer.start(step)
            if not ctx.syncs(step):
                continue
            _, norms = read(pending)
            pending = None
            timer.lap(step)
            for i, mb in enumerate(live):
                if not mb.active:
                    continue
                member_params = program.member(params, i)
                if step in ctx.evals:
                    values, bins = ctx.evaluate(member_params, float(norms[i]), timer.interval())
                    mb.log.evaluation(step, {**values, "wall_seconds": mb.log.wall()}, bins)
                mb.ckpt.save(step, {"params": member_params, "opt_state": program.member(opt_state, i)},
                             {"losses_since_eval": mb.log.losses_since_eval})
                if step in ctx.evals:
                    mb.log.write("running", mb.log.history[-1])
            if step in ctx.evals:
                timer.new_interval()
            if halt_at is not None and step >= halt_at:
                raise Halt(step)
            timer.start(step)
        for i, mb in enumerate(live):
            if not mb.active:
                continue
            mb.result = mb.log.complete(program.member(params, i), timer.overall())
            mb.ckpt.finish(keep=spec.train.keep_checkpoints)
        return [mb.result for mb in members]
    finally:
        for mb in members:
            if mb.result is None:
                mb.ckpt.close()


def _latest_checkpoint(spec: RunSpec, out_dir) -> int | None:
    from scaling.training.checkpoint import Checkpoints
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
        if status in records.DONE:
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

    Runs already finished are skipped (their recorded status is returned, read under their lock);
    runs another process holds are `locked`. The rest are grouped by what they compute (`pack_key`) and the step their
    checkpoints resume from, and each group trains as one pack (a group of one trains alone). When
    a group cannot be packed here (`PackError`: a mesh of several devices), its runs train alone,
    one after another. Events passed to `on_step` carry the run's `run_id`."""
    results: dict[str, dict] = {}
    todo, locks = [], []
    for spec in specs:
        path = records.run_dir(out_dir, spec.run_id)
        lock = records.RunLock(path)
        if not lock.acquire():
            results[spec.run_id] = {"run_id": spec.run_id, "status": "locked",
                                    "error": "another process is training this run"}
            continue
        locks.append(lock)
        status = records.read_status(path)  # under the lock: another process may just have finished it
        if status in records.DONE:
            results[spec.run_id] = {"run_id": spec.run_id, "status": status, "error": None, "already": True}
            continue
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
