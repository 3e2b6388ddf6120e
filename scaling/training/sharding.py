"""Device meshes and the shardings of parameters, optimizer state and batches.

Presets (MeshConfig.preset), axis sizes from the sweep file's [mesh] table:
- `dp`:      one axis `data`; parameters replicated, the batch split along it.
- `fsdp`:    one axis `fsdp`; the batch split along it and every matrix split along its largest
             dimension that the axis divides (ZeRO-3 style, Rajbhandari et al. 2020), so each device
             holds 1/n of parameters and Adam moments; XLA inserts the all-gathers.
- `fsdp_tp`: axes `data` x `fsdp` x `tensor`. The batch is split over data and fsdp together;
             matrices over fsdp as above; and over tensor Megatron style (Shoeybi et al. 2019,
             Sec. 3): qkv and fc column-parallel (their output features, i.e. heads and MLP hidden
             units), proj and fc_proj row-parallel (their input features), the embedding
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
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scaling.config import MeshConfig

BATCH_AXES = ("data", "fsdp")  # the axes a batch's rows are split over, where the mesh has them

# Which dimension of a parameter the tensor axis splits, by the parameter's name in the model
# (scaling/model.py: kernels are [in, out], embeddings [vocab, d_model]).
_TENSOR_DIM = {
    "qkv/kernel": 1, "qkv/bias": 0,  # column-parallel: heads
    "proj/kernel": 0,  # row-parallel: its input is the heads' concatenation
    "fc/kernel": 1, "fc/bias": 0,  # column-parallel: MLP hidden units
    "fc_proj/kernel": 0,  # row-parallel
    "wte/embedding": 0, "lm_head/kernel": 1,  # vocabulary-parallel
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


def leaf_spec(shape: tuple[int, ...], mesh: Mesh, name: str = "") -> P:
    """Tensor axis by the parameter's name (see _TENSOR_DIM); fsdp on the largest remaining dimension
    that the axis divides; everything else replicated. A dimension an axis does not divide stays
    whole (validation makes sure the big matrices divide)."""
    spec: list = [None] * len(shape)
    if "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1:
        dim = next((d for suffix, d in _TENSOR_DIM.items() if name == suffix or name.endswith("/" + suffix)), None)
        if dim is not None and dim < len(shape) and shape[dim] % mesh.shape["tensor"] == 0:
            spec[dim] = "tensor"
    if "fsdp" in mesh.axis_names and len(shape) >= 2:
        n = mesh.shape["fsdp"]
        for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
            if spec[dim] is None and shape[dim] % n == 0:
                spec[dim] = "fsdp"
                break
    return P(*spec) if any(spec) else P()


def _param_name(path) -> str:
    """The flat parameter name ('blocks/0/qkv/kernel') in a path through params or optimizer state."""
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(keys[-1]) if keys else ""


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for a flat parameter dict, or an optimizer state that holds such dicts."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, leaf_spec(np.shape(x), mesh, _param_name(path))), tree)


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
