"""Flash attention for GPUs in Pallas (Triton lowering), forward and backward.

`flash_attention` computes `attention_reference` without materialising the
(Lq, Lk) logits: each program owns one block of queries of one (batch, head)
and walks over blocks of keys with an online softmax in fp32 (FlashAttention-2).
Masks are described, never materialised (key lengths, segment ids, causal),
so whole key blocks that no query of the block can see are skipped instead of
computed and masked:

- key lengths cap the loop at the block holding the last valid key;
- causal attention stops at the block holding the last query of the block;
- with segment ids, only the contiguous run of key blocks whose [min, max]
  id range meets the query block's range is visited (exactly the overlapping
  blocks when ids are sorted, as in packed sequences; a superset otherwise).

The backward pass (a `jax.custom_vjp`) recomputes the probabilities from the
per-row log-sum-exp saved by the forward pass, with one kernel for dK/dV (a
program per key block, looping over query blocks) and one for dQ (a program
per query block, looping over key blocks); both skip blocks like the forward.

Dots take bf16/fp16 operands with fp32 accumulation; fp32 inputs get IEEE
fp32 dots (`Precision.HIGHEST`, not TF32): exact, but slow on tensor cores.

Triton needs power-of-two tiles, so the wrapper pads the head dim to a power
of two >= 16 and the sequences to whole blocks. Padded keys are masked by the
key length, padded queries and head columns are sliced off again.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Logit of a masked (query, key) pair, in the kernels' base-2 units. Finite, so
# that fully masked rows produce no inf - inf; any real logit is larger.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_LOG2E = math.log2(math.e)
_MIN_BLOCK = 16  # Triton's smallest dot tile


class _Config(NamedTuple):
    """Static kernel parameters (hashable: a `custom_vjp` non-differentiable argument)."""

    block_q: int
    block_k: int
    num_warps: int
    num_stages: int
    scale: float
    causal: bool
    interpret: bool


class _Segments(NamedTuple):
    """Padded segment ids and, per block, the range of blocks on the other side it can see."""

    q_ids: jax.Array  # (B, Lq) int32
    k_ids: jax.Array  # (B, Lk) int32
    key_blocks: jax.Array  # (B, Lq // block_q, 2): [first, last + 1) key block per query block
    query_blocks: jax.Array  # (B, Lk // block_k, 2): [first, last + 1) query block per key block


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
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Scaled dot-product attention, same semantics as `attention_reference`.

    Args:
      q: (B, Lq, H, D) queries; k, v: (B, Lk, H, D), same dtype (bf16, fp16 or fp32).
      key_lengths: optional (B,) int: keys at positions >= length are ignored.
      segment_ids: optional (B, L) int, self-attention only: a query sees the
        keys with its own id.
      causal: query i sees keys j <= i.
      scale: logit scale, default D ** -0.5.
      block_q, block_k: tile sizes (powers of two >= 16); default by head dim
        and sequence length (`default_block_sizes`).
      num_warps, num_stages: Triton launch parameters, default by head dim.
      interpret: run the kernels in the Pallas interpreter (CPU tests).

    Returns:
      (B, Lq, H, D) in q's dtype; a query that sees no key gets zeros (and
      passes no gradient).
    """
    _validate(q, k, v, key_lengths, segment_ids, block_q, block_k)
    batch, q_len, _, head_dim = q.shape
    k_len = k.shape[1]
    padded_dim = max(_MIN_BLOCK, pl.next_power_of_2(head_dim))
    defaults = default_block_sizes(padded_dim, q_len, k_len)
    config = _Config(
        block_q=block_q or defaults["block_q"],
        block_k=block_k or defaults["block_k"],
        num_warps=num_warps or defaults["num_warps"],
        num_stages=num_stages or defaults["num_stages"],
        scale=float(head_dim ** -0.5 if scale is None else scale),
        causal=bool(causal),
        interpret=bool(interpret),
    )
    q_pad = _round_up(q_len, config.block_q)
    k_pad = _round_up(k_len, config.block_k)

    # Key lengths are passed whenever some keys must be hidden, padding included.
    lengths = None
    if key_lengths is not None:
        lengths = jnp.clip(jnp.asarray(key_lengths).astype(jnp.int32), 0, k_len)
    elif k_pad != k_len:
        lengths = jnp.full((batch,), k_len, jnp.int32)

    segments = None
    if segment_ids is not None:
        ids = jnp.asarray(segment_ids).astype(jnp.int32)
        # Padding repeats the last id so that it never widens a block's id range.
        q_ids = jnp.pad(ids, ((0, 0), (0, q_pad - q_len)), mode="edge")
        k_ids = jnp.pad(ids, ((0, 0), (0, k_pad - k_len)), mode="edge")
        segments = _Segments(q_ids, k_ids, *_segment_block_ranges(q_ids, k_ids, config))

    def pad(x, length):
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, padded_dim - head_dim)))

    out = _flash(pad(q, q_pad), pad(k, k_pad), pad(v, k_pad), lengths, segments, config)
    return out[:, :q_len, :, :head_dim]


def default_block_sizes(head_dim: int, q_len: int, k_len: int) -> dict[str, int]:
    """H100 tiles and launch parameters for a (padded) head dim and sequence lengths.

    Measured on an H100 (bf16, jax 0.11.2): 64x64 tiles with 4 warps gave the
    fastest forward + backward for head dims 64 and 128 (128-row query tiles
    win the forward alone by ~3% for D=64 but slow the backward), and also
    the fastest for 197-token sequences. Tiles never exceed the (power-of-two
    rounded) sequence, so short sequences are not padded to a whole large tile.
    """
    if head_dim <= 64:
        block_q, block_k, num_warps, num_stages = 64, 64, 4, 3
    elif head_dim <= 128:
        block_q, block_k, num_warps, num_stages = 64, 64, 4, 2
    else:
        block_q, block_k, num_warps, num_stages = 64, 32, 8, 2
    return dict(
        block_q=min(block_q, max(_MIN_BLOCK, pl.next_power_of_2(q_len))),
        block_k=min(block_k, max(_MIN_BLOCK, pl.next_power_of_2(k_len))),
        num_warps=num_warps,
        num_stages=num_stages,
    )


def _validate(q, k, v, key_lengths, segment_ids, block_q, block_k):
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or (q.shape[0], *q.shape[2:]) != (k.shape[0], *k.shape[2:]):
        raise ValueError(
            f"expected q (B, Lq, H, D) and k, v (B, Lk, H, D); got {q.shape}, {k.shape}, {v.shape}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (jnp.bfloat16, jnp.float16, jnp.float32):
        raise ValueError(f"q, k, v must share one of bf16/fp16/fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, q_len = q.shape[:2]
    if key_lengths is not None and jnp.shape(key_lengths) != (batch,):
        raise ValueError(f"key_lengths must have shape ({batch},); got {jnp.shape(key_lengths)}")
    if segment_ids is not None:
        if q_len != k.shape[1]:
            raise ValueError(f"segment_ids need self-attention (Lq == Lk); got Lq={q_len}, Lk={k.shape[1]}")
        if jnp.shape(segment_ids) != (batch, q_len):
            raise ValueError(f"segment_ids must have shape ({batch}, {q_len}); got {jnp.shape(segment_ids)}")
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block is not None and (block < _MIN_BLOCK or block & (block - 1)):
            raise ValueError(f"{name} must be a power of two >= {_MIN_BLOCK}; got {block}")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _segment_block_ranges(q_ids, k_ids, config):
    """Per query block the [first, last + 1) key blocks whose id range meets its own, and vice versa."""
    batch = q_ids.shape[0]
    q_blocks = q_ids.reshape(batch, -1, config.block_q)
    k_blocks = k_ids.reshape(batch, -1, config.block_k)
    q_lo, q_hi = q_blocks.min(-1)[:, :, None], q_blocks.max(-1)[:, :, None]
    k_lo, k_hi = k_blocks.min(-1)[:, None, :], k_blocks.max(-1)[:, None, :]
    meets = (q_lo <= k_hi) & (k_lo <= q_hi)  # (B, num query blocks, num key blocks)
    return _true_span(meets), _true_span(meets.transpose(0, 2, 1))


def _true_span(x):
    """(..., n) bool -> (..., 2) int32 [first, last + 1) of the True entries; [0, 0) if none."""
    n = x.shape[-1]
    index = jnp.arange(n)
    last = jnp.max(jnp.where(x, index + 1, 0), axis=-1)
    first = jnp.minimum(jnp.min(jnp.where(x, index, n), axis=-1), last)
    return jnp.stack([first, last], axis=-1).astype(jnp.int32)


# --------------------------------------------------------------------------- autodiff


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, lengths, segments, config):
    return _forward(q, k, v, lengths, segments, config)[0]


def _flash_fwd(q, k, v, lengths, segments, config):
    out, lse = _forward(q, k, v, lengths, segments, config)
    return out, (q, k, v, lengths, segments, out, lse)


def _flash_bwd(config, residuals, d_out):
    q, k, v, lengths, segments, out, lse = residuals
    # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, the softmax-backward row term.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    dk, dv = _backward_dkdv(q, k, v, d_out, lse, delta, lengths, segments, config)
    dq = _backward_dq(q, k, v, d_out, lse, delta, lengths, segments, config)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --------------------------------------------------------------------------- kernels


def _dot(a, b, *, trans_a=False, trans_b=False):
    """a @ b (optionally transposed) accumulated in fp32; fp32 operands at full (IEEE) precision."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _cdiv(n, d: int):
    return lax.div(n + d - 1, d)  # n >= 0, so truncation is floor


def _masked_logits(q, k, q_start, k_start, length, q_ids, k_ids, config):
    """(block_q, block_k) fp32 logits in base-2 units, invisible pairs set to _MASK_VALUE."""
    s = _dot(q, k, trans_b=True) * (config.scale * _LOG2E)
    k_pos = k_start + jnp.arange(k.shape[0])
    visible = None
    if length is not None:
        visible = (k_pos < length)[None, :]
    if q_ids is not None:
        same = q_ids[:, None] == k_ids[None, :]
        visible = same if visible is None else visible & same
    if config.causal:
        q_pos = q_start + jnp.arange(q.shape[0])
        past = q_pos[:, None] >= k_pos[None, :]
        visible = past if visible is None else visible & past
    return s if visible is None else jnp.where(visible, s, _MASK_VALUE)


def _key_block_range(q_block, num_key_blocks, length, key_blocks_ref, config):
    """[lo, hi) of the key blocks that query block `q_block` may see."""
    lo, hi = 0, num_key_blocks
    if key_blocks_ref is not None:
        lo, hi = key_blocks_ref[0], key_blocks_ref[1]
    if length is not None:
        hi = jnp.minimum(hi, _cdiv(length, config.block_k))
    if config.causal:
        hi = jnp.minimum(hi, _cdiv((q_block + 1) * config.block_q, config.block_k))
    return lo, hi


def _query_block_range(k_block, num_query_blocks, length, query_blocks_ref, config):
    """[lo, hi) of the query blocks that may see key block `k_block`."""
    lo, hi = 0, num_query_blocks
    if query_blocks_ref is not None:
        lo, hi = query_blocks_ref[0], query_blocks_ref[1]
    k_start = k_block * config.block_k
    if config.causal:
        lo = jnp.maximum(lo, lax.div(k_start, config.block_q))
    if length is not None:
        # No query block when the whole key block lies past the length. (A
        # multiply, not jnp.where: Triton lowering mistypes a select of two literals.)
        hi = hi * (k_start < length).astype(jnp.int32)
    return lo, hi


def _forward_kernel(
    q_ref, k_ref, v_ref, length_ref, q_ids_ref, k_ids_ref, key_blocks_ref, o_ref, lse_ref, *, config
):
    block_q, block_k = config.block_q, config.block_k
    q_block = pl.program_id(0)
    q = q_ref[...]
    length = None if length_ref is None else length_ref[0]
    q_ids = None if q_ids_ref is None else q_ids_ref[...]

    def body(j, carry):
        acc, row_max, row_sum = carry
        keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k_ids = None if k_ids_ref is None else k_ids_ref[keys]
        s = _masked_logits(q, k_ref[keys, :], q_block * block_q, j * block_k, length, q_ids, k_ids, config)
        new_max = jnp.maximum(row_max, jnp.max(s, axis=1))
        correction = jnp.exp2(row_max - new_max)
        p = jnp.exp2(s - new_max[:, None])
        row_sum = correction * row_sum + jnp.sum(p, axis=1)
        v = v_ref[keys, :]
        acc = correction[:, None] * acc + _dot(p.astype(v.dtype), v)
        return acc, new_max, row_sum

    init = (
        jnp.zeros((block_q, q.shape[1]), jnp.float32),
        jnp.full((block_q,), _MASK_VALUE, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    lo, hi = _key_block_range(q_block, k_ref.shape[0] // block_k, length, key_blocks_ref, config)
    acc, row_max, row_sum = lax.fori_loop(lo, hi, body, init)
    # A row whose maximum is still the mask value saw no key: output 0, and an
    # infinite log-sum-exp makes every probability of the backward pass 0.
    # (`!=` rather than `>`, so that NaN logits propagate instead of zeroing the row.)
    has_key = row_max != _MASK_VALUE
    o_ref[...] = jnp.where(has_key[:, None], acc / jnp.where(has_key, row_sum, 1.0)[:, None], 0.0).astype(
        o_ref.dtype
    )
    lse_ref[...] = jnp.where(has_key, row_max + jnp.log2(row_sum), jnp.inf)


def _backward_dkdv_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, length_ref, q_ids_ref, k_ids_ref, query_blocks_ref,
    dk_ref, dv_ref, *, config,
):
    block_q, block_k = config.block_q, config.block_k
    k_block = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    length = None if length_ref is None else length_ref[0]
    k_ids = None if k_ids_ref is None else k_ids_ref[...]

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        q_ids = None if q_ids_ref is None else q_ids_ref[rows]
        s = _masked_logits(q, k, i * block_q, k_block * block_k, length, q_ids, k_ids, config)
        p = jnp.exp2(s - lse_ref[rows][:, None])
        dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
        ds = p * (_dot(do, v, trans_b=True) - delta_ref[rows][:, None])
        dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    zeros = jnp.zeros((block_k, k.shape[1]), jnp.float32)
    lo, hi = _query_block_range(k_block, q_ref.shape[0] // block_q, length, query_blocks_ref, config)
    dk, dv = lax.fori_loop(lo, hi, body, (zeros, zeros))
    dk_ref[...] = (dk * config.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward_dq_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, length_ref, q_ids_ref, k_ids_ref, key_blocks_ref,
    dq_ref, *, config,
):
    block_q, block_k = config.block_q, config.block_k
    q_block = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    length = None if length_ref is None else length_ref[0]
    q_ids = None if q_ids_ref is None else q_ids_ref[...]

    def body(j, dq):
        keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[keys, :]
        k_ids = None if k_ids_ref is None else k_ids_ref[keys]
        s = _masked_logits(q, k, q_block * block_q, j * block_k, length, q_ids, k_ids, config)
        p = jnp.exp2(s - lse[:, None])
        ds = p * (_dot(do, v_ref[keys, :], trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    lo, hi = _key_block_range(q_block, k_ref.shape[0] // block_k, length, key_blocks_ref, config)
    dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * config.scale).astype(dq_ref.dtype)


# --------------------------------------------------------------------------- launches
#
# Grids are (blocks, batch, heads) with the block index fastest, so the programs
# running together share one (batch, head)'s keys and values (or queries) in L2.


def _full(x):
    """BlockSpec of one (batch, head)'s whole sequence of a (B, L, H, D) array."""
    return pl.BlockSpec((None, x.shape[1], None, x.shape[3]), lambda _, b, h: (b, 0, h, 0))


def _blocked(x, block):
    """BlockSpec of block i of one (batch, head) of a (B, L, H, D) array."""
    return pl.BlockSpec((None, block, None, x.shape[3]), lambda i, b, h: (b, i, h, 0))


def _row_spec(lse, block):
    """BlockSpec of a (B, H, L) per-row array: the whole row if block is None, else block i."""
    if block is None:
        return pl.BlockSpec((None, None, lse.shape[2]), lambda _, b, h: (b, h, 0))
    return pl.BlockSpec((None, None, block), lambda i, b, h: (b, h, i))


def _mask_specs(lengths, segments, *, q_block, k_block, ranges):
    """Inputs and BlockSpecs of the mask operands: lengths, query ids, key ids, block ranges.

    `q_block` / `k_block` is the program's own block size on that side, or None
    when the program walks over the whole sequence on that side; `ranges` picks
    which `_Segments` block ranges the program needs.
    """
    length_spec = None if lengths is None else pl.BlockSpec((1,), lambda _, b, h: (b,))
    if segments is None:
        return (lengths, None, None, None), [length_spec, None, None, None]

    def ids_spec(ids, block):
        if block is None:
            return pl.BlockSpec((None, ids.shape[1]), lambda _, b, h: (b, 0))
        return pl.BlockSpec((None, block), lambda i, b, h: (b, i))

    block_ranges = getattr(segments, ranges)
    specs = [
        length_spec,
        ids_spec(segments.q_ids, q_block),
        ids_spec(segments.k_ids, k_block),
        pl.BlockSpec((None, None, 2), lambda i, b, h: (b, i, 0)),
    ]
    return (lengths, segments.q_ids, segments.k_ids, block_ranges), specs


def _compiler_params(config):
    return plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def _forward(q, k, v, lengths, segments, config):
    batch, q_len, heads, _ = q.shape
    mask_args, mask_specs = _mask_specs(
        lengths, segments, q_block=config.block_q, k_block=None, ranges="key_blocks"
    )
    lse_shape = jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32)
    return pl.pallas_call(
        functools.partial(_forward_kernel, config=config),
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype), lse_shape),
        grid=(q_len // config.block_q, batch, heads),
        in_specs=[_blocked(q, config.block_q), _full(k), _full(v), *mask_specs],
        out_specs=(_blocked(q, config.block_q), _row_spec(lse_shape, config.block_q)),
        compiler_params=_compiler_params(config),
        interpret=config.interpret,
        name="flash_attention_forward",
    )(q, k, v, *mask_args)


def _backward_dkdv(q, k, v, d_out, lse, delta, lengths, segments, config):
    batch, k_len, heads, _ = k.shape
    mask_args, mask_specs = _mask_specs(
        lengths, segments, q_block=None, k_block=config.block_k, ranges="query_blocks"
    )
    return pl.pallas_call(
        functools.partial(_backward_dkdv_kernel, config=config),
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid=(k_len // config.block_k, batch, heads),
        in_specs=[
            _full(q), _blocked(k, config.block_k), _blocked(v, config.block_k), _full(d_out),
            _row_spec(lse, None), _row_spec(delta, None), *mask_specs,
        ],
        out_specs=(_blocked(k, config.block_k), _blocked(v, config.block_k)),
        compiler_params=_compiler_params(config),
        interpret=config.interpret,
        name="flash_attention_backward_dkdv",
    )(q, k, v, d_out, lse, delta, *mask_args)


def _backward_dq(q, k, v, d_out, lse, delta, lengths, segments, config):
    batch, q_len, heads, _ = q.shape
    mask_args, mask_specs = _mask_specs(
        lengths, segments, q_block=config.block_q, k_block=None, ranges="key_blocks"
    )
    return pl.pallas_call(
        functools.partial(_backward_dq_kernel, config=config),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(q_len // config.block_q, batch, heads),
        in_specs=[
            _blocked(q, config.block_q), _full(k), _full(v), _blocked(d_out, config.block_q),
            _row_spec(lse, config.block_q), _row_spec(delta, config.block_q), *mask_specs,
        ],
        out_specs=_blocked(q, config.block_q),
        compiler_params=_compiler_params(config),
        interpret=config.interpret,
        name="flash_attention_backward_dq",
    )(q, k, v, d_out, lse, delta, *mask_args)
