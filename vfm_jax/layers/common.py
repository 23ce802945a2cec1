"""Initialisers with logical axis names, norms and stochastic depth."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


def with_axes(init, axes: Sequence[str | None]):
    """Attach logical axis names (see vfm_jax.sharding) to a param initialiser."""
    return nn.with_logical_partitioning(init, tuple(axes))


def layer_norm(eps: float = 1e-6, name: str | None = None, axis: str = "embed") -> nn.LayerNorm:
    """LayerNorm computed in fp32 with scale and bias named by the logical `axis`."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=jnp.float32,
        scale_init=with_axes(nn.initializers.ones, (axis,)),
        bias_init=with_axes(nn.initializers.zeros, (axis,)),
        name=name,
    )


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x|| over the last axis in fp32, without an epsilon (as CLIP and UMT divide)."""
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (rng stream `droppath`)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(self.rate, float) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("droppath"), keep, shape)
        # Cast back: a traced (fp32) rate would otherwise promote bf16 x and change the scan carry's dtype.
        return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)
