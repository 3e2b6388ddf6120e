"""Device meshes and the shardings of parameters, optimizer state and batches.

Each weight of scaling/model.py names its logical axes where it is made ("embed", "mlp", ...; the
model's docstring lists them); a preset's table (`LOGICAL_TO_MESH`) says which mesh axis splits each
logical axis. A weight without logical axes, or with one that its preset's table does not list, is an
error: renaming or adding a layer cannot silently leave it unsplit.

Presets (MeshConfig.preset), axis sizes from the sweep file's [mesh] table:
- `dp`:      one axis `data`; parameters replicated, the batch split along it.
- `fsdp`:    one axis `fsdp`; the batch split along it and every matrix along its model-width (embed)
             side (ZeRO-3 style, Rajbhandari et al. 2020), so each device holds 1/n of parameters and
             Adam moments; XLA inserts the all-gathers. Vectors stay whole: an all-gather of a few
             kilobytes costs its latency and saves nothing.
- `fsdp_tp`: axes `data` x `fsdp` x `tensor`. The batch is split over data and fsdp together;
             matrices over fsdp as above; and over tensor Megatron style (Shoeybi et al. 2019,
             Sec. 3): qkv and fc column-parallel (their output features, i.e. heads and MLP hidden
             units, with their biases), proj and fc_proj row-parallel (their input features; their
             biases are added after the all-reduce, so replicated), the embedding and output head
             vocabulary-parallel. XLA inserts the all-reduces after the row-parallel matmuls.

A sharding never changes what is computed, only where: any spec is correct, these are the ones
that keep communication low. The qkv kernel's output is laid out [q | k | v] (scaling/model.py),
so its tensor shards are not head-aligned and XLA moves some activations to split q, k and v per
head; a head-major qkv layout would avoid that, at the price of a new parameter layout.

Data loading is per process: each process reads only the rows of a batch that its own devices hold
(`process_share`), and `jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scaling.config import MeshConfig

BATCH_AXES = ("data", "fsdp")  # the axes a batch's rows are split over, where the mesh has them

# Logical axis -> the mesh axis that splits it (None: whole on every device), per preset. A dimension
# that its mesh axis does not divide stays whole: validation (scaling/sweep/reader.py) makes d_model
# divide by fsdp and n_head and d_ff by tensor, which covers every axis but vocab and position.
LOGICAL_TO_MESH = {
    "dp": {"vocab": None, "position": None, "embed": None, "qkv": None, "heads": None, "mlp": None,
           "residual": None},
    "fsdp": {"vocab": None, "position": None, "embed": "fsdp", "qkv": None, "heads": None, "mlp": None,
             "residual": None},
    "fsdp_tp": {"vocab": "tensor", "position": None, "embed": "fsdp", "qkv": "tensor", "heads": "tensor",
                "mlp": "tensor", "residual": None},
}


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """The mesh over the first devices of `devices` (default: every device of every process)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = cfg.axis_sizes(len(devices))
    n = math.prod(sizes.values())
    # Axis types are given explicitly (Auto: the compiler propagates shardings inside the step).
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes),
                         devices=devices[:n])


def batch_axes(mesh: Mesh) -> str | tuple[str, ...]:
    """The mesh axes a batch's rows are split over: one name, or a tuple of them (major first)."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return axes[0] if len(axes) == 1 else axes


def batch_shards(mesh: Mesh) -> int:
    """Into how many parts the rows of a batch are split (the tensor axis holds copies)."""
    axes = batch_axes(mesh)
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def describe(mesh: Mesh) -> str:
    return ",".join(f"{name}={size}" for name, size in mesh.shape.items())


def logical_axes(state: nnx.State) -> dict[str, tuple[str, ...]]:
    """The logical axes of every parameter, by flat name (`"blocks/0/qkv/kernel"`), as the model
    declares them (`out_sharding` metadata). Raises on a parameter that declares none."""
    out = {}
    for name, variable in _by_name(state).items():
        axes = variable.get_metadata().get("out_sharding")
        if axes is None or len(axes) != len(variable.shape):
            raise ValueError(f"parameter {name} {tuple(variable.shape)} declares logical axes {axes}: "
                             "name one per dimension where the weight is made (scaling/model.py)")
        out[name] = tuple(axes)
    return out


def partition_spec(name: str, axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh, preset: str) -> P:
    """The PartitionSpec of parameter `name` with logical `axes` under `preset`'s table."""
    table = LOGICAL_TO_MESH[preset]
    spec = []
    for axis, size in zip(axes, shape):
        if axis not in table:
            raise ValueError(f"parameter {name}: logical axis {axis!r} has no entry in the {preset} preset's "
                             "table (sharding.LOGICAL_TO_MESH)")
        mesh_axis = table[axis]
        if mesh_axis is not None and mesh_axis not in mesh.axis_names:
            raise ValueError(f"the {preset} preset splits {axis!r} over mesh axis {mesh_axis!r}, which the mesh "
                             f"({describe(mesh)}) does not have")
        spec.append(mesh_axis if mesh_axis is not None and size % mesh.shape[mesh_axis] == 0 else None)
    return P(*spec) if any(spec) else P()


def param_shardings(state: nnx.State, mesh: Mesh, preset: str) -> dict[str, NamedSharding]:
    """NamedShardings of the flat parameter dict of the model whose parameter state is `state`."""
    variables = _by_name(state)
    return {name: NamedSharding(mesh, partition_spec(name, axes, tuple(variables[name].shape), mesh, preset))
            for name, axes in logical_axes(state).items()}


def _by_name(state: nnx.State) -> dict[str, nnx.Variable]:
    return {"/".join(str(k) for k in path): variable for path, variable in nnx.to_flat_state(state)}


def optimizer_shardings(opt_state, param_shardings: dict[str, NamedSharding], mesh: Mesh):
    """NamedShardings of an optimizer state: a subtree that mirrors the parameters (Adam's moments)
    takes their shardings; a scalar (a step count) is replicated. Any other leaf is an error, since
    nothing says how to split it."""
    params_structure = jax.tree.structure(param_shardings)
    mirrors_params = lambda node: jax.tree.structure(node) == params_structure

    def shard(node):
        if mirrors_params(node):
            return param_shardings
        if np.shape(node) == ():
            return replicated(mesh)
        raise ValueError(f"an optimizer state leaf of shape {np.shape(node)} mirrors no parameter")

    return jax.tree.map(shard, opt_state, is_leaf=mirrors_params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are [n_micro, rows, seq_len + 1]: rows split over the batch axes."""
    return NamedSharding(mesh, P(None, batch_axes(mesh), None))


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Evaluation windows are [rows, seq_len + 1]: rows split over the batch axes."""
    return NamedSharding(mesh, P(batch_axes(mesh), None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def process_share(mesh: Mesh) -> tuple[int, int, int]:
    """(index, count, local_shards): this process's devices hold share `index` of `count` equal,
    contiguous shares of a batch's rows, split over `local_shards` batch shards of its own.

    On one process: (0, 1, batch_shards). Where the tensor axis spans processes, several processes
    hold the same share (each loads it: the arrays are assembled from process-local data)."""
    k = batch_shards(mesh)
    indices = NamedSharding(mesh, P(batch_axes(mesh))).addressable_devices_indices_map((k,))
    shards = sorted({idx[0].start or 0 for idx in indices.values()})
    first, n_local = shards[0], len(shards)
    if shards != list(range(first, first + n_local)) or first % n_local or k % n_local:
        raise ValueError(f"this process's devices hold batch shards {shards} of {k}: not one contiguous share; "
                         "order the devices so that each process's devices are neighbours on the batch axes")
    return first // n_local, k // n_local, n_local
