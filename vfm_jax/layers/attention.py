"""Multi-head self-attention; the product itself goes through `kernels.attention`."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels.attention import dot_product_attention
from vfm_jax.layers.common import Dtype, trunc_normal, with_axes


class SelfAttention(nn.Module):
    """Fused qkv projection with optional separate q and v biases and no k bias.

    This is the BEiT/VideoMAE/UMT parameterisation (`qkv.weight` without bias,
    `q_bias`, `v_bias`); with `qkv_bias='qkv'` all three get a bias (CLIP style).
    """

    num_heads: int
    qkv_bias: str = "qv"  # 'qv' | 'qkv' | 'none'
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, key_lengths: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        kernel = self.param(
            "qkv_kernel",
            with_axes(trunc_normal, ("embed", None, "heads", "head_dim")),
            (width, 3, self.num_heads, head_dim),
        )
        qkv = jnp.einsum("bld,dthk->tblhk", x.astype(self.dtype), kernel.astype(self.dtype))
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.qkv_bias in ("qv", "qkv"):
            bias_init = with_axes(nn.initializers.zeros, ("heads", "head_dim"))
            q = q + self.param("q_bias", bias_init, (self.num_heads, head_dim)).astype(self.dtype)
            v = v + self.param("v_bias", bias_init, (self.num_heads, head_dim)).astype(self.dtype)
            if self.qkv_bias == "qkv":
                k = k + self.param("k_bias", bias_init, (self.num_heads, head_dim)).astype(self.dtype)
        elif self.qkv_bias != "none":
            raise ValueError(f"qkv_bias must be 'qv', 'qkv' or 'none', got {self.qkv_bias!r}")
        out = dot_product_attention(q, k, v, key_lengths=key_lengths, impl=self.attention_impl)
        out_kernel = self.param(
            "out_kernel", with_axes(trunc_normal, ("heads", "head_dim", "embed")),
            (self.num_heads, head_dim, width),
        )
        out_bias = self.param("out_bias", with_axes(nn.initializers.zeros, ("embed",)), (width,))
        out = jnp.einsum("blhk,hkd->bld", out, out_kernel.astype(self.dtype))
        return out + out_bias.astype(self.dtype)
