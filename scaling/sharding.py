"""Device meshes and the shardings of parameters, optimizer state and batches.

Presets (MeshConfig.preset):
- `dp`:   one axis `data`; parameters replicated, the batch split along it.
- `fsdp`: one axis `fsdp`; the batch split along it and every matrix split along its largest
          dimension that the axis divides (ZeRO-3 style, Rajbhandari et al. 2020), so each device
          holds 1/n of parameters and Adam moments; XLA inserts the all-gathers.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scaling.config import MeshConfig


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    size = len(devices) if cfg.size == -1 else cfg.size
    axis = "data" if cfg.preset == "dp" else "fsdp"
    # Axis types are given explicitly (Auto: the compiler propagates shardings inside the step).
    return jax.make_mesh((size,), (axis,), axis_types=(AxisType.Auto,), devices=devices[:size])


def batch_axis(mesh: Mesh) -> str:
    return mesh.axis_names[0]


def describe(mesh: Mesh) -> str:
    return ",".join(f"{name}={size}" for name, size in mesh.shape.items())


def leaf_spec(shape: tuple[int, ...], mesh: Mesh) -> P:
    """fsdp: split a matrix's largest dimension divisible by the axis size; everything else replicated."""
    if "fsdp" not in mesh.axis_names or len(shape) < 2:
        return P()
    n = mesh.shape["fsdp"]
    for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[dim] % n == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh):
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(np.shape(x), mesh)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are [n_micro, rows, seq_len + 1]: rows split over the batch axis."""
    return NamedSharding(mesh, P(None, batch_axis(mesh), None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
