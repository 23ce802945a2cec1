"""Transformer feed-forward block."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vfm_jax.layers.common import Dtype, trunc_normal, with_axes


class Mlp(nn.Module):
    """Dense -> GELU (exact erf form, as torch.nn.GELU) -> dropout -> Dense."""

    hidden_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        width = x.shape[-1]
        h = nn.Dense(
            self.hidden_dim,
            dtype=self.dtype,
            kernel_init=with_axes(trunc_normal, ("embed", "mlp")),
            bias_init=with_axes(nn.initializers.zeros, ("mlp",)),
            name="fc1",
        )(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.gelu(h, approximate=False)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=with_axes(trunc_normal, ("mlp", "embed")),
            bias_init=with_axes(nn.initializers.zeros, ("embed",)),
            name="fc2",
        )(h)
