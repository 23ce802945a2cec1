"""Meshes and the logical-axis rules that map model axis names onto them.

Every param and block-boundary activation carries logical names from one
vocabulary (`batch, length, frames, embed, mlp, heads, head_dim, kv, vocab,
conv_in, conv_out, layers`). A config picks a strategy by sizing the mesh axes
`data`, `fsdp`, `tensor`:

- DP: data=N, fsdp=1, tensor=1 - params replicated, batch split.
- FSDP: fsdp=N - params split along `embed`, batch split over data*fsdp.
- FSDP+TP: fsdp=N, tensor=M - heads/mlp/vocab also split over `tensor`.

Rules are priority-ordered: `batch` claims data+fsdp first, so an activation's
`embed` stays whole while a param's `embed` (which has no batch axis) is
split over fsdp.
"""
from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", "tensor"),
    ("conv_out", "tensor"),
    ("length", None),
    ("frames", None),
    ("head_dim", None),
    ("conv_in", None),
    ("layers", None),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve one -1 entry to the remaining devices; check the product divides the device count."""
    shape = [int(sizes[a]) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise ValueError(f"mesh sizes {dict(sizes)}: use positive sizes and at most one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(f"mesh {dict(sizes)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) > num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs more than the {num_devices} devices present")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices=None) -> Mesh:
    """Mesh over `devices` (default: all). A mesh smaller than the device list uses its first devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    used = math.prod(shape)
    if used < len(devices):
        logging.warning("mesh %s uses %d of %d devices", shape, used, len(devices))
    if used == len(devices):
        # ICI-aware device order. A mesh axis may take part of a physical one (tensor:4 of a v6e 16x16),
        # which jax.make_mesh refuses on every TPU but v5e.
        ordered = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(ordered, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices[:used]).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data and fsdp; the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def process_batch_block(mesh: Mesh) -> tuple[int, int]:
    """(index, count): this process loads row block `index` of `count` equal blocks of every global batch.

    The rows its devices hold under `batch_sharding(mesh)`, which is what
    `jax.make_array_from_process_local_data` takes from it. With the usual
    meshes that is its process index of the process count; processes whose
    devices hold the same rows (a non-batch mesh axis spanning processes) share
    a block and load the same examples.
    """
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    held = batch_sharding(mesh).addressable_devices_indices_map((shards,)).values()
    rows = sorted({row for (block,) in held for row in range(shards)[block]})
    if not rows:
        raise ValueError(f"process {jax.process_index()} has no device in the mesh {dict(mesh.shape)}")
    size = len(rows)
    if rows != list(range(rows[0], rows[0] + size)) or rows[0] % size:
        raise ValueError(
            f"process {jax.process_index()} holds batch rows {rows} of {shards}: a process's devices must "
            "hold one contiguous block of the batch axis (order the mesh devices by process)"
        )
    return rows[0] // size, shards // size


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def example_batch(source, keys, batch_size: int = 1) -> dict:
    """Abstract batch (ShapeDtypeStructs) shaped like the source's examples; a missing key is an error."""
    from data.pipeline import first_example  # grain: kept out of the kernels' import path

    example = first_example(source)
    missing = [k for k in keys if k not in example]
    if missing:
        raise ValueError(f"the data has no field(s) {missing}; it has {sorted(example)}")
    return {
        k: jax.ShapeDtypeStruct((batch_size,) + np.shape(example[k]), np.asarray(example[k]).dtype)
        for k in keys
    }


def variables_layout(task, example: dict, mesh):
    """(abstract unboxed variables, their NamedShardings) from the params' logical axis names.

    `example` is a concrete batch (zeros will do) with the input shapes.
    """
    boxed = jax.eval_shape(lambda rng: task.init(rng, example), jax.random.PRNGKey(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, LOGICAL_RULES)
    abstract = nn.unbox(boxed)
    return abstract, jax.tree.map(lambda s, x: NamedSharding(mesh, fitted_spec(s.spec, x.shape, mesh)),
                                  shardings, abstract)


def fitted_spec(spec: P, shape: tuple[int, ...], mesh) -> P:
    """`spec` with each dimension split only over the leading mesh axes whose sizes divide it.

    A param whose dimension a mesh axis does not divide (710 K710 classes over
    `tensor`=4) is replicated along the axes that do not fit instead of
    failing to place; so is one split over an axis the mesh does not have.
    """
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept, product = [], 1
        for name in names:
            if name not in mesh.axis_names or dim % (product * mesh.shape[name]):
                break
            kept.append(name)
            product *= mesh.shape[name]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*fitted)


def zeros_like_batch(abstract: dict) -> dict:
    return {k: jnp.zeros(v.shape, v.dtype) for k, v in abstract.items()}
