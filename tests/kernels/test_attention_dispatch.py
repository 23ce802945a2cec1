"""The attention entry point against jax.nn.dot_product_attention and explicit masks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention import IMPLEMENTATIONS, dot_product_attention
from kernels.attention.reference import attention_reference


def _qkv(b, lq, lk, h=2, d=8, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.standard_normal((b, n, h, d)), dtype) for n in (lq, lk, lk)
    )


# Jitted so each case compiles once instead of dispatching op by op.
_reference = jax.jit(attention_reference, static_argnames=("causal", "scale"))
_attention = jax.jit(dot_product_attention, static_argnames=("causal", "scale", "impl"))
_jax_attention = jax.jit(
    functools.partial(jax.nn.dot_product_attention, implementation="xla"),
    static_argnames=("is_causal", "scale"),
)


@pytest.mark.parametrize(
    "lq, lk, causal, lengths",
    [
        (16, 16, False, None),
        (16, 16, True, None),
        (16, 16, False, (16, 5, 1)),
        (13, 13, False, None),
        (13, 13, True, None),
        (13, 13, False, (13, 7, 2)),
        (5, 11, False, (11, 3, 8)),
        (12, 7, False, None),
    ],
)
def test_matches_jax_nn(lq, lk, causal, lengths):
    """No mask, causal, ragged key lengths, odd lengths and Lq != Lk agree with jax.nn in fp32."""
    q, k, v = _qkv(3, lq, lk)
    key_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    ours = _reference(q, k, v, key_lengths=key_lengths, causal=causal)
    want = _jax_attention(q, k, v, is_causal=causal, key_value_seq_lengths=key_lengths)
    np.testing.assert_allclose(ours, want, atol=1e-5, rtol=1e-5)


def test_scale_argument():
    """An explicit logit scale is used instead of 1/sqrt(head_dim)."""
    q, k, v = _qkv(2, 9, 9)
    ours = _attention(q, k, v, scale=0.3, impl="xla")
    np.testing.assert_allclose(ours, _jax_attention(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_segment_ids_match_dense_mask(causal):
    """Segment ids (with key lengths, optionally causal) equal a hand-built dense mask; empty rows are 0."""
    b, l = 2, 10
    q, k, v = _qkv(b, l, l, seed=1)
    segment_ids = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])
    key_lengths = jnp.asarray([10, 4])
    seg = np.asarray(segment_ids)
    mask = np.zeros((b, 1, l, l), bool)
    for n in range(b):
        for i in range(l):
            for j in range(l):
                visible = seg[n, i] == seg[n, j] and j < int(key_lengths[n])
                mask[n, 0, i, j] = visible and (j <= i or not causal)
    ours = _attention(
        q, k, v, segment_ids=segment_ids, key_lengths=key_lengths, causal=causal, impl="xla"
    )
    want = _jax_attention(q, k, v, mask=jnp.asarray(mask))
    has_key = mask[:, 0].any(-1)  # (B, Lq)
    assert not has_key.all(), "the case should include query rows with no visible key"
    np.testing.assert_allclose(np.asarray(ours)[has_key], np.asarray(want)[has_key], atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(ours)[~has_key] == 0.0)


def test_fully_masked_row_is_zero_with_finite_grads():
    """key_length 0 gives exact zeros, the other batch element is unaffected, and grads have no NaN."""
    q, k, v = _qkv(2, 6, 6, seed=2)
    key_lengths = jnp.asarray([6, 0])
    out = _attention(q, k, v, key_lengths=key_lengths, impl="xla")
    assert np.all(np.asarray(out[1]) == 0.0)
    np.testing.assert_allclose(out[0], _jax_attention(q[:1], k[:1], v[:1])[0], atol=1e-5, rtol=1e-5)

    grads = jax.jit(jax.grad(
        lambda q, k, v: _attention(q, k, v, key_lengths=key_lengths, impl="xla").sum(),
        argnums=(0, 1, 2),
    ))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    # Nothing of batch element 1 reaches the output, so its gradients are zero.
    for g in grads:
        assert np.all(np.asarray(g[1]) == 0.0)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_jax_nn(causal):
    """d(out . cotangent)/d(q, k, v) equals jax.nn's with ragged key lengths."""
    q, k, v = _qkv(3, 11, 11, seed=3)
    key_lengths = jnp.asarray([11, 6, 3])
    cot = jnp.asarray(np.random.default_rng(4).standard_normal(q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    ours = jax.jit(jax.grad(
        loss(lambda q, k, v: _reference(q, k, v, key_lengths=key_lengths, causal=causal)),
        argnums=(0, 1, 2),
    ))(q, k, v)
    want = jax.jit(jax.grad(
        loss(lambda q, k, v: _jax_attention(q, k, v, is_causal=causal, key_value_seq_lengths=key_lengths)),
        argnums=(0, 1, 2),
    ))(q, k, v)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_inputs():
    """bf16 in gives bf16 out, close to the fp32 result on the same (rounded) inputs."""
    q, k, v = _qkv(2, 16, 16, d=16, dtype=jnp.bfloat16, seed=5)
    key_lengths = jnp.asarray([16, 9])
    out = _attention(q, k, v, key_lengths=key_lengths)
    assert out.dtype == jnp.bfloat16
    want = _jax_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), key_value_seq_lengths=key_lengths
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2, rtol=2e-2)


def test_auto_is_xla_on_cpu():
    """impl='auto' on CPU takes the XLA path, which matches jax.nn."""
    assert jax.default_backend() == "cpu"
    q, k, v = _qkv(2, 8, 8, dtype=jnp.bfloat16)
    key_lengths = jnp.asarray([8, 3])
    auto = _attention(q, k, v, key_lengths=key_lengths, causal=True, impl="auto")
    xla = _attention(q, k, v, key_lengths=key_lengths, causal=True, impl="xla")
    np.testing.assert_array_equal(np.asarray(auto, np.float32), np.asarray(xla, np.float32))
    want = _jax_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), is_causal=True, key_value_seq_lengths=key_lengths
    )
    np.testing.assert_allclose(np.asarray(auto, np.float32), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cudnn_on_cpu_raises(dtype):
    """impl='cudnn' is refused off GPU, whatever the dtype."""
    q, k, v = _qkv(1, 8, 8, dtype=dtype)
    with pytest.raises(ValueError, match="cudnn"):
        dot_product_attention(q, k, v, impl="cudnn")


def test_unknown_impl_raises():
    """An implementation name outside IMPLEMENTATIONS is rejected and named."""
    assert IMPLEMENTATIONS == ("auto", "xla", "cudnn", "pallas")
    q, k, v = _qkv(1, 4, 4)
    with pytest.raises(ValueError, match="flash"):
        dot_product_attention(q, k, v, impl="flash")


@pytest.mark.parametrize(
    "q_shape, k_shape, v_shape",
    [
        ((2, 4, 2, 8), (2, 4, 2, 8), (2, 5, 2, 8)),  # k != v
        ((2, 4, 2, 8), (3, 4, 2, 8), (3, 4, 2, 8)),  # batch
        ((2, 4, 2, 8), (2, 4, 3, 8), (2, 4, 3, 8)),  # heads
        ((2, 4, 2, 8), (2, 4, 2, 16), (2, 4, 2, 16)),  # head_dim
        ((2, 4, 16), (2, 4, 16), (2, 4, 16)),  # no heads axis
    ],
)
def test_mismatched_shapes_raise(q_shape, k_shape, v_shape):
    """Inconsistent q/k/v shapes are a ValueError."""
    q, k, v = (jnp.zeros(s) for s in (q_shape, k_shape, v_shape))
    with pytest.raises(ValueError):
        dot_product_attention(q, k, v)


def test_segment_ids_need_self_attention():
    """segment_ids with Lq != Lk is a ValueError."""
    q, k, v = _qkv(1, 4, 6)
    with pytest.raises(ValueError, match="segment_ids"):
        dot_product_attention(q, k, v, segment_ids=jnp.zeros((1, 4), jnp.int32))


def test_auto_choice_on_gpu_follows_the_measured_thresholds(monkeypatch):
    """On GPU: cuDNN for long even sequences, Pallas for odd lengths, short sequences and segments."""
    import kernels.attention as attention

    monkeypatch.setattr(attention, "_platform", lambda: "gpu")

    def pick(lq, lk, dtype=jnp.bfloat16, segments=None):
        q = jax.ShapeDtypeStruct((2, lq, 12, 64), dtype)
        k = jax.ShapeDtypeStruct((2, lk, 12, 64), dtype)
        return attention._auto_impl(q, k, segments)

    assert pick(1568, 1568) == "cudnn"
    assert pick(206, 206) == "cudnn"
    assert pick(205, 205) == "pallas"  # cuDNN has no backward for odd lengths
    assert pick(16, 16) == "pallas"  # U-Net temporal attention: cuDNN is 5x slower there
    assert pick(1568, 1568, dtype=jnp.float32) == "pallas"
    assert pick(1568, 1568, segments=jnp.zeros((2, 1568), jnp.int32)) == "pallas"


def _sharded_attention(mesh, q, k, v, key_lengths, impl):
    """Forward and input gradients of dot_product_attention under `mesh` and the model's logical rules."""
    import flax.linen as nn

    from vfm_jax import sharding

    def loss(q, k, v):
        out = dot_product_attention(q, k, v, key_lengths=key_lengths, impl=impl)
        return jnp.sum(out * jnp.cos(out)), out

    @jax.jit
    def run(q, k, v):
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        heads = "tensor" if q.shape[2] % mesh.shape["tensor"] == 0 else None
        spec = jax.sharding.PartitionSpec(("data", "fsdp"), None, heads, None)
        placed = [jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)) for x in (q, k, v)]
        return run(*placed), run.trace(*placed).jaxpr


@pytest.mark.parametrize("heads", [4, 3], ids=["heads_split", "heads_not_divisible"])
def test_pallas_runs_per_shard_under_a_mesh(heads):
    """Under a data x fsdp x tensor mesh the kernel runs inside shard_map (XLA cannot partition a
    Pallas call) and gives the XLA path's outputs and gradients, ragged key lengths and odd L."""
    from vfm_jax import sharding

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    q, k, v = _qkv(4, 13, 13, h=heads, d=8)
    key_lengths = jnp.asarray([13, 5, 1, 9])
    (out, grads), jaxpr = _sharded_attention(mesh, q, k, v, key_lengths, "pallas")
    (want, want_grads), _ = _sharded_attention(mesh, q, k, v, key_lengths, "xla")
    assert "shard_map" in str(jaxpr)
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=2e-5)
    for got, ref in zip(grads, want_grads):
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)
