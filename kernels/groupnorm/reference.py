"""Pure-XLA GroupNorm(+scale/shift)+SiLU, and the jnp pieces the Pallas kernels share.

`group_norm_silu_reference` is the numerical reference every kernel is tested
against. Below it sit the parts of the two-phase kernels that are plain jnp:
the math of one tile (the same for the Triton and the Mosaic kernel; only how a
tile is loaded and stored differs) and the per-(sample, channel) algebra between
the passes, wrapped in one `jax.custom_vjp`.
"""
from __future__ import annotations

import functools
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np


def check_inputs(x, gamma, beta, *, num_groups, scale=None, shift=None) -> None:
    """Raises ValueError unless x is (B, *spatial, C) with C % num_groups == 0 and the rest fits."""
    if x.ndim < 3:
        raise ValueError(f"expected channels-last x (B, *spatial, C) with a spatial dim; got {x.shape}")
    b, c = x.shape[0], x.shape[-1]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"channels ({c}) must be divisible by num_groups ({num_groups})")
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.shape != (c,):
            raise ValueError(f"{name} must be ({c},); got {v.shape}")
    for name, v in (("scale", scale), ("shift", shift)):
        if v is not None and v.shape != (b, c):
            raise ValueError(f"{name} must be (B, C) = {(b, c)}; got {v.shape}")


def group_norm_silu_reference(
    x, gamma, beta, *, num_groups, eps=1e-5, scale=None, shift=None, activation=True
):
    """Statistics in fp32 (biased variance), then affine, modulation, SiLU; output in x's dtype."""
    b, c = x.shape[0], x.shape[-1]
    xg = x.astype(jnp.float32).reshape(b, -1, num_groups, c // num_groups)
    mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=(1, 3), keepdims=True)
    y = ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    y = y * gamma.astype(jnp.float32) + beta.astype(jnp.float32)
    per_sample = (b,) + (1,) * (x.ndim - 2) + (c,)
    if scale is not None:
        y = y * (1.0 + scale.astype(jnp.float32).reshape(per_sample))
    if shift is not None:
        y = y + shift.astype(jnp.float32).reshape(per_sample)
    if activation:
        y = jax.nn.silu(y)
    return y.astype(x.dtype)


# ---------------------------------------------------------------------------
# Shared by the kernels. They see x as (B, S, C) cut into tiles of rows
# (spatial positions) by channels. In a tile, `valid` marks the rows inside S
# (the last tile may overhang); coefficient vectors are per (sample, channel)
# and broadcast over rows; per-tile sums keep a leading axis of 1.


def like(x, shape, dtype):
    """A kernel output struct that varies over the same shard_map axes as x (check_vma needs it)."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(x).manual_axis_type)


def tile_counts(s, rows):
    """(T,) rows in each of the ceil(s / rows) tiles: all `rows` but the last."""
    counts = np.full(-(-s // rows), rows)
    counts[-1] = s - rows * (len(counts) - 1)
    return counts


def _upstream(x, dy, a, d, activation):
    """Gradient at the pre-activation z = x * a + d."""
    g = dy.astype(jnp.float32)
    if activation:
        z = x * a + d
        sig = jax.nn.sigmoid(z)
        g = g * sig * (1.0 + z * (1.0 - sig))
    return g


def tile_moments(valid, x):
    """Per-channel mean and centred sum of squares of a tile's valid rows (merged later with Chan's rule)."""
    x = jnp.where(valid, x.astype(jnp.float32), 0.0)
    count = jnp.sum(jnp.where(valid, 1.0, 0.0), axis=0, keepdims=True)
    mean = jnp.sum(x, axis=0, keepdims=True) / count
    m2 = jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0), axis=0, keepdims=True)
    return mean, m2


def tile_apply(x, a, d, *, activation):
    """y = silu(x * a + d): normalisation, affine and modulation folded into a and d."""
    z = x.astype(jnp.float32) * a + d
    return jax.nn.silu(z) if activation else z


def tile_grad_sums(valid, x, dy, a, d, r, mr, *, activation):
    """Per-channel sums of g and g * x_hat, x_hat = x * r + mr, over a tile's valid rows."""
    x = jnp.where(valid, x.astype(jnp.float32), 0.0)
    g = jnp.where(valid, _upstream(x, dy, a, d, activation), 0.0)
    return jnp.sum(g, axis=0, keepdims=True), jnp.sum(g * (x * r + mr), axis=0, keepdims=True)


def tile_grad_input(x, dy, a, d, p, q, o, *, activation):
    """dx = g * p + x * q + o: the group-norm input gradient folded per (sample, channel)."""
    x = x.astype(jnp.float32)
    return _upstream(x, dy, a, d, activation) * p + x * q + o


class Passes(Protocol):
    """What a kernel module supplies; x, dy are (B, S, C), coefficients (B, C) fp32.

    moments(x) -> (mean, m2, counts): per-(sample, tile, channel) `tile_moments`,
      each (B, T, C) fp32, and counts, the (T,) numpy array of rows per tile.
    apply(x, (a, d), activation) -> (B, S, C) in x's dtype: `tile_apply`.
    grad_sums(x, dy, (a, d, r, mr), activation) -> two (B, T, C) fp32: `tile_grad_sums`.
    grad_input(x, dy, (a, d, p, q, o), activation) -> (B, S, C) in x's dtype: `tile_grad_input`.
    """

    def moments(self, x): ...
    def apply(self, x, coefs, activation): ...
    def grad_sums(self, x, dy, coefs, activation): ...
    def grad_input(self, x, dy, coefs, activation): ...


def _per_channel(v, c):
    """(B, G) -> (B, C): each group's value repeated over its channels."""
    return jnp.repeat(v, c // v.shape[1], axis=1)


def _merge_moments(mean, m2, counts, num_groups, eps):
    """Chan's parallel merge of per-(tile, channel) moments into per-(sample, group) mean and rstd."""
    b, t, c = mean.shape
    n = jnp.asarray(counts, jnp.float32)[None, :, None, None]
    mean = mean.reshape(b, t, num_groups, c // num_groups)
    m2 = m2.reshape(b, t, num_groups, c // num_groups)
    total = float(np.sum(counts)) * (c // num_groups)
    group_mean = jnp.sum(n * mean, axis=(1, 3)) / total
    spread = jnp.sum(n * jnp.square(mean - group_mean[:, None, :, None]), axis=(1, 3))
    var = (jnp.sum(m2, axis=(1, 3)) + spread) / total
    return group_mean, jax.lax.rsqrt(var + eps)


def _forward_coefs(mean, rstd, gamma, beta, scale, shift):
    """(a, d) with silu(x * a + d) the whole forward; all (B, C) fp32."""
    c = gamma.shape[0]
    r = _per_channel(rstd, c)
    mod = 1.0 + scale.astype(jnp.float32)
    gamma = gamma.astype(jnp.float32)
    a = r * gamma * mod
    d = (beta.astype(jnp.float32) - _per_channel(mean, c) * r * gamma) * mod + shift.astype(jnp.float32)
    return a, d


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def two_pass_group_norm_silu(passes: Passes, num_groups, eps, activation, x, gamma, beta, scale, shift):
    """The fused op on x (B, S, C) with scale, shift (B, C) (zeros when unused), through `passes`."""
    y, _ = _fwd(passes, num_groups, eps, activation, x, gamma, beta, scale, shift)
    return y


def _fwd(passes, num_groups, eps, activation, x, gamma, beta, scale, shift):
    mean, m2, counts = passes.moments(x)
    group_mean, rstd = _merge_moments(mean, m2, counts, num_groups, eps)
    y = passes.apply(x, _forward_coefs(group_mean, rstd, gamma, beta, scale, shift), activation)
    return y, (x, gamma, beta, scale, shift, group_mean, rstd)


def _bwd(passes, num_groups, eps, activation, res, dy):
    """With k = gamma * (1 + scale) and per-(sample, channel) sums s1 = sum g, s2 = sum g * x_hat:
    dx = r * (k g - mean_group(k s1) - x_hat * mean_group(k s2)), and the parameter grads are
    sums of s1 and s2."""
    x, gamma, beta, scale, shift, group_mean, rstd = res
    c = x.shape[-1]
    count = x.shape[1] * (c // num_groups)
    a, d = _forward_coefs(group_mean, rstd, gamma, beta, scale, shift)
    r = _per_channel(rstd, c)
    mr = -_per_channel(group_mean, c) * r
    s1, s2 = (jnp.sum(s, axis=1) for s in passes.grad_sums(x, dy, (a, d, r, mr), activation))
    gamma32, beta32 = gamma.astype(jnp.float32), beta.astype(jnp.float32)
    mod = 1.0 + scale.astype(jnp.float32)
    k = gamma32 * mod

    def group_mean_of(v):
        return _per_channel(jnp.sum(v.reshape(v.shape[0], num_groups, -1), axis=2) / count, c)

    c1, c2 = group_mean_of(k * s1), group_mean_of(k * s2)
    dx = passes.grad_input(x, dy, (a, d, r * k, -r * r * c2, -r * (c1 + mr * c2)), activation)
    return (
        dx,
        jnp.sum(mod * s2, axis=0).astype(gamma.dtype),
        jnp.sum(mod * s1, axis=0).astype(beta.dtype),
        (gamma32 * s2 + beta32 * s1).astype(scale.dtype),
        s1.astype(shift.dtype),
    )


two_pass_group_norm_silu.defvjp(_fwd, _bwd)


def _vary_like(x, v):
    """v marked varying over x's shard_map axes, so the custom_vjp's grads for it type-check
    (autodiff then sums a replicated parameter's grad over them)."""
    missing = jax.typeof(x).manual_axis_type.varying - jax.typeof(v).manual_axis_type.varying
    return jax.lax.pcast(v, tuple(sorted(missing)), to="varying") if missing else v


def fused_group_norm_silu(passes, x, gamma, beta, *, num_groups, eps, scale, shift, activation):
    """Flattens x to (B, S, C), fills in missing modulation, and runs `two_pass_group_norm_silu`."""
    b, c = x.shape[0], x.shape[-1]
    scale = jnp.zeros((b, c), jnp.float32) if scale is None else scale
    shift = jnp.zeros((b, c), jnp.float32) if shift is None else shift
    params = (_vary_like(x, v) for v in (gamma, beta, scale, shift))
    y = two_pass_group_norm_silu(passes, num_groups, eps, activation, x.reshape(b, -1, c), *params)
    return y.reshape(x.shape)
