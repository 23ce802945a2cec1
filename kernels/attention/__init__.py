"""The one attention entry point every model calls.

`dot_product_attention(q, k, v, key_lengths=..., segment_ids=..., causal=...,
impl=...)` takes the `jax.nn.dot_product_attention` layout
(batch, length, heads, head_dim) and masks described by key lengths or segment
ids, never a dense matrix, so that fused kernels can skip masked blocks.
Implementations:

- ``xla``: the reference in `kernels.attention.reference`, runs everywhere.
- ``cudnn``: `jax.nn.dot_product_attention(implementation='cudnn')`, GPU only,
  bf16/fp16, key lengths and causal (no segment ids).
- ``pallas``: the flash-attention kernels of this package, Triton-style on
  GPU (`pallas_gpu`), Mosaic on TPU (`pallas_tpu`); on CPU the GPU kernel runs
  in Pallas interpret mode (slow; for tests and the benchmark smoke run).
- ``auto``: on GPU cuDNN for calls it supports with both lengths even (cuDNN
  refuses odd lengths such as ViT's 197 tokens in training, seen with
  jax 0.11 on an H100) and at least `CUDNN_MIN_KEYS` keys, else Pallas;
  Pallas on TPU; XLA on CPU. The thresholds are measured
  (experiments/results/gpu_suite_h200.json): cuDNN is the faster at 206
  keys and more (e.g. 147 vs 69 TFLOP/s forward at L/14's 206 masked tokens),
  Pallas at the U-Net's 16-frame temporal attention (22 vs 4 TFLOP/s).

The platform is that of the mesh in context (`jax.set_mesh`), else the
default backend, so a TPU program compiled ahead of time on a CPU host gets
the TPU kernel. Under a multi-device mesh a Pallas kernel runs per shard
inside `jax.shard_map` (see `_per_shard`): XLA cannot partition it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.attention.reference import attention_reference

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas")
CUDNN_MIN_KEYS = 128  # below this, auto picks Pallas on GPU (cuDNN is slow on very short sequences)


def _platform() -> str:
    """Where the call will run: the devices of the mesh in context (e.g. a TPU topology
    compiled ahead of time from a CPU host), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def _cudnn_supports(q, segment_ids) -> bool:
    return (
        _platform() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] <= 128
        and q.shape[-1] % 8 == 0
        and segment_ids is None
    )


def _auto_impl(q, k, segment_ids) -> str:
    backend = _platform()
    if backend == "gpu":
        even = q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0
        long_enough = k.shape[1] >= CUDNN_MIN_KEYS
        return "cudnn" if even and long_enough and _cudnn_supports(q, segment_ids) else "pallas"
    return "pallas" if backend == "tpu" else "xla"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_lengths: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    impl: str = "auto",
) -> jax.Array:
    """Scaled dot-product attention.

    Args:
      q: (B, Lq, H, D) queries; k, v: (B, Lk, H, D).
      key_lengths: optional (B,) int, keys at positions >= length are ignored.
      segment_ids: optional (B, L) int (self-attention only): a query attends
        to keys of its own segment.
      causal: query i attends to keys j <= i.
      scale: logit scale, default 1/sqrt(D).
      impl: one of IMPLEMENTATIONS.

    Returns:
      (B, Lq, H, D) in q's dtype. A query with no visible key gets zeros.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl {impl!r} is not one of {IMPLEMENTATIONS}")
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or (q.shape[0], *q.shape[2:]) != (k.shape[0], *k.shape[2:]):
        raise ValueError(
            f"expected q (B, Lq, H, D) and k, v (B, Lk, H, D); got {q.shape}, {k.shape}, {v.shape}"
        )
    if segment_ids is not None and q.shape[1] != k.shape[1]:
        raise ValueError("segment_ids need self-attention (Lq == Lk)")
    if impl == "auto":
        impl = _auto_impl(q, k, segment_ids)
    if impl == "cudnn":
        if not _cudnn_supports(q, segment_ids):
            raise ValueError(
                "impl='cudnn' needs a GPU, bf16/fp16 inputs, head_dim <= 128 (multiple of 8) "
                f"and no segment_ids; got backend={_platform()}, dtype={q.dtype}, "
                f"head_dim={q.shape[-1]}, segment_ids={'set' if segment_ids is not None else None}"
            )
        lengths = None if key_lengths is None else key_lengths.astype(jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=causal, key_value_seq_lengths=lengths,
            implementation="cudnn",
        )
    if impl == "pallas":
        backend = _platform()
        if backend == "tpu":
            from kernels.attention import pallas_tpu as kernel
        else:
            from kernels.attention import pallas_gpu as kernel

        def flash(q, k, v, key_lengths, segment_ids):
            return kernel.flash_attention(
                q, k, v, key_lengths=key_lengths, segment_ids=segment_ids, causal=causal,
                scale=scale, interpret=backend == "cpu",
            )

        return _per_shard(flash, q, k, v, key_lengths, segment_ids)
    return attention_reference(
        q, k, v, key_lengths=key_lengths, segment_ids=segment_ids, causal=causal, scale=scale
    )


# The layout q, k and v carry in every model here (vfm_jax.sharding's logical names).
LOGICAL_AXES = ("batch", "length", "heads", "head_dim")


def _per_shard(flash, q, k, v, key_lengths, segment_ids):
    """Run a Pallas kernel once per device shard when a multi-device mesh is in context.

    XLA cannot partition a Pallas custom call (Mosaic refuses outright: "Mosaic
    kernels cannot be automatically partitioned"), so under `jax.set_mesh`
    the kernel runs inside `jax.shard_map`, split over the mesh axes that
    flax's logical-axis rules in context give `batch` and `heads` (axes that
    do not divide those sizes are left out, i.e. replicated). Attention is
    independent per example and head, so no collective is needed; a `length`
    split is gathered first (the kernels hold whole sequences). Inside a
    caller's own `shard_map` the kernel runs as it is.
    """
    import flax.linen as nn
    from jax.sharding import AxisType, PartitionSpec as P

    from vfm_jax.sharding import fitted_spec

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or AxisType.Manual in mesh.axis_types:
        return flash(q, k, v, key_lengths, segment_ids)
    batch, _, heads, _ = fitted_spec(nn.logical_to_mesh_axes(LOGICAL_AXES), q.shape, mesh)
    qkv = P(batch, None, heads, None)
    masks = {"key_lengths": (key_lengths, P(batch)), "segment_ids": (segment_ids, P(batch, None))}
    given = {name: array for name, (array, _) in masks.items() if array is not None}

    def body(q, k, v, given):
        return flash(q, k, v, given.get("key_lengths"), given.get("segment_ids"))

    in_specs = (qkv, qkv, qkv, {name: masks[name][1] for name in given})
    return jax.shard_map(body, in_specs=in_specs, out_specs=qkv, check_vma=False)(q, k, v, given)
