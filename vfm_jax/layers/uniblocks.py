"""UniFormerV2's global UniBlocks, shared by UniFormerV2 and InternVideo-MM.

A learnable video query (`temporal_cls_token`) is refined by one global block
per chosen backbone layer, in order: the block adds a depthwise 3x3x3 conv
position encoding (DPE) to a copy of that layer's patch tokens (the backbone
stream itself is unchanged), then the query cross-attends to all T*(1+P)
tokens of the copy, frame class tokens included, and goes through an MLP
(the official `Extractor`; its output projection and second MLP layer start
at zero, so a fresh block passes the query through). The video feature mixes
the query with the mean frame class token of the last backbone layer,
(1 - sigmoid(balance)) * query + sigmoid(balance) * mean_t(CLS_t).

Source: UniFormerV2 `uniformerv2_model.py` and InternVideo1
`clip_utils/utils/clip_vit_only_global.py` (`Transformer.forward`, `Extractor`).

Dropped patches (Harvest post-pretraining, which the official code never
implemented): with `kept` (B, T, K) the tokens hold K patches per frame; the
DPE sees them scattered into their grid positions with zeros elsewhere (a
dropped patch contributes nothing to its neighbours' encoding) and the query
attends to the kept tokens only.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.layers.attention import CrossAttention
from vfm_jax.layers.common import Dtype, DropPath, layer_norm, with_axes
from vfm_jax.layers.mlp import Mlp


class DepthwiseConv3D(nn.Module):
    """Depthwise 3x3x3 convolution with bias and zero padding, (B, T, H, W, C) -> same; nn.Conv's param layout.

    Written as 27 shifted multiply-adds: the same result as a grouped
    `nn.Conv(feature_group_count=C)`, which XLA's CPU backend runs about 7x
    slower (fwd + bwd at UniFormerV2 shapes); on GPU/TPU XLA fuses either.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        kernel = self.param(
            "kernel",
            with_axes(nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), (None, None, None, None, "embed")),
            (3, 3, 3, 1, c),
        ).astype(self.dtype)
        bias = self.param("bias", with_axes(nn.initializers.zeros, ("embed",)), (c,)).astype(self.dtype)
        padded = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
        out = bias
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    out = out + padded[:, i:i + t, j:j + h, k:k + w] * kernel[i, j, k, 0]
        return out


class GlobalUniBlock(nn.Module):
    """DPE + Extractor: (query (B, 1, D), tokens (B, T, 1+K, D)) -> the new query (B, 1, D).

    `grid` is the (gh, gw) patch grid; without `kept`, K = gh * gw and the
    tokens are in raster order. Param names: `dpe` (depthwise Conv3d with
    bias), `ln_1` (query), `ln_3` (tokens), `attn`, `ln_2`, `mlp`.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    mlp_dropout: float = 0.0
    drop_path: float = 0.0
    ln_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, query: jax.Array, tokens: jax.Array, *, grid: tuple[int, int], kept: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        b, t, length, width = tokens.shape
        gh, gw = grid
        patches = tokens[:, :, 1:]
        if kept is None:
            if length - 1 != gh * gw:
                raise ValueError(f"{length - 1} patch tokens per frame do not fill a {gh}x{gw} grid")
            full = patches
        else:
            rows = jnp.arange(b)[:, None, None], jnp.arange(t)[None, :, None], kept
            full = jnp.zeros((b, t, gh * gw, width), patches.dtype).at[rows].set(patches)
        dpe = DepthwiseConv3D(self.dtype, name="dpe")(full.reshape(b, t, gh, gw, width)).reshape(b, t, gh * gw, width)
        if kept is not None:
            dpe = jnp.take_along_axis(dpe, kept[..., None], axis=2)
        context = jnp.concatenate([tokens[:, :, :1], patches + dpe.astype(patches.dtype)], axis=2)
        context = context.reshape(b, t * length, width)
        context = nn.with_logical_constraint(context, ("batch", "length", "embed"))

        h = CrossAttention(self.num_heads, self.attention_impl, self.dtype, zero_init_out=True, name="attn")(
            layer_norm(self.ln_eps, name="ln_1")(query).astype(self.dtype),
            layer_norm(self.ln_eps, name="ln_3")(context).astype(self.dtype),
        )
        query = query + DropPath(self.drop_path)(h, deterministic=deterministic)
        h = Mlp(
            int(round(self.mlp_ratio * width)), self.mlp_dropout, self.dtype, "quick_gelu",
            zero_init_out=True, name="mlp",
        )(layer_norm(self.ln_eps, name="ln_2")(query).astype(self.dtype), deterministic=deterministic)
        return query + DropPath(self.drop_path)(h, deterministic=deterministic)


class GlobalUniBlocks(nn.Module):
    """The global half: hidden states of the chosen backbone layers -> the fused video feature (B, D).

    `hidden` (K, B, T, 1+P, D) holds the K chosen layers' outputs in order,
    `frame_cls` (B, T, D) the last backbone layer's class tokens. Param
    names match the official `transformer.{temporal_cls_token, dpe.j, dec.j,
    balance}` as `temporal_cls_token`, `block_{j}` (dpe + extractor), `balance`.
    `mlp_dropout` is one rate per block (the official list); drop path
    grows linearly from 0 to `drop_path_rate` over the blocks. Intermediate
    `query` (B, 1, D): the query after the last block, before the mix.
    `fuse=False` (UniFormerV2's FROZEN models) has no `balance`: the output
    is the query alone.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    mlp_dropout: Sequence[float] = ()
    drop_path_rate: float = 0.0
    fuse: bool = True
    ln_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, hidden: jax.Array, frame_cls: jax.Array, *, grid: tuple[int, int], kept: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        count, b, _, _, width = hidden.shape
        dropout = tuple(self.mlp_dropout) or (0.0,) * count
        if len(dropout) != count:
            raise ValueError(f"mlp_dropout has {len(dropout)} rates for {count} global blocks")
        rates = np.linspace(0.0, self.drop_path_rate, count)
        query = self.param("temporal_cls_token", with_axes(nn.initializers.zeros, ("embed",)), (width,))
        query = jnp.broadcast_to(query.astype(hidden.dtype), (b, 1, width))
        for j in range(count):
            query = GlobalUniBlock(
                self.num_heads, self.mlp_ratio, dropout[j], float(rates[j]), self.ln_eps, self.attention_impl,
                self.dtype, name=f"block_{j}",
            )(query, hidden[j], grid=grid, kept=kept, deterministic=deterministic)
        self.sow("intermediates", "query", query)
        if not self.fuse:
            return query[:, 0].astype(jnp.float32)
        balance = self.param("balance", with_axes(nn.initializers.zeros, ("embed",)), (width,))
        weight = jax.nn.sigmoid(balance.astype(jnp.float32))
        return (1 - weight) * query[:, 0].astype(jnp.float32) + weight * frame_cls.astype(jnp.float32).mean(axis=1)
