"""The OpenAI CLIP towers: images (and, frame by frame, videos) and text.

Layout of OpenAI's `VisionTransformer`: a bias-free patch conv (`conv1`), a
learned class token, a learned ((res/p)^2 + 1, D) position table, `ln_pre`,
pre-LN blocks with QuickGELU MLPs and q/k/v biases (LayerNorm eps 1e-5),
`ln_post`, then a bias-free projection `proj` (D, out). UMT uses it as its
teacher (`return_layers`, `return_attention`); ViCLIP, UniFormerV2 and
Tip-Adapter start from the same weights.

The text tower (OpenAI `CLIP.encode_text`) has the same blocks behind a
causal mask, a token table and a learned (context, D) position table, then
`ln_final` and a bias-free `text_projection` (D, out) of the EOT token.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vfm_jax.layers.common import Dtype, l2_normalize, layer_norm, with_axes
from vfm_jax.layers.transformer import Encoder


class CLIPVision(nn.Module):
    """(N, H, W, 3) images or (B, T, H, W, 3) videos -> dict of outputs.

    Outputs keep the leading dims of the input (`...` = (N,) or (B, T)):
    - `tokens` (..., 1+P, D): last block's output (HF `last_hidden_state`);
    - `pooled` (..., D): `ln_post` of the class token (HF `pooler_output`);
    - `embedding` (..., out): `pooled @ proj` (CLIP's image feature), if `output_dim`.
    With `return_layers` (block indices; `layers.transformer.last_layers` gives UMT's):
    - `hidden_states` (K, ..., 1+P, D): those blocks' outputs;
    - `layer_features`: their patch tokens -> `ln_post` -> `@ proj` -> L2
      normalised, (K, N, P, out) for images and (K, B, T*P, out) for videos
      (token index t*P + patch), the UMT teacher targets.
    With `return_attention`:
    - `cls_attention` (..., P): last block's attention of the class token to
      the patches, averaged over heads; the softmax runs over all 1+P keys and
      the patch columns are not renormalised (UMT's `attn[:, 0, 1:]`).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    output_dim: int | None = 512
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    return_layers: tuple[int, ...] = ()
    return_attention: bool = False
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if x.ndim not in (4, 5):
            raise ValueError(f"expected images (N, H, W, C) or video (B, T, H, W, C), got shape {x.shape}")
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"CLIPVision(image_size={self.image_size}) got {x.shape[1:3]} frames")
        grid = self.image_size // self.patch_size
        x = nn.Conv(
            self.width,
            kernel_size=(self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
            name="conv1",
        )(x.astype(self.dtype))
        x = x.reshape(x.shape[0], grid * grid, self.width)
        init = nn.initializers.normal(self.width ** -0.5)
        cls = self.param("class_embedding", with_axes(init, ("embed",)), (self.width,))
        pos = self.param(
            "positional_embedding", with_axes(init, ("length", "embed")), (grid * grid + 1, self.width)
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width)), x], axis=1)
        x = layer_norm(self.ln_eps, name="ln_pre")(x + pos.astype(self.dtype)).astype(self.dtype)
        x = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias="qkv",
            ln_eps=self.ln_eps,
            activation="quick_gelu",
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            return_layers=tuple(self.return_layers),
            return_cls_attention=self.return_attention,
            dtype=self.dtype,
            name="encoder",
        )(x)
        x, aux = x if (self.return_layers or self.return_attention) else (x, {})
        ln_post = layer_norm(self.ln_eps, name="ln_post")
        proj = None
        if self.output_dim:
            proj = self.param(
                "proj", with_axes(init, ("embed", "vocab")), (self.width, self.output_dim)
            ).astype(jnp.float32)
        pooled = ln_post(x[:, 0])
        out = {"tokens": x.reshape(*lead, *x.shape[1:]), "pooled": pooled.reshape(*lead, -1)}
        if proj is not None:
            out["embedding"] = (pooled @ proj).reshape(*lead, -1)
        if "hidden" in aux:
            hidden = aux["hidden"]
            out["hidden_states"] = hidden.reshape(hidden.shape[0], *lead, *hidden.shape[2:])
            feats = ln_post(hidden[:, :, 1:])
            feats = l2_normalize(feats @ proj if proj is not None else feats)
            # (K, B*T, P, out) -> (K, B, T*P, out) for videos; unchanged for images.
            out["layer_features"] = feats.reshape(feats.shape[0], lead[0], -1, feats.shape[-1])
        if "cls_attention" in aux:
            out["cls_attention"] = aux["cls_attention"][:, 1:].reshape(*lead, -1)
        return out


class CLIPText(nn.Module):
    """(B, L) token ids, L <= `context_length` -> dict of outputs.

    - `tokens` (B, L, D): `ln_final` of the last block's output (HF `last_hidden_state`);
    - `pooled` (B, D): `tokens` at the EOT position;
    - `embedding` (B, out): `pooled @ text_projection` (CLIP's text feature), if `output_dim`.

    The EOT position is `argmax(ids)`, as OpenAI pools: its tokenizer gives
    EOT the largest id (49407). Pass `eot_positions` (B,) for vocabularies
    where that does not hold. Padding after EOT needs no mask: the causal mask
    already hides it from every position up to EOT.
    """

    vocab_size: int = 49408
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    context_length: int = 77
    output_dim: int | None = 512
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, *, eot_positions: jax.Array | None = None) -> dict[str, jax.Array]:
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"expected ids (B, L) with L <= {self.context_length}, got shape {ids.shape}")
        tokens = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=with_axes(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
        )(ids)
        pos = self.param(
            "positional_embedding", with_axes(nn.initializers.normal(0.01), ("length", "embed")),
            (self.context_length, self.width),
        )
        x = tokens + pos[: ids.shape[1]].astype(self.dtype)
        x = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias="qkv",
            ln_eps=self.ln_eps,
            activation="quick_gelu",
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            causal=True,
            dtype=self.dtype,
            name="encoder",
        )(x)
        x = layer_norm(self.ln_eps, name="ln_final")(x)
        if eot_positions is None:
            eot_positions = jnp.argmax(ids, axis=-1)
        pooled = jnp.take_along_axis(x, eot_positions[:, None, None], axis=1)[:, 0]
        out = {"tokens": x, "pooled": pooled}
        if self.output_dim:
            proj = self.param(
                "text_projection", with_axes(nn.initializers.normal(self.width ** -0.5), ("embed", "vocab")),
                (self.width, self.output_dim),
            )
            out["embedding"] = pooled @ proj.astype(jnp.float32)
        return out
