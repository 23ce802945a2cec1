"""Flash attention for TPU: Pallas kernels lowered through Mosaic.

The XLA reference materialises every (Lq, Lk) logit matrix in HBM. These
kernels stream key/value blocks through VMEM with an online softmax instead,
and skip key blocks that the mask hides entirely: blocks past a row's key
length, above the causal diagonal, or holding other segments than the query
block. Skipped blocks cost neither compute nor DMA: their index maps are
clamped to the nearest useful block, so the pipeline sees an unchanged block
index and issues no copy.

Same semantics as `kernels.attention.reference.attention_reference`: layout
(B, L, H, D), fp32 softmax, a query with no visible key outputs zeros and
gets zero gradients.

Structure (top-down):

- `flash_attention` validates, transposes to (B, H, L, D), pads L to block
  multiples (padded keys are hidden by the key length, padded queries are
  sliced off) and builds the per-block tables below.
- `_attention` is a `jax.custom_vjp`: one forward kernel that also emits the
  fp32 logsumexp, and two backward kernels (dK/dV looping over query blocks,
  dQ looping over key blocks) that recompute the probabilities from it.
- Per-block tables go to SMEM by scalar prefetch: for each query block the
  first/last key block it can see and its min/max segment id, and the same
  for each key block. A block runs only when it lies in both ranges and its
  segment-id ranges overlap; it applies the element mask only when some of its
  entries can be hidden.

Per-row vectors (logsumexp, delta, segment ids) live in HBM as lane-dense rows
(..., 1, L): a (..., L, 1) column would be padded 128-fold by the TPU tiling.
Kernels that need a column transpose the row once per outer block. The head
dim is not padded: a block spanning the whole of D is legal for Mosaic
(D = 64, 80, 128, 256 compile for v5e), and padding 64 to 128 lanes would
double the matmul work.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_LANES = 128
_BLOCK_SIZES = (512, 256, 128)
_INFO_FIELDS = 4  # per block: first visible block, last visible block, min segment id, max segment id


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static parameters shared by the three kernels."""

    block_q: int
    block_k: int
    scale: float
    causal: bool
    mask_lengths: bool  # key lengths were given or the keys were padded
    segments: bool
    interpret: bool | pltpu.InterpretParams

    @property
    def can_mask(self) -> bool:
        return self.causal or self.mask_lengths or self.segments


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_lengths: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool | pltpu.InterpretParams = False,
) -> jax.Array:
    """Flash attention on TPU.

    Args:
      q: (B, Lq, H, D) queries; k, v: (B, Lk, H, D); all bf16 or all fp32.
      key_lengths: optional (B,) int, keys at positions >= length are ignored.
      segment_ids: optional (B, L) int (needs Lq == Lk): a query attends to
        keys of its own segment. Sorted (packed) ids skip the most blocks.
      causal: query i attends to keys j <= i.
      scale: logit scale, default 1/sqrt(D).
      block_q, block_k: multiples of 128; by default the largest of 512, 256,
        128 that pads the length by at most a quarter more than 128 would.
      interpret: run the kernels in Pallas interpret mode (CPU tests): True for
        the generic interpreter, or `pltpu.InterpretParams` for the TPU one.

    Returns:
      (B, Lq, H, D) in q's dtype.

    The per-block tables take 16 bytes per (batch element, block) in SMEM
    (1 MiB on v5e): per chip, B * (Lq / block_q + Lk / block_k) must stay
    below 64k.
    """
    _check_inputs(q, k, v, key_lengths, segment_ids)
    batch, q_len, _, head_dim = q.shape
    k_len = k.shape[1]
    block_q = _default_block(q_len) if block_q is None else block_q
    block_k = _default_block(k_len) if block_k is None else block_k
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block <= 0 or block % _LANES:
            raise ValueError(f"{name} must be a positive multiple of {_LANES}, got {block}")
    q_pad, k_pad = _round_up(q_len, block_q), _round_up(k_len, block_k)

    cfg = _Config(
        block_q=block_q,
        block_k=block_k,
        scale=head_dim**-0.5 if scale is None else float(scale),
        causal=causal,
        mask_lengths=key_lengths is not None or k_pad != k_len,
        segments=segment_ids is not None,
        interpret=interpret,
    )
    if key_lengths is None:
        lengths = jnp.full((batch,), k_len, jnp.int32)
    else:
        lengths = jnp.clip(key_lengths.astype(jnp.int32), 0, k_len)
    if segment_ids is None:
        segments = None
    else:
        ids = segment_ids.astype(jnp.int32)
        # Edge padding keeps each block's id range as tight as the real ids'.
        segments = tuple(
            jnp.pad(ids, ((0, 0), (0, n - q_len)), mode="edge") for n in (q_pad, k_pad)
        )
    masks = _Masks(lengths, *_block_tables(cfg, lengths, segments, q_pad, k_pad), segments)

    def to_kernel_layout(x, padded_len):
        x = x.transpose(0, 2, 1, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, padded_len - x.shape[2]), (0, 0)))

    out = _attention(
        cfg, to_kernel_layout(q, q_pad), to_kernel_layout(k, k_pad), to_kernel_layout(v, k_pad), masks
    )
    return out[:, :, :q_len].transpose(0, 2, 1, 3)


def _check_inputs(q, k, v, key_lengths, segment_ids):
    same_batch_heads_dim = q.shape[:1] + q.shape[2:] == k.shape[:1] + k.shape[2:]
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or not same_batch_heads_dim:
        raise ValueError(
            f"expected q (B, Lq, H, D) and k, v (B, Lk, H, D); got {q.shape}, {k.shape}, {v.shape}"
        )
    if not q.dtype == k.dtype == v.dtype or q.dtype not in (jnp.bfloat16, jnp.float32):
        raise ValueError(f"q, k, v must all be bf16 or all fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    batch = q.shape[0]
    if key_lengths is not None and (
        key_lengths.shape != (batch,) or not jnp.issubdtype(key_lengths.dtype, jnp.integer)
    ):
        raise ValueError(f"key_lengths must be ({batch},) int; got {key_lengths.shape} {key_lengths.dtype}")
    if segment_ids is not None:
        if q.shape[1] != k.shape[1]:
            raise ValueError("segment_ids need self-attention (Lq == Lk)")
        if segment_ids.shape != q.shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(
                f"segment_ids must be {q.shape[:2]} int; got {segment_ids.shape} {segment_ids.dtype}"
            )


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _default_block(length: int) -> int:
    """Big blocks amortise the per-grid-step overhead; padding wastes compute. Balance both."""
    budget = _round_up(length, _LANES) * 5 // 4
    return next(b for b in _BLOCK_SIZES if _round_up(length, b) <= budget)


# ----------------------------------------------------------------------------
# Masks and per-block tables
# ----------------------------------------------------------------------------


class _Masks(NamedTuple):
    """Non-differentiable kernel inputs (int32)."""

    lengths: jax.Array  # (B,) effective key lengths
    q_info: jax.Array  # (B * nq * 4,), see _block_tables
    k_info: jax.Array  # (B * nk * 4,)
    segments: tuple[jax.Array, jax.Array] | None  # ids padded to (B, Lq_pad), (B, Lk_pad)


def _block_tables(cfg: _Config, lengths, segments, q_pad: int, k_pad: int):
    """Flat int32 tables with `_INFO_FIELDS` entries per block, for SMEM.

    q_info[b, i] = (first key block, last key block, min id, max id) of query block i;
    k_info[b, j] = (first query block, last query block, min id, max id) of key block j.
    A block with nothing visible gets the empty range (0, -1).
    """
    batch = lengths.shape[0]
    nq, nk = q_pad // cfg.block_q, k_pad // cfg.block_k
    k_first = jnp.arange(nk) * cfg.block_k
    q_last = jnp.arange(nq) * cfg.block_q + cfg.block_q - 1
    visible = k_first[None, None, :] < lengths[:, None, None]
    if cfg.causal:
        visible = visible & (k_first[None, :] <= q_last[:, None])[None]
    if segments is None:
        q_min = q_max = jnp.zeros((batch, nq), jnp.int32)
        k_min = k_max = jnp.zeros((batch, nk), jnp.int32)
    else:
        q_ids = segments[0].reshape(batch, nq, cfg.block_q)
        k_ids = segments[1].reshape(batch, nk, cfg.block_k)
        q_min, q_max = q_ids.min(-1), q_ids.max(-1)
        k_min, k_max = k_ids.min(-1), k_ids.max(-1)
        visible = (
            visible
            & (q_min[:, :, None] <= k_max[:, None, :])
            & (k_min[:, None, :] <= q_max[:, :, None])
        )
    visible = jnp.broadcast_to(visible, (batch, nq, nk))
    q_info = jnp.stack([*_visible_range(visible, axis=2), q_min, q_max], axis=-1)
    k_info = jnp.stack([*_visible_range(visible, axis=1), k_min, k_max], axis=-1)
    return q_info.reshape(-1).astype(jnp.int32), k_info.reshape(-1).astype(jnp.int32)


def _visible_range(visible, axis):
    """First and last True index along axis; (0, -1) where there is none."""
    n = visible.shape[axis]
    first = jnp.argmax(visible, axis=axis)
    last = n - 1 - jnp.argmax(jnp.flip(visible, axis=axis), axis=axis)
    seen = visible.any(axis=axis)
    return jnp.where(seen, first, 0), jnp.where(seen, last, -1)


def _info(ref, block, field):
    return ref[block * _INFO_FIELDS + field]


def _clamp(index, lo, hi):
    """index clamped into [lo, hi]; lo when the range is empty (hi < lo)."""
    return jnp.minimum(jnp.maximum(index, lo), jnp.maximum(hi, lo))


def _q_major_blocks(nq: int):
    """(query block, key block) index functions for grids (b, h, i, j).

    The key block is j clamped to query block i's visible range, so the key
    side's block index stays put, and nothing is copied, while j walks over
    skipped blocks.
    """

    def q_block(b, h, i, j, lengths, q_info, k_info):
        return i

    def k_block(b, h, i, j, lengths, q_info, k_info):
        row = b * nq + i
        return _clamp(j, _info(q_info, row, 0), _info(q_info, row, 1))

    return q_block, k_block


def _k_major_blocks(nk: int):
    """(query block, key block) index functions for grids (b, h, j, i); i clamped likewise."""

    def q_block(b, h, j, i, lengths, q_info, k_info):
        row = b * nk + j
        return _clamp(i, _info(k_info, row, 0), _info(k_info, row, 1))

    def k_block(b, h, j, i, lengths, q_info, k_info):
        return j

    return q_block, k_block


def _block_status(cfg: _Config, refs, b, i, j, nq: int, nk: int):
    """(visible, needs_mask) for query block i x key block j, from the SMEM tables."""
    lengths, q_info, k_info = refs
    q_row, k_row = b * nq + i, b * nk + j
    visible = (
        (_info(q_info, q_row, 0) <= j)
        & (j <= _info(q_info, q_row, 1))
        & (_info(k_info, k_row, 0) <= i)
        & (i <= _info(k_info, k_row, 1))
    )
    needs_mask = False
    if cfg.mask_lengths:
        needs_mask = needs_mask | ((j + 1) * cfg.block_k > lengths[b])
    if cfg.causal:
        needs_mask = needs_mask | ((j + 1) * cfg.block_k - 1 > i * cfg.block_q)
    if cfg.segments:
        q_min, q_max = _info(q_info, q_row, 2), _info(q_info, q_row, 3)
        k_min, k_max = _info(k_info, k_row, 2), _info(k_info, k_row, 3)
        visible = visible & (q_min <= k_max) & (k_min <= q_max)
        # Overlapping ranges that are both a single id hold one segment: nothing to mask.
        needs_mask = needs_mask | (q_min != q_max) | (k_min != k_max)
    return visible, needs_mask


def _run_block(cfg: _Config, status, step):
    """step(masked) on a visible block, with the element mask only if the block needs it."""
    visible, needs_mask = status
    if not cfg.can_mask:
        pl.when(visible)(lambda: step(False))
        return
    pl.when(visible & needs_mask)(lambda: step(True))
    pl.when(visible & jnp.logical_not(needs_mask))(lambda: step(False))


def _mask_logits(cfg: _Config, s, q_axis, i, j, length, q_ids_ref, k_ids_ref):
    """Block (i, j) of logits with hidden entries at -inf; queries run along q_axis.

    The segment-id refs hold the block's ids as a column along the rows and a
    row along the columns, so that comparing them broadcasts to s's shape.
    """
    q_pos = i * cfg.block_q + jax.lax.broadcasted_iota(jnp.int32, s.shape, q_axis)
    k_pos = j * cfg.block_k + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1 - q_axis)
    conditions = []
    if cfg.mask_lengths:
        conditions.append(k_pos < length)
    if cfg.causal:
        conditions.append(q_pos >= k_pos)
    if cfg.segments:
        conditions.append(q_ids_ref[...] == k_ids_ref[...])
    return jnp.where(functools.reduce(jnp.logical_and, conditions), s, -jnp.inf)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


def _dot_nt(a, b):
    """a @ b.T with fp32 accumulation."""
    return jax.lax.dot_general(
        a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _row_to_col(row):
    """(1, n) -> (n, 1) through an aligned (128, n) transpose, which Mosaic lowers well."""
    return jnp.broadcast_to(row, (_LANES, row.shape[1])).T[:, :1]


def _col_to_row(col):
    """(n, 1) -> (1, n), the inverse of `_row_to_col`."""
    return jnp.broadcast_to(col, (col.shape[0], _LANES)).T[:1, :]


def _split_segment_refs(cfg: _Config, refs):
    """(query ids ref, key ids ref, the remaining refs); the ids are None without segments."""
    if cfg.segments:
        return refs[0], refs[1], refs[2:]
    return None, None, refs


def _forward_kernel(*refs, cfg: _Config, nq: int, nk: int):
    scalars, (q_ref, k_ref, v_ref), refs = refs[:3], refs[3:6], refs[6:]
    q_ids_ref, k_ids_ref, refs = _split_segment_refs(cfg, refs)
    o_ref, lse_ref, m_sc, l_sc, acc_sc, *seg_scratch = refs
    q_ids_col = seg_scratch[0] if cfg.segments else None  # (block_q, 1)
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)
        if cfg.segments:
            q_ids_col[...] = _row_to_col(q_ids_ref[...])

    def step(masked):
        v = v_ref[...]
        s = _dot_nt(q_ref[...], k_ref[...]) * cfg.scale
        if masked:
            s = _mask_logits(cfg, s, 0, i, j, scalars[0][b], q_ids_col, k_ids_ref)
        m_prev = m_sc[...]
        m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # a row with nothing visible so far
        p = jnp.exp(s - m_safe)
        alpha = jnp.exp(m_prev - m_safe)
        l_sc[...] = alpha * l_sc[...] + p.sum(axis=1, keepdims=True)
        acc_sc[...] = alpha * acc_sc[...] + _dot(p.astype(v.dtype), v)
        m_sc[...] = m_new

    _run_block(cfg, _block_status(cfg, scalars, b, i, j, nq, nk), step)

    @pl.when(j == nk - 1)
    def _finalize():
        l = l_sc[...]
        seen = l > 0.0
        o_ref[...] = (acc_sc[...] / jnp.where(seen, l, 1.0)).astype(o_ref.dtype)
        # +inf for rows with nothing visible: the backward's exp(s - lse) is 0 whatever s is.
        lse_ref[...] = _col_to_row(jnp.where(seen, m_sc[...] + jnp.log(l), jnp.inf))


def _dkdv_kernel(*refs, cfg: _Config, nq: int, nk: int):
    scalars, refs = refs[:3], refs[3:]
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), refs = refs[:6], refs[6:]
    q_ids_ref, k_ids_ref, refs = _split_segment_refs(cfg, refs)
    dk_ref, dv_ref, dk_sc, dv_sc, *seg_scratch = refs
    k_ids_col = seg_scratch[0] if cfg.segments else None  # (block_k, 1)
    b, j, i = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(i == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)
        if cfg.segments:
            k_ids_col[...] = _row_to_col(k_ids_ref[...])

    def step(masked):
        # Transposed orientation, keys along rows: every matmul is a plain or an NT product.
        q, do = q_ref[...], do_ref[...]
        s_t = _dot_nt(k_ref[...], q) * cfg.scale
        if masked:
            s_t = _mask_logits(cfg, s_t, 1, i, j, scalars[0][b], q_ids_ref, k_ids_col)
        p_t = jnp.exp(s_t - lse_ref[...])
        dv_sc[...] += _dot(p_t.astype(do.dtype), do)
        ds_t = p_t * (_dot_nt(v_ref[...], do) - delta_ref[...])
        dk_sc[...] += _dot(ds_t.astype(q.dtype), q)

    _run_block(cfg, _block_status(cfg, scalars, b, i, j, nq, nk), step)

    @pl.when(i == nq - 1)
    def _finalize():
        dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg: _Config, nq: int, nk: int):
    scalars, refs = refs[:3], refs[3:]
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), refs = refs[:6], refs[6:]
    q_ids_ref, k_ids_ref, refs = _split_segment_refs(cfg, refs)
    dq_ref, dq_sc, lse_sc, delta_sc, *seg_scratch = refs
    q_ids_col = seg_scratch[0] if cfg.segments else None  # (block_q, 1)
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)
        lse_sc[...] = _row_to_col(lse_ref[...])
        delta_sc[...] = _row_to_col(delta_ref[...])
        if cfg.segments:
            q_ids_col[...] = _row_to_col(q_ids_ref[...])

    def step(masked):
        k = k_ref[...]
        s = _dot_nt(q_ref[...], k) * cfg.scale
        if masked:
            s = _mask_logits(cfg, s, 0, i, j, scalars[0][b], q_ids_col, k_ids_ref)
        p = jnp.exp(s - lse_sc[...])
        ds = p * (_dot_nt(do_ref[...], v_ref[...]) - delta_sc[...])
        dq_sc[...] += _dot(ds.astype(k.dtype), k)

    _run_block(cfg, _block_status(cfg, scalars, b, i, j, nq, nk), step)

    @pl.when(j == nk - 1)
    def _finalize():
        dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


# ----------------------------------------------------------------------------
# pallas_call wiring and custom VJP
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(cfg: _Config, q, k, v, masks: _Masks):
    return _forward(cfg, q, k, v, masks)[0]


def _attention_fwd(cfg, q, k, v, masks):
    out, lse = _forward(cfg, q, k, v, masks)
    return out, (q, k, v, masks, out, lse)


def _attention_bwd(cfg, residuals, d_out):
    q, k, v, masks, out, lse = residuals
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)[:, :, None, :]
    dk, dv = _backward_dkdv(cfg, q, k, v, masks, d_out, lse, delta)
    dq = _backward_dq(cfg, q, k, v, masks, d_out, lse, delta)
    return dq, dk, dv, jax.tree.map(lambda _: None, masks)


_attention.defvjp(_attention_fwd, _attention_bwd)


def _like(x, shape, dtype):
    """Output ShapeDtypeStruct that varies over the same shard_map axes as x."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(x).mat)


class _Specs(NamedTuple):
    q: pl.BlockSpec  # (B, H, Lq_pad, D) query-side blocks
    kv: pl.BlockSpec  # (B, H, Lk_pad, D) key-side blocks
    row: pl.BlockSpec  # (B, H, 1, Lq_pad) per-query rows: logsumexp, delta
    segments: list[pl.BlockSpec]  # (B, 1, L_pad) query and key ids, if any


def _specs(cfg: _Config, head_dim: int, blocks) -> _Specs:
    q_block, k_block = blocks
    segments = []
    if cfg.segments:
        segments = [
            pl.BlockSpec((None, 1, cfg.block_q), lambda b, *g: (b, 0, q_block(b, *g))),
            pl.BlockSpec((None, 1, cfg.block_k), lambda b, *g: (b, 0, k_block(b, *g))),
        ]
    return _Specs(
        q=pl.BlockSpec((None, None, cfg.block_q, head_dim), lambda b, h, *g: (b, h, q_block(b, h, *g), 0)),
        kv=pl.BlockSpec((None, None, cfg.block_k, head_dim), lambda b, h, *g: (b, h, k_block(b, h, *g), 0)),
        row=pl.BlockSpec((None, None, 1, cfg.block_q), lambda b, h, *g: (b, h, 0, q_block(b, h, *g))),
        segments=segments,
    )


# Matmuls over every (query, key, head_dim) triple per kernel: the forward's QK^T and PV; dK/dV
# recomputes QK^T and forms dP, dV and dK; dQ recomputes QK^T and forms dP and dQ.
_MATMULS = {"flash_attention_fwd": 2, "flash_attention_dkdv": 4, "flash_attention_dq": 3}


def _cost(name: str, cfg: _Config, q, k, resident, streamed, outputs) -> pl.CostEstimate:
    """Dense (no block skipped) cost of one kernel, for XLA's scheduler and cost analysis.

    Without it a Mosaic call is opaque to XLA: an ahead-of-time plan would
    count neither its FLOPs nor its HBM traffic. `resident` arrays are read
    once (their blocks stay while the inner grid axis runs), `streamed` ones
    once per outer block (the grid's third axis).
    """
    batch, heads, q_pad, head_dim = q.shape
    outer = q_pad // cfg.block_q if name != "flash_attention_dkdv" else k.shape[2] // cfg.block_k
    pairs = batch * heads * q_pad * k.shape[2]
    nbytes = lambda arrays: sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays)  # noqa: E731
    return pl.CostEstimate(
        flops=2 * _MATMULS[name] * pairs * head_dim,
        transcendentals=pairs,
        bytes_accessed=nbytes(resident) + outer * nbytes(streamed) + nbytes(outputs),
    )


def _pallas(cfg, name, kernel, grid, specs: _Specs, in_specs, out_specs, out_shape, scratch, masks, args, cost):
    """pallas_call with the three SMEM tables prefetched and the segment ids appended."""
    segment_args = [] if masks.segments is None else [ids[:, None, :] for ids in masks.segments]
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=grid,
            in_specs=[*in_specs, *specs.segments],
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=cfg.interpret,
        name=name,
        cost_estimate=cost,
    )(masks.lengths, masks.q_info, masks.k_info, *args, *segment_args)


def _forward(cfg: _Config, q, k, v, masks: _Masks):
    batch, heads, q_pad, head_dim = q.shape
    nq, nk = q_pad // cfg.block_q, k.shape[2] // cfg.block_k
    specs = _specs(cfg, head_dim, _q_major_blocks(nq))
    scratch = [
        pltpu.VMEM((cfg.block_q, 1), jnp.float32),  # running max
        pltpu.VMEM((cfg.block_q, 1), jnp.float32),  # running sum
        pltpu.VMEM((cfg.block_q, head_dim), jnp.float32),  # unnormalised output
    ]
    if cfg.segments:
        scratch.append(pltpu.VMEM((cfg.block_q, 1), jnp.int32))  # query ids column
    out, lse = _like(q, q.shape, q.dtype), _like(q, (batch, heads, 1, q_pad), jnp.float32)
    return _pallas(
        cfg,
        "flash_attention_fwd",
        functools.partial(_forward_kernel, cfg=cfg, nq=nq, nk=nk),
        (batch, heads, nq, nk),
        specs,
        [specs.q, specs.kv, specs.kv],
        [specs.q, specs.row],
        [out, lse],
        scratch,
        masks,
        [q, k, v],
        _cost("flash_attention_fwd", cfg, q, k, [q], [k, v], [out, lse]),
    )


def _backward_dkdv(cfg: _Config, q, k, v, masks: _Masks, d_out, lse, delta):
    batch, heads, q_pad, head_dim = q.shape
    nq, nk = q_pad // cfg.block_q, k.shape[2] // cfg.block_k
    specs = _specs(cfg, head_dim, _k_major_blocks(nk))
    scratch = [pltpu.VMEM((cfg.block_k, head_dim), jnp.float32) for _ in ("dk", "dv")]
    dk, dv = _like(k, k.shape, k.dtype), _like(v, v.shape, v.dtype)
    if cfg.segments:
        scratch.append(pltpu.VMEM((cfg.block_k, 1), jnp.int32))  # key ids column
    return _pallas(
        cfg,
        "flash_attention_dkdv",
        functools.partial(_dkdv_kernel, cfg=cfg, nq=nq, nk=nk),
        (batch, heads, nk, nq),
        specs,
        [specs.q, specs.kv, specs.kv, specs.q, specs.row, specs.row],
        [specs.kv, specs.kv],
        [dk, dv],
        scratch,
        masks,
        [q, k, v, d_out, lse, delta],
        _cost("flash_attention_dkdv", cfg, q, k, [k, v], [q, d_out, lse, delta], [dk, dv]),
    )


def _backward_dq(cfg: _Config, q, k, v, masks: _Masks, d_out, lse, delta):
    batch, heads, q_pad, head_dim = q.shape
    nq, nk = q_pad // cfg.block_q, k.shape[2] // cfg.block_k
    specs = _specs(cfg, head_dim, _q_major_blocks(nq))
    scratch = [
        pltpu.VMEM((cfg.block_q, head_dim), jnp.float32),  # dq accumulator
        pltpu.VMEM((cfg.block_q, 1), jnp.float32),  # logsumexp column
        pltpu.VMEM((cfg.block_q, 1), jnp.float32),  # delta column
    ]
    dq = _like(q, q.shape, q.dtype)
    if cfg.segments:
        scratch.append(pltpu.VMEM((cfg.block_q, 1), jnp.int32))  # query ids column
    return _pallas(
        cfg,
        "flash_attention_dq",
        functools.partial(_dq_kernel, cfg=cfg, nq=nq, nk=nk),
        (batch, heads, nq, nk),
        specs,
        [specs.q, specs.kv, specs.kv, specs.q, specs.row, specs.row],
        specs.q,
        dq,
        scratch,
        masks,
        [q, k, v, d_out, lse, delta],
        _cost("flash_attention_dq", cfg, q, k, [q, d_out, lse, delta], [k, v], [dq]),
    )
