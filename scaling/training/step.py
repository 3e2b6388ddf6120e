"""The compiled program of one run spec on one mesh: the optimizer and schedule, the jitted train and
eval steps (the loop that drives them is scaling/training/loop.py).

The model is split once into a graph definition and a flat dict of parameters; the train step is a
pure function of (params, opt_state, batch), jitted with NamedShardings on a device mesh. Gradient
accumulation runs inside the step as a `lax.scan` over micro-batches. Host code reads step k's loss
while step k+1 runs, so logging never stalls the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from scaling.training import sharding as shd
from scaling.config import OptimConfig, RunSpec, decay_steps
from scaling.model import GPT, abstract_model, bind_params, token_losses

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017)

# On a CPU, `micro_batch = 0` splits each device's batch into micro-batches of at most this many
# tokens. A step is mostly elementwise passes (LayerNorm, GELU, softmax, their gradients) over
# [tokens, width] activations, and at 256 tokens those stay in a core's L2 cache: the kaplan
# sweep's L4-d96 steps ran 1.5x faster at 512 tokens than with the whole 4096-token batch, and
# with one device per core another 1.05-1.12x faster at 256; the small models about as fast
# (benchmarks/NOTES.md, "Step speed"). Accelerators keep the whole batch.
CPU_MICRO_BATCH_TOKENS = 256


def schedule_values(o: OptimConfig, steps: int, lr=None) -> dict[str, float]:
    """The numbers of a run's learning-rate schedule. They enter the compiled step as arrays, not
    constants, so runs of one shape that differ in length or learning rate share one program (and
    its entry in the persistent compilation cache). `lr`: a packed member's learning rate (a traced
    array) in place of `o.lr`; the schedule's floor follows it."""
    lr = float(o.lr) if lr is None else lr
    warm = o.warmup_steps if o.warmup_steps is not None else int(round(o.warmup * steps))
    return {"lr": lr, "floor": lr * o.min_lr_ratio, "warm": float(warm), "steps": float(steps),
            "n_decay": float(decay_steps(o.decay, steps))}


def scheduled_lr(kind: str, count, v: dict):
    """Learning rate for update `count` (0-based) of a schedule of `kind` with values `v`
    (`schedule_values`; Python floats or traced arrays)."""
    step = jnp.asarray(count, jnp.float32) + 1.0
    warm = jnp.asarray(v["warm"], jnp.float32)
    ramp = jnp.where(warm > 0, jnp.minimum(step / jnp.maximum(warm, 1.0), 1.0), 1.0)
    lr, floor = v["lr"], v["floor"]
    if kind == "cosine":
        progress = jnp.clip((step - warm) / jnp.maximum(v["steps"] - warm, 1.0), 0.0, 1.0)
        lr = floor + (lr - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif kind == "wsd":
        progress = jnp.clip((step - (v["steps"] - v["n_decay"])) / v["n_decay"], 0.0, 1.0)
        lr = lr - (lr - floor) * jnp.sqrt(progress)
    else:
        lr = jnp.asarray(lr, jnp.float32)
    return ramp * lr


def lr_schedule(o: OptimConfig, steps: int) -> Callable:
    """Learning rate for update `count` (0-based): linear warmup over `warmup * steps` (or
    `warmup_steps` where a branched group fixes it), then
    cosine to `min_lr_ratio * lr` (Loshchilov & Hutter 2017), constant, or WSD: constant until the
    last `decay * steps` updates, then a 1-sqrt cool-down (Hägele et al. 2024, Sec. 3)."""
    values = schedule_values(o, steps)
    return lambda count: scheduled_lr(o.schedule, count, values)


def make_optimizer(o: OptimConfig, steps: int, hyper: dict | None = None) -> optax.GradientTransformation:
    """AdamW with the run's schedule. `hyper`: the schedule's values and weight_decay as arrays
    (inside a jitted step), instead of the constants of `o`."""
    hyper = hyper if hyper is not None else {**schedule_values(o, steps), "weight_decay": o.weight_decay}
    # Decay matrices only (kernels, embeddings), not biases or LayerNorm gains: nanoGPT / GPT-3 practice.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
        optax.adamw(lambda count: scheduled_lr(o.schedule, count, hyper), b1=o.beta1, b2=o.beta2, eps=o.eps,
                    weight_decay=hyper["weight_decay"], mask=decay_mask),
    )


def step_hyper(spec: RunSpec) -> dict[str, float]:
    """What the compiled train step takes as inputs rather than constants: the schedule's values,
    weight decay, and the objective's coefficients where they are not zero (a zero one is left out
    of the program altogether)."""
    t = spec.train
    out = {**schedule_values(spec.optim, spec.steps), "weight_decay": float(spec.optim.weight_decay)}
    out.update({k: float(v) for k, v in (("label_smoothing", t.label_smoothing), ("entropy_coef", t.entropy_coef))
                if v != 0})
    return out


def _flatten(nested: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + "/") if isinstance(v, dict) else {key: v})
    return out


def _unflatten(flat: dict) -> dict:
    nested: dict = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        node = nested
        for p in parents:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[leaf] = v
    return nested


@dataclass
class Program:
    """Everything compiled for one run spec on one mesh."""

    spec: RunSpec
    mesh: jax.sharding.Mesh
    graphdef: object
    state_template: object
    param_shardings: dict
    opt_shardings: object
    tx: optax.GradientTransformation
    train_step: Callable  # (params, opt_state, batch): the jitted step with this run's hyper-parameters
    eval_step: Callable
    n_micro: int
    jitted_step: Callable  # (params, opt_state, batch, hyper): shared by runs of one shape
    hyper: dict  # this run's step_hyper values, as replicated float32 arrays

    def model(self, params: dict) -> GPT:
        return bind_params(self.graphdef, self.state_template, params)

    def init_params(self) -> dict:
        """Initial parameters from the run's seed, created already sharded. The seed is an input of
        the compiled initialiser (nnx.Rngs(int) is nnx.Rngs(jax.random.key(int))): one program
        for every seed."""
        def init(seed):
            model = GPT(self.spec.model, rngs=nnx.Rngs(jax.random.key(seed)), **_dtypes(self.spec))
            return _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        return jax.jit(init, out_shardings=self.param_shardings)(np.uint32(self.spec.seed))

    def init_opt_state(self, params):
        return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)

    def abstract_state(self) -> dict:
        params = jax.eval_shape(lambda: _flatten(nnx.to_pure_dict(self.state_template)))
        opt = jax.eval_shape(self.tx.init, params)
        with_sh = lambda tree, shs: jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shs)
        return {"params": with_sh(params, self.param_shardings), "opt_state": with_sh(opt, self.opt_shardings)}


def _dtypes(spec: RunSpec) -> dict:
    """The model's numerics settings (dtypes, attention implementation)."""
    return {"compute_dtype": spec.train.compute_dtype, "param_dtype": spec.train.param_dtype,
            "attention": spec.train.attention}


def build_program(spec: RunSpec, mesh: jax.sharding.Mesh) -> Program:
    cfg, t = spec.model, spec.train
    graphdef, state_template = abstract_model(cfg, **_dtypes(spec))
    flat_abstract = _flatten(nnx.to_pure_dict(state_template))
    param_shardings = shd.param_shardings(state_template, mesh, spec.mesh.preset)
    tx = make_optimizer(spec.optim, spec.steps)
    opt_abstract = jax.eval_shape(tx.init, flat_abstract)
    opt_shardings = shd.optimizer_shardings(opt_abstract, param_shardings, mesh)

    per_device = spec.batch_size // shd.batch_shards(mesh)  # the tensor axis holds copies of the rows
    micro = t.micro_batch or default_micro_batch(per_device, cfg.seq_len, mesh.devices.flat[0].platform)
    n_micro = per_device // micro

    def forward(params, inputs_bs):
        return bind_params(graphdef, state_template, params)(inputs_bs)

    def train_step(params, opt_state, batch_mbs, hyper):
        step = make_train_step(forward, make_optimizer(spec.optim, spec.steps, hyper), n_micro,
                               hyper.get("label_smoothing", 0.0), hyper.get("entropy_coef", 0.0),
                               mesh=mesh if local_accumulation(mesh, param_shardings) else None)
        return step(params, opt_state, batch_mbs)

    def eval_step(params, batch_bs):
        logits = forward(params, batch_bs[:, :-1])
        targets = batch_bs[:, 1:]
        nll, _, entropy = token_losses(logits, targets)
        confidence = jnp.exp(jnp.max(jax.nn.log_softmax(logits, axis=-1), axis=-1)).reshape(-1)
        correct = (jnp.argmax(logits, axis=-1) == targets).reshape(-1).astype(jnp.float32)
        bins = jnp.clip(jnp.floor(confidence * ECE_BINS).astype(jnp.int32), 0, ECE_BINS - 1)
        seg = lambda x: jax.ops.segment_sum(x, bins, num_segments=ECE_BINS)
        return {"nll": nll.sum(), "entropy": entropy.sum(), "count": jnp.float32(nll.size),
                "bin_confidence": seg(confidence), "bin_correct": seg(correct), "bin_count": seg(jnp.ones_like(correct))}

    rep = shd.replicated(mesh)
    batch_sh = shd.batch_sharding(mesh)
    hyper = jax.device_put({k: np.float32(v) for k, v in step_hyper(spec).items()}, rep)
    jit_train = jax.jit(train_step, in_shardings=(param_shardings, opt_shardings, batch_sh, rep),
                        out_shardings=(param_shardings, opt_shardings, rep), donate_argnums=(0, 1))
    bound_train = lambda params, opt_state, batch_mbs: jit_train(params, opt_state, batch_mbs, hyper)
    jit_eval = jax.jit(eval_step, in_shardings=(param_shardings, shd.rows_sharding(mesh)), out_shardings=rep)
    return Program(spec=spec, mesh=mesh, graphdef=graphdef, state_template=state_template,
                   param_shardings=param_shardings, opt_shardings=opt_shardings, tx=tx, train_step=bound_train,
                   eval_step=jit_eval, n_micro=n_micro, jitted_step=jit_train, hyper=hyper)


def make_train_step(forward: Callable, tx: optax.GradientTransformation, n_micro: int, label_smoothing=0.0,
                    entropy_coef=0.0, *, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """The pure step (params, opt_state, batch [n_micro, B, S+1]) -> (params, opt_state, metrics).
    `forward(params, inputs_bs)` gives logits. The optimizer's hyper-parameters and the objective's
    coefficients may be traced arrays: scaling/training/pack.py vmaps this step over packed runs.

    `mesh` (data parallelism with replicated parameters, see `local_accumulation`): each device
    accumulates the gradients of its own rows over all micro-batches and the devices sum them once
    per step. Left to the compiler, the sum happens in every micro-step (XLA places the all-reduce
    inside the scan, where replicated gradients are first needed): n_micro synchronisations of every
    device per step instead of one. Same result up to float summation order."""
    def loss_fn(params, batch_bs, coefs):
        logits = forward(params, batch_bs[:, :-1])
        nll, objective, _ = token_losses(logits, batch_bs[:, 1:], label_smoothing=coefs[0], entropy_coef=coefs[1])
        return objective.mean(), nll.mean()

    def accumulate(params, batch_mbs, coefs):
        """Sums over micro-batches of (gradient, loss), each micro-batch's own mean over its rows."""
        def micro_step(carry, batch_bs):
            grads, nll = carry
            (_, nll_i), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_bs, coefs)
            return (jax.tree.map(jnp.add, grads, grads_i), nll + nll_i), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (grads, nll), _ = jax.lax.scan(micro_step, (zeros, jnp.float32(0.0)), batch_mbs)
        return grads, nll

    coefs = (label_smoothing, entropy_coef)
    axes = shd.batch_axes(mesh) if mesh is not None else None
    n_shards = shd.batch_shards(mesh) if mesh is not None else 1

    def train_step(params, opt_state, batch_mbs):
        if axes is None:
            grads, nll = accumulate(params, batch_mbs, coefs)
        else:
            # Only the coefficients that are traced travel as arguments (a Python zero stays a
            # constant: token_losses skips its term); closed-over tracers may not enter shard_map.
            traced = tuple(c for c in coefs if not isinstance(c, (int, float)))

            def local(params, batch_mbs, traced):
                it = iter(traced)
                grads, nll = accumulate(params, batch_mbs, tuple(c if isinstance(c, (int, float)) else next(it)
                                                                 for c in coefs))
                return jax.lax.psum((grads, nll), axes)

            # check_vma=False: the scan's zero carry is the same on every device and its gradient
            # sums are not; the one psum above is the only collective, and nothing here is
            # differentiated through the shard_map.
            grads, nll = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, axes, None), P()), out_specs=P(),
                                       check_vma=False)(params, batch_mbs, traced)
        grads = jax.tree.map(lambda g: g / (n_micro * n_shards), grads)
        nll = nll / (n_micro * n_shards)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": nll, "grad_norm": optax.tree.norm(grads)}

    return train_step


def local_accumulation(mesh: jax.sharding.Mesh, param_shardings) -> bool:
    """Whether the step can accumulate gradients per device and sum them once (make_train_step's
    `mesh`): every parameter replicated and the batch split over more than one device."""
    return shd.batch_shards(mesh) > 1 and all(all(a is None for a in s.spec) for s in jax.tree.leaves(param_shardings))


def default_micro_batch(per_device: int, seq_len: int, platform: str) -> int:
    """Sequences per micro-step when the spec leaves it to the runner (`micro_batch = 0`): the whole
    per-device batch on an accelerator; on a CPU the largest divisor of it that keeps a micro-batch
    within CPU_MICRO_BATCH_TOKENS tokens (one sequence at least)."""
    if platform != "cpu":
        return per_device
    limit = max(1, CPU_MICRO_BATCH_TOKENS // seq_len)
    return max(m for m in range(1, min(per_device, limit) + 1) if per_device % m == 0)


def to_global(local: np.ndarray, sharding, global_shape) -> jax.Array:
    """A global array from this process's rows (every process passes its own shard)."""
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def micro_batches(rows_bs: np.ndarray, n_local_devices: int, n_micro: int) -> np.ndarray:
    """[rows, S+1] -> [n_micro, rows / n_micro, S+1], keeping each device's rows on that device:
    micro-batch k holds the k-th slice of every device's share. `n_local_devices` counts this
    process's batch shards (`sharding.process_share`): devices that differ only along the tensor
    axis hold the same rows."""
    rows, width = rows_bs.shape
    micro = rows // (n_local_devices * n_micro)
    return (rows_bs.reshape(n_local_devices, n_micro, micro, width).transpose(1, 0, 2, 3)
            .reshape(n_micro, n_local_devices * micro, width))


def evaluate(program: Program, params, windows: np.ndarray, chunk: int) -> dict:
    """Validation loss, entropy and top-1 calibration over fixed windows."""
    totals = None
    share, n_shares, _ = shd.process_share(program.mesh)
    sharding = shd.rows_sharding(program.mesh)
    for start in range(0, len(windows), chunk):
        block = windows[start:start + chunk]
        rows = len(block) // n_shares
        out = program.eval_step(params, to_global(block[share * rows:(share + 1) * rows], sharding, block.shape))
        out = jax.tree.map(np.asarray, out)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    n = float(totals["count"])
    ece = float(np.sum(np.abs(totals["bin_correct"] - totals["bin_confidence"])) / n)
    return {"val_loss": float(totals["nll"]) / n, "val_entropy": float(totals["entropy"]) / n, "val_ece": ece,
            "ece_bins": {k: totals[k].tolist() for k in ("bin_confidence", "bin_correct", "bin_count")}}


def eval_chunk(spec: RunSpec, n_devices: int) -> int:
    return max(n_devices, min(spec.batch_size, -(-spec.train.eval_sequences // n_devices) * n_devices))


def n_eval_windows(spec: RunSpec, n_devices: int, available: int, sequences: int | None = None) -> int:
    """The windows to score of `available`: about `sequences` (default: the run's eval_sequences), a
    multiple of the evaluation chunk where there are enough, so that every block has the chunk's shape."""
    chunk = eval_chunk(spec, n_devices)
    n = min(spec.train.eval_sequences if sequences is None else sequences, available)
    return max(chunk, n // chunk * chunk) if available >= chunk else available // n_devices * n_devices
