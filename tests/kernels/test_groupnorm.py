"""GroupNorm(+scale/shift)+SiLU: the reference against PyTorch, both Pallas kernels (interpret mode)
against the reference, the TPU kernel compiled for a real topology, and the dispatcher."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.groupnorm import IMPLEMENTATIONS, group_norm_silu, pallas_gpu, pallas_tpu
from kernels.groupnorm.reference import group_norm_silu_reference


def _inputs(shape, dtype=jnp.float32, *, scale=True, shift=True, seed=0, offset=0.5):
    """x, gamma, beta, scale, shift (None where not asked for) and a cotangent for x's shape."""
    rng = np.random.default_rng(seed)
    b, c = shape[0], shape[-1]
    x = jnp.asarray(offset + 1.5 * rng.standard_normal(shape), dtype)
    gamma = jnp.asarray(1.0 + 0.3 * rng.standard_normal(c), jnp.float32)
    beta = jnp.asarray(0.3 * rng.standard_normal(c), jnp.float32)
    s = jnp.asarray(0.3 * rng.standard_normal((b, c)), jnp.float32) if scale else None
    t = jnp.asarray(0.3 * rng.standard_normal((b, c)), jnp.float32) if shift else None
    dy = jnp.asarray(rng.standard_normal(shape), dtype)
    return x, gamma, beta, s, t, dy


@pytest.mark.parity
@pytest.mark.parametrize("shape", [(2, 6, 5, 32), (2, 3, 4, 5, 32)], ids=["4d", "5d"])
@pytest.mark.parametrize("modulated", [False, True])
def test_reference_matches_torch(shape, modulated):
    """fp32 reference == torch.nn.GroupNorm (on NCHW / NCTHW), then (1 + scale), shift, SiLU."""
    torch = pytest.importorskip("torch")
    x, gamma, beta, scale, shift, _ = _inputs(shape, scale=modulated, shift=modulated)
    norm = torch.nn.GroupNorm(8, shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(np.array(gamma)))
        norm.bias.copy_(torch.from_numpy(np.array(beta)))
        y = norm(torch.from_numpy(np.moveaxis(np.array(x), -1, 1).copy()))
        if modulated:
            per_sample = (shape[0], shape[-1]) + (1,) * (len(shape) - 2)
            y = y * (1 + torch.from_numpy(np.array(scale)).reshape(per_sample))
            y = y + torch.from_numpy(np.array(shift)).reshape(per_sample)
        want = np.moveaxis(torch.nn.functional.silu(y).numpy(), 1, -1)
    ours = group_norm_silu_reference(x, gamma, beta, num_groups=8, scale=scale, shift=shift)
    np.testing.assert_allclose(ours, want, atol=1e-5, rtol=1e-5)


# Tiles far smaller than the defaults, so that every case runs several row tiles (and, on GPU,
# channel tiles) with a last row tile that overhangs S (35 and 105 rows here).
_KERNELS = {
    "gpu": lambda dtype: functools.partial(
        pallas_gpu.group_norm_silu, block_rows=16, block_c=8, interpret=True
    ),
    "tpu": lambda dtype: functools.partial(
        pallas_tpu.group_norm_silu, block_rows=8 if dtype == jnp.float32 else 16, interpret=True
    ),
}

_CASES = [
    # shape, groups, dtype, scale, shift, activation
    ((2, 5, 7, 32), 4, jnp.float32, True, True, True),
    ((2, 3, 5, 7, 32), 8, jnp.bfloat16, False, False, True),
    ((1, 3, 5, 7, 32), 8, jnp.float32, True, True, False),
    ((2, 5, 7, 32), 4, jnp.bfloat16, True, False, True),
]


def _assert_close(got, want, tol):
    """max |got - want| <= tol * max(1, max |want|), compared in fp32."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    bound = tol * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)


@pytest.mark.parametrize("kernel", sorted(_KERNELS))
@pytest.mark.parametrize(
    "shape, groups, dtype, has_scale, has_shift, activation",
    _CASES,
    ids=["4d-f32-mod", "5d-bf16-plain", "5d-f32-mod-noact", "4d-bf16-scale"],
)
def test_kernel_matches_reference(kernel, shape, groups, dtype, has_scale, has_shift, activation):
    """Forward and the vjp for every array input agree with the reference's autodiff."""
    x, gamma, beta, scale, shift, dy = _inputs(shape, dtype, scale=has_scale, shift=has_shift)
    args = {"x": x, "gamma": gamma, "beta": beta, "scale": scale, "shift": shift}
    args = {k: v for k, v in args.items() if v is not None}

    def call(fn, **arrays):
        return fn(
            arrays.pop("x"), arrays.pop("gamma"), arrays.pop("beta"), num_groups=groups,
            activation=activation, **arrays,
        )

    def fwd_bwd(fn, arrays, dy):
        y, vjp = jax.vjp(lambda a: call(fn, **a), arrays)
        return y, vjp(dy)[0]

    y, grads = jax.jit(functools.partial(fwd_bwd, _KERNELS[kernel](dtype)))(args, dy)
    y_ref, grads_ref = jax.jit(functools.partial(fwd_bwd, group_norm_silu_reference))(args, dy)
    assert y.dtype == dtype and y.shape == shape
    # bf16 outputs may differ by one rounding step; the fp32 parameter grads are accumulated
    # in fp32 by both sides.
    _assert_close(y, y_ref, 1e-2 if dtype == jnp.bfloat16 else 1e-5)
    for name in args:
        assert grads[name].dtype == args[name].dtype, name
        tol = {jnp.dtype(jnp.bfloat16): 1e-2}.get(grads[name].dtype, 1e-4 if dtype == jnp.bfloat16 else 1e-5)
        _assert_close(grads[name], grads_ref[name], tol)


@pytest.mark.parametrize("kernel", sorted(_KERNELS))
def test_kernel_variance_survives_a_large_mean(kernel):
    """Per-tile centred moments merged with Chan's rule: no E[x^2] - E[x]^2 cancellation."""
    x, gamma, beta, scale, shift, _ = _inputs((2, 5, 7, 32), offset=1000.0)
    ours = jax.jit(_KERNELS[kernel](jnp.float32), static_argnames="num_groups")(
        x, gamma, beta, num_groups=4, scale=scale, shift=shift
    )
    want = group_norm_silu_reference(x, gamma, beta, num_groups=4, scale=scale, shift=shift)
    _assert_close(ours, want, 1e-3)


@pytest.mark.tpu_aot
def test_tpu_kernel_compiles_for_v5e_under_shard_map(monkeypatch):
    """Forward and forward+backward compile for a v5e 2x2 slice, batch sharded over its 4 chips."""
    pytest.importorskip("libtpu")
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    # Compiling needs no chip; without this libtpu refuses to load while another process
    # (a parallel test run) holds its lock file.
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
    mesh = Mesh(np.array(topology.devices), ("data",))
    b, c = 8, 320
    specs = (P("data"), P(), P(), P("data"), P("data"))
    norm = jax.shard_map(
        lambda x, g, be, s, t: pallas_tpu.group_norm_silu(x, g, be, num_groups=32, scale=s, shift=t),
        mesh=mesh, in_specs=specs, out_specs=P("data"),
    )

    def loss(*arrays):
        return jnp.sum(jnp.square(norm(*arrays).astype(jnp.float32)))

    structs = (
        jax.ShapeDtypeStruct((b, 8, 32, 32, c), jnp.bfloat16),
        jax.ShapeDtypeStruct((c,), jnp.float32),
        jax.ShapeDtypeStruct((c,), jnp.float32),
        jax.ShapeDtypeStruct((b, c), jnp.float32),
        jax.ShapeDtypeStruct((b, c), jnp.float32),
    )
    shardings = tuple(NamedSharding(mesh, s) for s in specs)
    # Forward: moments + normalise; forward+backward adds grad sums + dx. Each chip gets 2 samples.
    for fn, kernels in ((norm, 2), (jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)), 4)):
        text = jax.jit(fn, in_shardings=shardings).lower(*structs).compile().as_text()
        calls = [line for line in text.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
        assert len(calls) >= kernels
        assert any(f"bf16[2,{8 * 32 * 32},{c}]" in line for line in calls)


def test_dispatch():
    """'xla' is the reference; 'pallas' on CPU runs the Triton kernel in interpret mode; 'auto' is XLA."""
    assert jax.default_backend() == "cpu"
    x, gamma, beta, scale, shift, _ = _inputs((2, 3, 5, 7, 32), jnp.bfloat16)
    call = jax.jit(group_norm_silu, static_argnames=("num_groups", "impl"))
    want = group_norm_silu_reference(x, gamma, beta, num_groups=8, scale=scale, shift=shift)
    for impl in ("xla", "auto"):
        got = call(x, gamma, beta, num_groups=8, scale=scale, shift=shift, impl=impl)
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    got = call(x, gamma, beta, num_groups=8, scale=scale, shift=shift, impl="pallas")
    assert got.dtype == jnp.bfloat16
    _assert_close(got, want, 1e-2)
    assert set(IMPLEMENTATIONS) == {"auto", "xla", "pallas"}


def test_bad_inputs_raise():
    x, gamma, beta, scale, _, _ = _inputs((2, 4, 4, 32))
    with pytest.raises(ValueError, match="divisible"):
        group_norm_silu(x, gamma, beta, num_groups=5)
    with pytest.raises(ValueError, match="impl"):
        group_norm_silu(x, gamma, beta, num_groups=8, impl="cudnn")
    with pytest.raises(ValueError, match="gamma"):
        group_norm_silu(x, gamma[:16], beta, num_groups=8)
    with pytest.raises(ValueError, match="scale"):
        group_norm_silu(x, gamma, beta, num_groups=8, scale=scale[:, :16])
    with pytest.raises(ValueError, match="channels-last"):
        group_norm_silu(x[:, 0, 0], gamma, beta, num_groups=8)
    with pytest.raises(ValueError, match="powers of two"):
        pallas_gpu.group_norm_silu(x, gamma, beta, num_groups=8, block_c=24, interpret=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        pallas_tpu.group_norm_silu(x, gamma, beta, num_groups=8, block_rows=12, interpret=True)
