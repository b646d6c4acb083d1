"""Data-parallel and FSDP-style placement with JAX's own sharding (``jax.sharding`` meshes).

The batch is split over the mesh axis "data"; parameters are replicated, or (FSDP-style) each
leaf is split along its largest dimension divisible by the axis size (XLA then all-gathers it
where the computation needs it). The jit-compiled step is unchanged: computation follows the
shardings of its inputs. For many hosts, call ``jax.distributed.initialize()`` before building
the mesh (``data_mesh()`` then spans every process's devices).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over ``devices`` (default: all devices of all processes)."""
    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs, ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data"."""
    return NamedSharding(mesh, P("data"))


def fsdp_spec(shape: tuple[int, ...], n: int) -> P:
    """Split the largest axis divisible by ``n`` (replicate if none is)."""
    if not shape:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % n == 0:
            return P(*[("data" if j == i else None) for j in range(len(shape))])
    return P()


def shard_params(tree: Any, mesh: Mesh, fsdp: bool = False) -> Any:
    """Place a pytree replicated (default) or FSDP-style on ``mesh``."""
    n = mesh.shape["data"]
    if not fsdp:
        return jax.device_put(tree, NamedSharding(mesh, P()))
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, fsdp_spec(x.shape, n))), tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a batch with its leading axis over "data" (B must be divisible by the axis size); a
    shared ``prefix`` (``jaxcl.batch.split_prefix``, no batch axis) is replicated."""
    n = mesh.shape["data"]
    rows = {k: v for k, v in batch.items() if k != "prefix"}
    for k, v in rows.items():
        if v.shape[0] % n:
            raise ValueError(f"batch['{k}'] has leading size {v.shape[0]}, not divisible by {n} devices")
    placed = jax.device_put(rows, batch_sharding(mesh))
    if "prefix" in batch:
        placed["prefix"] = jax.device_put(batch["prefix"], NamedSharding(mesh, P()))
    return placed
