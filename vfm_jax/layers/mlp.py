"""Transformer feed-forward block."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vfm_jax.layers.common import Dtype, trunc_normal, with_axes


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x), the GELU approximation OpenAI CLIP was trained with."""
    return x * jax.nn.sigmoid(1.702 * x)


# `activation` names: 'gelu' is the exact erf form of torch.nn.GELU.
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
}


class Mlp(nn.Module):
    """Dense -> activation -> dropout -> Dense; `zero_init_out` starts the second Dense at zero."""

    hidden_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    activation: str = "gelu"
    zero_init_out: bool = False

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
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not in {sorted(ACTIVATIONS)}")
        h = ACTIVATIONS[self.activation](h)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.zeros if self.zero_init_out else trunc_normal, ("mlp", "embed")),
            bias_init=with_axes(nn.initializers.zeros, ("embed",)),
            name="fc2",
        )(h)
