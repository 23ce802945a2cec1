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
  jax 0.11 on an H100), else Pallas; Pallas on TPU; XLA on CPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.attention.reference import attention_reference

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas")


def _cudnn_supports(q, segment_ids) -> bool:
    return (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] <= 128
        and q.shape[-1] % 8 == 0
        and segment_ids is None
    )


def _auto_impl(q, k, segment_ids) -> str:
    backend = jax.default_backend()
    if backend == "gpu":
        even = q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0
        return "cudnn" if even and _cudnn_supports(q, segment_ids) else "pallas"
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
                f"and no segment_ids; got backend={jax.default_backend()}, dtype={q.dtype}, "
                f"head_dim={q.shape[-1]}, segment_ids={'set' if segment_ids is not None else None}"
            )
        lengths = None if key_lengths is None else key_lengths.astype(jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=causal, key_value_seq_lengths=lengths,
            implementation="cudnn",
        )
    if impl == "pallas":
        backend = jax.default_backend()
        if backend == "tpu":
            from kernels.attention import pallas_tpu as kernel
        else:
            from kernels.attention import pallas_gpu as kernel
        return kernel.flash_attention(
            q, k, v, key_lengths=key_lengths, segment_ids=segment_ids, causal=causal,
            scale=scale, interpret=backend == "cpu",
        )
    return attention_reference(
        q, k, v, key_lengths=key_lengths, segment_ids=segment_ids, causal=causal, scale=scale
    )
