"""The Pallas GPU flash-attention kernel (interpret mode on CPU) against the XLA reference.

Most cases use 16x16 tiles so that several blocks, partial blocks and block
skipping are exercised on small shapes. Skipping is checked by poisoning the
keys and values of blocks that must be skipped with NaN: a kernel that reads
such a block turns the affected rows into NaN (0 * NaN), while the expected
output, from the reference on clean inputs, stays finite.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention import dot_product_attention
from kernels.attention.pallas_gpu import default_block_sizes, flash_attention
from kernels.attention.reference import attention_reference

F32_TOL = dict(atol=1e-5, rtol=1e-5)
BF16_TOL = dict(atol=2e-2, rtol=2e-2)
# Sorted packed segments: row 0 changes segment inside blocks, row 1 only at
# block boundaries (so query blocks 0 and 1 never meet segment 2 in key block 2).
PACKED_37 = np.array([[0] * 3 + [1] * 4 + [2] * 20 + [3] * 10, [0] * 16 + [1] * 16 + [2] * 5])


def _inputs(b, lq, lk, h=2, d=64, dtype=jnp.float32, seed=0):
    """q, k, v and an output cotangent."""
    rng = np.random.default_rng(seed)
    shapes = [(b, lq, h, d), (b, lk, h, d), (b, lk, h, d), (b, lq, h, d)]
    return tuple(jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)


# One compile per (impl, static arguments, shapes): the out and d(out . ct)/d(q, k, v).
@functools.partial(jax.jit, static_argnames=("impl", "causal", "scale", "block_q", "block_k"))
def _out_and_grads(q, k, v, ct, key_lengths, segment_ids, *, impl, causal, scale=None, block_q=16, block_k=16):
    if impl == "pallas":
        attention = functools.partial(flash_attention, block_q=block_q, block_k=block_k, interpret=True)
    else:
        attention = attention_reference

    def loss(q, k, v):
        out = attention(q, k, v, key_lengths=key_lengths, segment_ids=segment_ids, causal=causal, scale=scale)
        return jnp.sum(out.astype(jnp.float32) * ct.astype(jnp.float32)), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _run(q, k, v, ct, *, key_lengths=None, segment_ids=None, causal=False, scale=None, block_q=16, block_k=16):
    """[out, dq, dk, dv] of the kernel and of the reference, as float32 numpy arrays."""
    lengths = None if key_lengths is None else jnp.asarray(key_lengths, jnp.int32)
    segments = None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
    results = []
    for impl, blocks in (("pallas", dict(block_q=block_q, block_k=block_k)), ("xla", {})):
        out, grads = _out_and_grads(q, k, v, ct, lengths, segments, impl=impl, causal=causal, scale=scale, **blocks)
        assert out.dtype == q.dtype and all(g.dtype == q.dtype for g in grads)
        results.append([np.asarray(x, np.float32) for x in (out, *grads)])
    return results


def _assert_close(ours, want, tol, names=("out", "dq", "dk", "dv")):
    for name, a, b in zip(names, ours, want):
        np.testing.assert_allclose(a, b, err_msg=name, **tol)


CASES = {
    "no_mask": dict(shape=(2, 32, 32)),
    "ragged_lengths": dict(shape=(3, 40, 40), key_lengths=(40, 0, 23)),
    "causal_odd_length": dict(shape=(2, 37, 37), causal=True),
    "segments": dict(shape=(2, 37, 37), segment_ids=PACKED_37),
    "segments_causal_lengths": dict(shape=(2, 37, 37), segment_ids=PACKED_37, causal=True, key_lengths=(30, 37)),
    "cross_attention_lengths": dict(shape=(2, 20, 45), key_lengths=(45, 7)),
    "head_dim_40_scale_len_100": dict(shape=(2, 100, 100), d=40, scale=0.3, key_lengths=(100, 61)),
    "head_dim_128_causal": dict(shape=(2, 48, 48), d=128, causal=True),
    "bf16_lengths_segments": dict(shape=(2, 37, 37), dtype=jnp.bfloat16, segment_ids=PACKED_37, key_lengths=(37, 33)),
    "bf16_head_dim_128_causal": dict(shape=(2, 48, 48), d=128, dtype=jnp.bfloat16, causal=True),
    "blocks_32x16": dict(shape=(2, 37, 37), causal=True, block_q=32, block_k=16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name):
    """Output and gradients equal the reference (fp32 tight, bf16 against fp32 math on the same inputs)."""
    case = dict(CASES[name])
    dtype = case.pop("dtype", jnp.float32)
    q, k, v, ct = _inputs(*case.pop("shape"), d=case.pop("d", 64), dtype=dtype)
    ours, want = _run(q, k, v, ct, **case)
    _assert_close(ours, want, F32_TOL if dtype == jnp.float32 else BF16_TOL)


def test_empty_rows_are_zero_with_zero_grads():
    """key_length 0: exact zeros out, exact zero grads for that batch element (no NaN)."""
    q, k, v, ct = _inputs(3, 40, 40)
    (out, dq, dk, dv), _ = _run(q, k, v, ct, key_lengths=(40, 0, 23))
    for x in (out, dq, dk, dv):
        assert np.all(x[1] == 0.0)
        assert np.all(np.isfinite(x))


def _poison(x, batch, start, stop):
    return x.at[batch, start:stop].set(jnp.nan)


def test_skips_key_blocks_past_the_key_length():
    """Blocks wholly past a row's key length are never read, in the forward or backward pass."""
    q, k, v, ct = _inputs(3, 40, 40)
    lengths = (40, 0, 23)  # row 2: key block 1 is partial, blocks 2 (32..39) is skipped
    _, want = _run(q, k, v, ct, key_lengths=lengths)
    k_bad, v_bad = k, v
    for batch, start in ((1, 0), (2, 32)):
        k_bad, v_bad = _poison(k_bad, batch, start, 40), _poison(v_bad, batch, start, 40)
    ours, _ = _run(q, k_bad, v_bad, ct, key_lengths=lengths)
    _assert_close(ours, want, F32_TOL)
    # Without the length the poisoned keys are visible, so the poison does reach the output.
    ours, _ = _run(q, k_bad, v_bad, ct, key_lengths=(40, 40, 40))
    assert np.isnan(ours[0][1:]).all()


def test_causal_skips_future_key_blocks():
    """Query blocks 0 and 1 (rows 0..31) never read key block 2 (keys 32..36), and vice versa."""
    q, k, v, ct = _inputs(2, 37, 37)
    everyone = slice(None)
    _, want = _run(q, k, v, ct, causal=True)
    ours, _ = _run(q, _poison(k, everyone, 32, 37), _poison(v, everyone, 32, 37), ct, causal=True)
    for a, b in zip(ours[:2], want[:2]):  # out and dq of the rows that must skip the block
        np.testing.assert_allclose(a[:, :32], b[:, :32], **F32_TOL)
    assert np.isnan(ours[0][:, 32:]).all()  # rows that see the poisoned keys do get NaN
    # dK/dV of key blocks 1 and 2 never read query block 0 (rows 0..15).
    ours, _ = _run(_poison(q, everyone, 0, 16), k, v, ct, causal=True)
    for a, b in zip(ours[2:], want[2:]):
        np.testing.assert_allclose(a[:, 16:], b[:, 16:], **F32_TOL)


def test_segments_skip_blocks_of_other_segments():
    """Row 1: query blocks of segments 0 and 1 never read key block 2, which holds only segment 2."""
    q, k, v, ct = _inputs(2, 37, 37)
    _, want = _run(q, k, v, ct, segment_ids=PACKED_37)
    ours, _ = _run(q, _poison(k, 1, 32, 37), _poison(v, 1, 32, 37), ct, segment_ids=PACKED_37)
    for a, b in zip(ours[:2], want[:2]):
        np.testing.assert_allclose(a[0], b[0], **F32_TOL)  # row 0 untouched
        np.testing.assert_allclose(a[1, :32], b[1, :32], **F32_TOL)
    assert np.isnan(ours[0][1, 32:]).all()
    # dK/dV of key block 2 of row 1 never read query blocks 0 and 1.
    ours, _ = _run(_poison(q, 1, 0, 32), k, v, ct, segment_ids=PACKED_37)
    for a, b in zip(ours[2:], want[2:]):
        np.testing.assert_allclose(a[1, 32:], b[1, 32:], **F32_TOL)


def test_dispatcher_pallas_matches_reference():
    """dot_product_attention(impl='pallas') on CPU runs this kernel (default tiles, interpret mode)."""
    q, k, v, _ = _inputs(2, 100, 100, d=48)
    lengths = jnp.asarray([100, 57])
    kw = dict(key_lengths=lengths, causal=True)
    ours = jax.jit(functools.partial(dot_product_attention, impl="pallas", **kw))(q, k, v)
    want = jax.jit(functools.partial(attention_reference, **kw))(q, k, v)
    np.testing.assert_allclose(ours, want, **F32_TOL)


def test_default_block_sizes():
    """Defaults are powers of two >= 16 that never exceed the rounded-up sequence."""
    assert default_block_sizes(64, 4096, 4096)["block_q"] == 64
    small = default_block_sizes(128, 20, 5)
    assert (small["block_q"], small["block_k"]) == (32, 16)
    for d in (16, 64, 128, 256):
        sizes = default_block_sizes(d, 197, 1568)
        for key in ("block_q", "block_k"):
            assert sizes[key] >= 16 and sizes[key] & (sizes[key] - 1) == 0


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((2, 8, 2, 16), (2, 8, 2, 16), (2, 9, 2, 16)), {}, "expected q"),
        (((2, 8, 16),) * 3, {}, "expected q"),
        (((2, 8, 2, 16), (2, 8, 2, 32), (2, 8, 2, 32)), {}, "expected q"),
        (((2, 8, 2, 16), (2, 12, 2, 16), (2, 12, 2, 16)), {"segment_ids": jnp.zeros((2, 8), jnp.int32)}, "self-attention"),
        (((2, 8, 2, 16),) * 3, {"segment_ids": jnp.zeros((2, 9), jnp.int32)}, "segment_ids must have shape"),
        (((2, 8, 2, 16),) * 3, {"key_lengths": jnp.zeros((3,), jnp.int32)}, "key_lengths"),
        (((2, 8, 2, 16),) * 3, {"block_q": 48}, "block_q"),
        (((2, 8, 2, 16),) * 3, {"block_k": 8}, "block_k"),
    ],
)
def test_bad_inputs_raise(shapes, kwargs, match):
    """Inconsistent shapes, cross-attention segment ids and bad tile sizes are ValueErrors."""
    q, k, v = (jnp.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, interpret=True, **kwargs)


def test_mixed_dtypes_raise():
    q = jnp.zeros((1, 8, 1, 16), jnp.bfloat16)
    with pytest.raises(ValueError, match="dtype|bf16"):
        flash_attention(q, q.astype(jnp.float32), q, interpret=True)
