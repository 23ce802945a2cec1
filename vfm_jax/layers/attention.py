"""Multi-head self- and cross-attention; the product itself goes through `kernels.attention`."""
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
    `causal` lets query i see keys j <= i only (CLIP's text tower).

    With `return_cls_attention` it also returns the head-averaged attention
    probabilities of query 0 over all keys, (B, Lk) in fp32 (UMT's teacher
    masks by the CLS->patch attention). Fused kernels never expose
    probabilities, so this one row is recomputed with an explicit fp32
    softmax; it costs O(Lk) per head next to the O(Lq * Lk) product.
    """

    num_heads: int
    qkv_bias: str = "qv"  # 'qv' | 'qkv' | 'none'
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32
    return_cls_attention: bool = False
    causal: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, key_lengths: jax.Array | None = None):
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
        out = dot_product_attention(
            q, k, v, key_lengths=key_lengths, causal=self.causal, impl=self.attention_impl
        )
        out_kernel = self.param(
            "out_kernel", with_axes(trunc_normal, ("heads", "head_dim", "embed")),
            (self.num_heads, head_dim, width),
        )
        out_bias = self.param("out_bias", with_axes(nn.initializers.zeros, ("embed",)), (width,))
        out = jnp.einsum("blhk,hkd->bld", out, out_kernel.astype(self.dtype))
        out = out + out_bias.astype(self.dtype)
        if not self.return_cls_attention:
            return out
        return out, _cls_attention(q[:, 0], k, key_lengths)


class CrossAttention(nn.Module):
    """Queries (B, Lq, D) attend to a context (B, Lk, D); q, k, v and output projections with biases.

    The layout of a packed `nn.MultiheadAttention` used as cross-attention
    (UniFormerV2's `Extractor`). `zero_init_out` starts the output
    projection at zero, so a fresh layer adds nothing to its residual.
    """

    num_heads: int
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32
    zero_init_out: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, *, key_lengths: jax.Array | None = None):
        width = x.shape[-1]
        if width % self.num_heads or context.shape[-1] != width:
            raise ValueError(
                f"query width {width} and context width {context.shape[-1]} must match and divide by {self.num_heads} heads"
            )
        head_dim = width // self.num_heads
        kernel_init = with_axes(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), ("embed", "heads", "head_dim"))
        bias_init = with_axes(nn.initializers.zeros, ("heads", "head_dim"))

        def project(name: str, source: jax.Array) -> jax.Array:
            kernel = self.param(f"{name}_kernel", kernel_init, (width, self.num_heads, head_dim))
            bias = self.param(f"{name}_bias", bias_init, (self.num_heads, head_dim))
            return jnp.einsum("bld,dhk->blhk", source.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(
                self.dtype
            )

        out = dot_product_attention(
            project("q", x), project("k", context), project("v", context), key_lengths=key_lengths,
            impl=self.attention_impl,
        )
        out_init = nn.initializers.zeros if self.zero_init_out else trunc_normal
        out_kernel = self.param(
            "out_kernel", with_axes(out_init, ("heads", "head_dim", "embed")), (self.num_heads, head_dim, width)
        )
        out_bias = self.param("out_bias", with_axes(nn.initializers.zeros, ("embed",)), (width,))
        return jnp.einsum("blhk,hkd->bld", out, out_kernel.astype(self.dtype)) + out_bias.astype(self.dtype)


def _cls_attention(q0: jax.Array, k: jax.Array, key_lengths: jax.Array | None) -> jax.Array:
    """(B, H, hd) query 0 and (B, Lk, H, hd) keys -> (B, Lk) softmax probabilities averaged over heads."""
    logits = jnp.einsum("bhk,blhk->bhl", q0.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits / jnp.sqrt(jnp.float32(q0.shape[-1]))
    if key_lengths is not None:
        valid = jnp.arange(k.shape[1])[None, :] < key_lengths[:, None]
        logits = jnp.where(valid[:, None, :], logits, -jnp.inf)
    return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)
