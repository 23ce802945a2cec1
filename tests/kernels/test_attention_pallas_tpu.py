"""The Mosaic TPU flash-attention kernel: interpret mode against the reference, AOT for a v5e.

Interpret-mode cases each jit the forward and the VJP once and check output and
all three gradients against `attention_reference`; every case covers several
features. The `tpu_aot` tests compile for a real v5e topology through libtpu,
which proves the kernels lower through Mosaic (no TPU needed).
"""
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels.attention.pallas_tpu import (
    _block_tables,
    _Config,
    _k_major_blocks,
    _q_major_blocks,
    flash_attention,
)
from kernels.attention.reference import attention_reference

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _packed_ids(batch, length, boundaries):
    """Sorted segment ids, a new segment starting at each boundary."""
    ids = np.searchsorted(np.asarray(boundaries), np.arange(length), side="right")
    return jnp.asarray(np.broadcast_to(ids, (batch, length)), jnp.int32)


def _forward_and_vjp(attention, q, k, v, cot):
    @jax.jit
    def run(q, k, v, cot):
        out, vjp = jax.vjp(attention, q, k, v)
        return (out, *vjp(cot))

    return run(q, k, v, cot)


class Case(NamedTuple):
    batch: int
    q_len: int
    k_len: int
    heads: int
    head_dim: int
    dtype: Any
    causal: bool = False
    key_lengths: tuple | None = None
    boundaries: tuple | None = None  # packed segment ids: a new segment at each
    kwargs: tuple = ()  # extra flash_attention arguments, as (name, value) pairs
    empty_rows: bool = False  # some query rows see no key


CASES = [
    pytest.param(Case(1, 256, 256, 2, 128, jnp.float32, kwargs=(("block_q", 128), ("block_k", 128))), id="plain"),
    # Length 0 (zeros, zero grads) and one key short of a block end; L=300 pads to 384.
    pytest.param(
        Case(2, 300, 300, 1, 64, jnp.float32, key_lengths=(0, 255), empty_rows=True), id="ragged_lengths_odd_len"
    ),
    pytest.param(Case(2, 300, 300, 2, 128, jnp.bfloat16, True, (300, 250)), id="causal_lengths_bf16"),
    # Segment 2 starts past the key length of element 0: its queries see nothing.
    pytest.param(
        Case(2, 300, 300, 1, 64, jnp.float32, True, (150, 300), (100, 200), empty_rows=True),
        id="segments_causal_lengths",
    ),
    # Lq != Lk with unequal blocks, causal with Lq < Lk.
    pytest.param(
        Case(2, 130, 300, 2, 64, jnp.float32, True, (257, 100), kwargs=(("block_q", 128), ("block_k", 256))),
        id="cross_causal_lengths",
    ),
    # The TPU interpreter fills uninitialised VMEM with NaN and raises on out-of-bounds reads.
    pytest.param(
        Case(2, 256, 256, 1, 128, jnp.float32, False, (200, 256), (64, 140),
             kwargs=(("interpret", pltpu.InterpretParams()),)),
        id="segments_lengths_tpu_interpreter",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case):
    """Output and dq, dk, dv agree with attention_reference; rows with no visible key are 0 with 0 grads."""
    batch, q_len, k_len, heads, head_dim, dtype, causal, lengths, boundaries, kwargs, empty_rows = case
    rng = np.random.default_rng(0)
    q, k, v = (
        jnp.asarray(rng.standard_normal((batch, n, heads, head_dim)), dtype) for n in (q_len, k_len, k_len)
    )
    cot = jnp.asarray(rng.standard_normal((batch, q_len, heads, head_dim)), dtype)
    masks = dict(
        key_lengths=None if lengths is None else jnp.asarray(lengths, jnp.int32),
        segment_ids=None if boundaries is None else _packed_ids(batch, q_len, boundaries),
        causal=causal,
    )
    kwargs = {"interpret": True, **dict(kwargs)}
    ours = _forward_and_vjp(lambda q, k, v: flash_attention(q, k, v, **masks, **kwargs), q, k, v, cot)
    want = _forward_and_vjp(lambda q, k, v: attention_reference(q, k, v, **masks), q, k, v, cot)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, want):
        assert a.dtype == dtype, name
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32),
            atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype], err_msg=name,
        )

    # Rows that see no key: exact zeros in the output and in dq.
    visible = np.ones((batch, q_len, k_len), bool)
    if lengths is not None:
        visible &= np.arange(k_len) < np.asarray(lengths)[:, None, None]
    if boundaries is not None:
        ids = np.asarray(masks["segment_ids"])
        visible &= ids[:, :, None] == ids[:, None, :]
    if causal:
        visible &= np.tril(np.ones((q_len, k_len), bool))
    empty = ~visible.any(-1)
    assert empty.any() == empty_rows
    out, dq, dk, dv = (np.asarray(x, np.float32) for x in ours)
    assert np.all(out[empty] == 0.0) and np.all(dq[empty] == 0.0)
    # Keys no query sees get zero dk, dv.
    unseen = ~visible.any(1)
    assert np.all(dk[unseen] == 0.0) and np.all(dv[unseen] == 0.0)


def _tables(lengths, segment_ids=None, causal=False, length=512, block=128):
    """_block_tables for one length and block size, reshaped to (B, blocks, 4)."""
    cfg = _Config(
        block_q=block, block_k=block, scale=1.0, causal=causal, mask_lengths=True,
        segments=segment_ids is not None, interpret=True,
    )
    segments = None if segment_ids is None else (segment_ids, segment_ids)
    tables = jax.jit(_block_tables, static_argnums=(0, 3, 4))(
        cfg, jnp.asarray(lengths), segments, length, length
    )
    return [np.asarray(t).reshape(len(lengths), length // block, 4) for t in tables]


def test_block_tables_skip_masked_blocks():
    """Per-block visible ranges and clamped index maps: causal plus a key length, then packed segments."""
    q_info, k_info = _tables([300], causal=True)
    # Query block i sees key blocks 0..min(i, 2): block 3 lies past the length 300.
    np.testing.assert_array_equal(q_info[0, :, :2], [[0, 0], [0, 1], [0, 2], [0, 2]])
    # Key block j is seen by query blocks j..3; key block 3 by none (the empty range).
    np.testing.assert_array_equal(k_info[0, :, :2], [[0, 3], [1, 3], [2, 3], [0, -1]])

    # Index maps clamp skipped steps to a useful block: no new block index, no DMA.
    flat = [jnp.asarray(t.reshape(-1)) for t in (q_info, k_info)]
    _, key_block = _q_major_blocks(4)
    query_block, _ = _k_major_blocks(4)
    key_blocks = [[int(key_block(0, 0, i, j, None, *flat)) for j in range(4)] for i in range(4)]
    np.testing.assert_array_equal(key_blocks, [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 2, 2], [0, 1, 2, 2]])
    query_blocks = [[int(query_block(0, 0, j, i, None, *flat)) for i in range(4)] for j in range(4)]
    np.testing.assert_array_equal(query_blocks, [[0, 1, 2, 3], [1, 1, 2, 3], [2, 2, 2, 3], [0, 0, 0, 0]])

    # Two segments of two blocks each: (first, last visible block, min id, max id).
    q_info, _ = _tables([512], segment_ids=_packed_ids(1, 512, (256,)))
    np.testing.assert_array_equal(q_info[0], [[0, 1, 0, 0], [0, 1, 0, 0], [2, 3, 1, 1], [2, 3, 1, 1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_q=100), "block_q"),
        (dict(block_k=0), "block_k"),
        (dict(key_lengths=jnp.zeros((3,), jnp.int32)), "key_lengths"),
        (dict(key_lengths=jnp.zeros((2,), jnp.float32)), "key_lengths"),
        (dict(segment_ids=jnp.zeros((2, 5), jnp.int32)), "segment_ids"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    """Bad blocks, key lengths or segment ids are a ValueError naming the argument."""
    q = k = v = jnp.zeros((2, 8, 1, 64))
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, interpret=True, **kwargs)


@pytest.mark.parametrize(
    "q_shape, k_shape, dtypes",
    [
        ((2, 8, 1, 64), (2, 8, 1, 32), (jnp.float32, jnp.float32)),  # head_dim
        ((2, 8, 1, 64), (2, 8, 2, 64), (jnp.float32, jnp.float32)),  # heads
        ((2, 8, 64), (2, 8, 64), (jnp.float32, jnp.float32)),  # no heads axis
        ((2, 8, 1, 64), (2, 8, 1, 64), (jnp.bfloat16, jnp.float32)),  # mixed dtypes
        ((2, 8, 1, 64), (2, 8, 1, 64), (jnp.float16, jnp.float16)),  # unsupported dtype
    ],
)
def test_bad_inputs_raise(q_shape, k_shape, dtypes):
    """Inconsistent shapes and unsupported or mixed dtypes are a ValueError."""
    q = jnp.zeros(q_shape, dtypes[0])
    k = v = jnp.zeros(k_shape, dtypes[1])
    with pytest.raises(ValueError):
        flash_attention(q, k, v, interpret=True)


def test_segment_ids_need_self_attention():
    """segment_ids with Lq != Lk is a ValueError."""
    q = jnp.zeros((1, 8, 1, 64))
    k = v = jnp.zeros((1, 16, 1, 64))
    with pytest.raises(ValueError, match="Lq == Lk"):
        flash_attention(q, k, v, segment_ids=jnp.zeros((1, 8), jnp.int32), interpret=True)


# ----------------------------------------------------------------------------
# Ahead-of-time compilation for a real TPU (libtpu, no device needed)
# ----------------------------------------------------------------------------

AOT_BATCH, AOT_LEN, AOT_HEADS = 8, 1568, 4


@pytest.fixture(scope="module")
def v5e_mesh():
    pytest.importorskip("libtpu")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
    return jax.sharding.Mesh(np.array(topology.devices).reshape(4), ("data",))


def _compile_for_v5e(mesh, head_dim, grad, **masks):
    """Compile flash_attention (or the grad of its sum) batch-sharded over the v5e's 4 chips."""
    spec = jax.sharding.PartitionSpec("data")

    def attention(q, k, v, key_lengths, segment_ids):
        return flash_attention(
            q, k, v,
            key_lengths=key_lengths if masks.get("key_lengths") else None,
            segment_ids=segment_ids if masks.get("segment_ids") else None,
            causal=masks.get("causal", False),
        )

    def loss_grads(q, k, v, key_lengths, segment_ids):
        def loss(q, k, v):
            return attention(q, k, v, key_lengths, segment_ids).astype(jnp.float32).sum()

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    body = loss_grads if grad else attention
    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(spec,) * 5, out_specs=(spec,) * 3 if grad else spec
    )
    qkv = jax.ShapeDtypeStruct((AOT_BATCH, AOT_LEN, AOT_HEADS, head_dim), jnp.bfloat16)
    args = (
        qkv, qkv, qkv,
        jax.ShapeDtypeStruct((AOT_BATCH,), jnp.int32),
        jax.ShapeDtypeStruct((AOT_BATCH, AOT_LEN), jnp.int32),
    )
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.jit(sharded, in_shardings=(sharding,) * 5).lower(*args).compile()


@pytest.mark.tpu_aot
@pytest.mark.parametrize(
    "head_dim, grad, masks",
    [
        pytest.param(64, False, dict(key_lengths=True, segment_ids=True, causal=True), id="d64_fwd_all_masks"),
        pytest.param(64, True, dict(key_lengths=True), id="d64_grad_lengths"),
        pytest.param(128, False, dict(), id="d128_fwd_no_mask"),
        pytest.param(128, True, dict(key_lengths=True, segment_ids=True, causal=True), id="d128_grad_all_masks"),
    ],
)
def test_lowers_for_v5e(v5e_mesh, head_dim, grad, masks):
    """bf16, L=1568: the forward (one) and backward (two more) kernels lower through Mosaic for v5e."""
    compiled = _compile_for_v5e(v5e_mesh, head_dim, grad, **masks)
    text = compiled.as_text()
    assert text.count('custom_call_target="tpu_custom_call"') == (3 if grad else 1)
    assert "flash_attention_fwd" in text
    if grad:
        assert "flash_attention_dkdv" in text and "flash_attention_dq" in text
    # Per chip, a quarter of the batch: at least that many output bytes (dq, dk, dv for the
    # grad), less than the whole batch's (tiling pads D=64 to 128 lanes in HBM).
    per_chip = AOT_BATCH // 4 * AOT_LEN * AOT_HEADS * head_dim * 2 * (3 if grad else 1)
    assert per_chip <= compiled.memory_analysis().output_size_in_bytes < 4 * per_chip


@pytest.mark.tpu_aot
def test_dispatcher_lowers_for_v5e_under_a_sharded_mesh(v5e_mesh):
    """impl='auto' inside a jitted step under a data x tensor mesh of TPU chips picks the Mosaic
    kernel from the mesh's platform and runs it per shard: it compiles (a bare pallas_call would
    be refused: "Mosaic kernels cannot be automatically partitioned")."""
    import flax.linen as nn

    from kernels.attention import dot_product_attention
    from vfm_jax import sharding

    devices = np.asarray(v5e_mesh.devices).reshape(2, 1, 2)
    mesh = jax.sharding.Mesh(devices, sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None)

    def loss(q, k, v, key_lengths):
        out = dot_product_attention(q, k, v, key_lengths=key_lengths, impl="auto")
        return out.astype(jnp.float32).sum()

    qkv = jax.ShapeDtypeStruct(
        (AOT_BATCH, AOT_LEN, AOT_HEADS, 64), jnp.bfloat16, sharding=jax.sharding.NamedSharding(mesh, spec)
    )
    lengths = jax.ShapeDtypeStruct(
        (AOT_BATCH,), jnp.int32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(qkv, qkv, qkv, lengths).compile()
    text = compiled.as_text()
    assert text.count('custom_call_target="tpu_custom_call"') == 3
    # Each chip holds a quarter of the (batch x heads) work: dq, dk, dv outputs per chip.
    per_chip = AOT_BATCH // 2 * AOT_LEN * AOT_HEADS // 2 * 64 * 2 * 3
    assert per_chip <= compiled.memory_analysis().output_size_in_bytes < 4 * per_chip
    # The kernels carry cost estimates, so XLA's cost analysis sees their matmuls (2 in the forward,
    # 4 in dK/dV, 3 in dQ over every query-key pair, here on the padded lengths).
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] >= 2 * 9 * (AOT_BATCH // 2) * (AOT_HEADS // 2) * AOT_LEN**2 * 64
