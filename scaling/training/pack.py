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
The members train through the one loop of scaling/training/loop.py, as a lone run does.

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

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.config import RunSpec
from scaling.model import GPT
from scaling.sweep.pack_plan import HYPER, PACK_PRESET, hyper_values, pack_key
from scaling.training import sharding as shd, step as tr


class PackError(Exception):
    """These runs cannot train as one pack here; the caller trains them alone."""


def check_packable(specs, mesh) -> None:
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
        params = self.init(jnp.asarray([s.seed for s in self.specs], jnp.int32))
        return params, self.init_opt(params)

    def member(self, tree, i: int):
        return self.take(tree, i)

    @staticmethod
    def stack(trees):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def build_packed_program(specs, mesh, lone=None) -> PackedProgram:
    """`lone`: the first member's step.Program, when the caller has built it already."""
    spec = specs[0]
    lone = lone or tr.build_program(spec, mesh)
    values = [hyper_values(s) for s in specs]
    varying = [k for k in HYPER if len({v[k] for v in values}) > 1]
    hyper = {k: jnp.asarray([v[k] for v in values], jnp.float32) for k in varying}
    shared = {k: values[0][k] for k in HYPER if k not in varying}
    forward = lambda params, inputs_bs: lone.model(params)(inputs_bs)

    def member_step(params, opt_state, member_hyper, batch_mbs):
        h = {**shared, **member_hyper}
        values = {**tr.schedule_values(spec.optim, spec.steps, lr=h["lr"]), "weight_decay": h["weight_decay"]}
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
