"""The OpenAI CLIP towers: images (and, frame by frame, videos) and text.

Layout of OpenAI's `VisionTransformer`: a bias-free patch conv (`conv1`), a
learned class token, a learned ((res/p)^2 + 1, D) position table, `ln_pre`,
pre-LN blocks with QuickGELU MLPs (`activation`) and q/k/v biases
(LayerNorm eps 1e-5), `ln_post`, then a bias-free projection `proj`
(D, out). UMT uses it as its teacher (`return_layers`,
`return_attention`); ViCLIP, UniFormerV2 and Tip-Adapter start from the
same weights.

The text tower (OpenAI `CLIP.encode_text`) has the same blocks behind a
causal mask, a token table and a learned (context, D) position table, then
`ln_final` and a bias-free `text_projection` (D, out) of the EOT token.

`CLIP` joins both towers with the contrastive `logit_scale`: OpenAI's
`CLIP` and OpenCLIP's standard ViT models. The MLP activation is not
visible in the weights: OpenAI (and DFN, MetaCLIP) trained with QuickGELU,
the default here; OpenCLIP's LAION and DataComp models use exact GELU
(`activation='gelu'`; OpenCLIP model names without `-quickgelu`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vfm_jax.layers.common import Dtype, l2_normalize, layer_norm, with_axes
from vfm_jax.layers.embeddings import clip_patch_conv, clip_token_tables
from vfm_jax.layers.transformer import Encoder


def tower_arguments(model: nn.Module, **extra) -> dict:
    """What a two-tower model (`vision`, `text` size mappings) passes to both towers; the towers may not set it.

    The embedding size (`output_dim` = `model.embed_dim`) and the execution
    fields (`attention_impl`, `scan_layers`, `remat_policy`, `dtype`), plus
    `extra` (e.g. CLIP's `activation`).
    """
    shared = dict(
        output_dim=model.embed_dim, attention_impl=model.attention_impl, scan_layers=model.scan_layers,
        remat_policy=model.remat_policy, dtype=model.dtype, **extra,
    )
    name = type(model).__name__
    for tower in ("vision", "text"):
        clash = sorted(set(getattr(model, tower)) & set(shared))
        if clash:
            raise ValueError(f"{name}.{tower} sets {clash}; set them on {name} (output_dim is embed_dim)")
    return shared


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
    activation: str = "quick_gelu"
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
        x = clip_patch_conv(self.width, self.patch_size, self.dtype)(x.astype(self.dtype))
        x = x.reshape(x.shape[0], grid * grid, self.width)
        cls, pos = clip_token_tables(self, self.width, self.image_size, self.patch_size, (grid, grid))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width)), x], axis=1)
        x = layer_norm(self.ln_eps, name="ln_pre")(x + pos.astype(self.dtype)).astype(self.dtype)
        x = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias="qkv",
            ln_eps=self.ln_eps,
            activation=self.activation,
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
                "proj", with_axes(nn.initializers.normal(self.width ** -0.5), ("embed", "vocab")), (self.width, self.output_dim)
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

    `token_mask` (B, L) bool with `mask_embedding` (D,) replaces the token
    embeddings of the masked positions before the position table is added
    (InternVideo-MM / Harvest text masking at the embedding level).
    """

    vocab_size: int = 49408
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    context_length: int = 77
    output_dim: int | None = 512
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    activation: str = "quick_gelu"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, ids: jax.Array, *, eot_positions: jax.Array | None = None, token_mask: jax.Array | None = None,
        mask_embedding: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"expected ids (B, L) with L <= {self.context_length}, got shape {ids.shape}")
        if (token_mask is None) != (mask_embedding is None):
            raise ValueError("token_mask and mask_embedding go together")
        tokens = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=with_axes(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
        )(ids)
        if token_mask is not None:
            tokens = jnp.where(token_mask[..., None], mask_embedding.astype(tokens.dtype), tokens)
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
            activation=self.activation,
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


class CLIP(nn.Module):
    """The image and text towers of an image CLIP with the contrastive `logit_scale`.

    `vision` holds CLIPVision's size arguments, `text` CLIPText's; the
    embedding size (`embed_dim`), the MLP `activation` and the execution
    fields are set here for both. Entry points (`apply(..., method=...)`):
    - `encode_image(images)`: L2-normalised (N, embed_dim); videos
      (B, T, H, W, 3) give (B, T, embed_dim), one embedding per frame.
    - `encode_text(ids, eot_positions=None)`: L2-normalised (B, embed_dim).
    - `temperature()`: 1 / exp(logit_scale), so that logits are similarities /
      temperature as for ViCLIP; OpenAI's `logits_per_image` is
      `exp(logit_scale) * image @ text.T`. Training clamps `logit_scale` to
      <= ln(100) (OpenAI's released models sit at that bound).
    """

    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    embed_dim: int = 512
    activation: str = "quick_gelu"
    logit_scale_init: float = math.log(1 / 0.07)
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    def setup(self):
        shared = tower_arguments(self, activation=self.activation)
        self.vision_encoder = CLIPVision(**self.vision, **shared)
        self.text_encoder = CLIPText(**self.text, **shared)
        self.logit_scale = self.param(
            "logit_scale", with_axes(nn.initializers.constant(self.logit_scale_init), ()), ()
        )

    def encode_image(self, images: jax.Array) -> jax.Array:
        return l2_normalize(self.vision_encoder(images)["embedding"])

    def encode_text(self, ids: jax.Array, *, eot_positions: jax.Array | None = None) -> jax.Array:
        return l2_normalize(self.text_encoder(ids, eot_positions=eot_positions)["embedding"])

    def temperature(self) -> jax.Array:
        return jnp.exp(-self.logit_scale)

    def __call__(self, images: jax.Array, text_ids: jax.Array) -> dict[str, jax.Array]:
        return {
            "image_embedding": self.encode_image(images),
            "text_embedding": self.encode_text(text_ids),
            "temperature": self.temperature(),
        }
