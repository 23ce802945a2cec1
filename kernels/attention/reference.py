"""Pure-XLA attention: the numerical reference every kernel is tested against."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
    batch: int,
    q_len: int,
    k_len: int,
    *,
    key_lengths: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    causal: bool = False,
) -> jax.Array | None:
    """(B, 1, Lq, Lk) boolean mask (True = attend), or None when nothing is masked."""
    mask = None

    def _and(m, new):
        return new if m is None else jnp.logical_and(m, new)

    if key_lengths is not None:
        keep = jnp.arange(k_len)[None, :] < key_lengths[:, None]
        mask = _and(mask, keep[:, None, None, :])
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = _and(mask, same[:, None, :, :])
    if causal:
        tri = jnp.arange(q_len)[:, None] >= jnp.arange(k_len)[None, :]
        mask = _and(mask, tri[None, None])
    if mask is not None:
        mask = jnp.broadcast_to(mask, (batch, 1, q_len, k_len))
    return mask


def attention_reference(q, k, v, *, key_lengths=None, segment_ids=None, causal=False, scale=None):
    """Softmax in fp32; rows with no visible key return zeros (not NaN, not a uniform average)."""
    b, lq, _, d = q.shape
    lk = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    mask = attention_mask(
        b, lq, lk, key_lengths=key_lengths, segment_ids=segment_ids, causal=causal
    )
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        weights = jnp.exp(logits - jax.lax.stop_gradient(row_max))
        denom = jnp.sum(weights, axis=-1, keepdims=True)
        weights = weights / jnp.where(denom > 0, denom, 1.0)
    else:
        weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype)
