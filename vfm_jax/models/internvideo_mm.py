"""InternVideo-MM (InternVideo v1, arXiv 2212.03191): a frame-wise CLIP ViT with UniFormerV2 global blocks.

The video tower is InternVideo1's `clip_vit_only_global.VisionTransformer`:
CLIP's patch conv, class token and 2-D position table per frame, `ln_pre`,
and CLIP blocks that attend within each frame (no temporal attention, no
temporal table). After each backbone layer in `global_layers` a global
UniBlock refines a learned video query over all frames' tokens
(`layers.uniblocks`); the query mixes with the mean frame class token of the
last layer (`balance`), then `ln_post` and `proj` (`visual_ln_post`,
`visual_proj` in the release). The text tower is CLIP's (context 77) with a
learned `text_mask_embedding` for masked text. Inputs use CLIP mean/std.

Harvest post-pretraining drops patches per frame (`drop_ratio`, training
only): every frame keeps the same number of patches, at its own random
positions (the official `mask_visual` draw, which the released model
ignored); the backbone sees fewer tokens, the global blocks see the kept ones.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vfm_jax.layers.attention import CrossAttention, SelfAttention
from vfm_jax.layers.common import Dtype, l2_normalize, layer_norm, trunc_normal, with_axes
from vfm_jax.layers.embeddings import clip_patch_conv, clip_token_tables
from vfm_jax.layers.mlp import Mlp
from vfm_jax.layers.transformer import Encoder
from vfm_jax.layers.uniblocks import GlobalUniBlocks
from vfm_jax.models.clip import CLIPText, tower_arguments


class InternVideoMMVision(nn.Module):
    """(B, T, H, W, 3) video -> dict of outputs; images are T = 1.

    - `tokens` (B, T, 1 + K, D): the last backbone layer's tokens (class token
      first, no LayerNorm; the official `return_all_feats` output), K = P
      patches per frame, or P - int(drop_ratio * P) in training.
    - `features` (B, D): the balance mix of the global query and the mean frame class token.
    - `embedding` (B, out): `ln_post(features) @ proj`, not normalised.
    Intermediates: `ln_pre_out` (B*T, 1 + K, D), and in training with a drop
    `kept_indices` (B, T, K), the kept patch positions in ascending order.

    `global_layers` are 0-based backbone block indices (the official
    `return_list`: [8..11] for B/16, [20..23] for L/14); the global blocks use
    the backbone width, `global_heads` heads (default: `num_heads`), one
    `global_mlp_dropout` rate per block, and drop path up to
    `global_drop_path_rate`; `drop_path_rate` is the backbone's.
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    output_dim: int = 512
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    global_layers: Sequence[int] = (8, 9, 10, 11)
    global_heads: int | None = None
    global_mlp_ratio: float = 4.0
    global_mlp_dropout: Sequence[float] = ()
    global_drop_path_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_ratio: float = 0.0
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if video.ndim != 5:
            raise ValueError(f"expected video (B, T, H, W, C) (images as T = 1), got shape {video.shape}")
        if not 0 <= self.drop_ratio < 1:
            raise ValueError(f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if not self.global_layers:
            raise ValueError("global_layers is empty: the video feature needs at least one global block")
        b, t, h, w, c = video.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"frames {h}x{w} are not divisible by patch_size {p}")
        grid = (h // p, w // p)
        n = grid[0] * grid[1]
        x = clip_patch_conv(self.width, p, self.dtype)(video.reshape(b * t, h, w, c).astype(self.dtype))
        x = x.reshape(b * t, n, self.width)

        cls, pos = clip_token_tables(self, self.width, self.image_size, p, grid)
        x = x + pos[1:].astype(self.dtype)

        kept = None
        if train and self.drop_ratio > 0:
            dropped = int(self.drop_ratio * n)
            noise = jax.random.uniform(self.make_rng("masking"), (b * t, n))
            kept = jnp.sort(jnp.argsort(noise, axis=-1)[:, dropped:], axis=-1)
            x = jnp.take_along_axis(x, kept[..., None], axis=1)
            kept = kept.reshape(b, t, -1)
            self.sow("intermediates", "kept_indices", kept)

        cls = jnp.broadcast_to((cls + pos[0]).astype(self.dtype), (b * t, 1, self.width))
        x = layer_norm(self.ln_eps, name="ln_pre")(jnp.concatenate([cls, x], axis=1))
        self.sow("intermediates", "ln_pre_out", x)
        x, aux = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias="qkv",
            drop_path_rate=self.drop_path_rate,
            ln_eps=self.ln_eps,
            activation="quick_gelu",
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            return_layers=tuple(self.global_layers),
            deterministic=not train,
            dtype=self.dtype,
            name="encoder",
        )(x.astype(self.dtype))
        tokens = x.reshape(b, t, *x.shape[1:])
        hidden = aux["hidden"].reshape(len(self.global_layers), b, t, *x.shape[1:])
        features = GlobalUniBlocks(
            num_heads=self.global_heads or self.num_heads,
            mlp_ratio=self.global_mlp_ratio,
            mlp_dropout=tuple(self.global_mlp_dropout),
            drop_path_rate=self.global_drop_path_rate,
            ln_eps=self.ln_eps,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            name="global_blocks",
        )(hidden, tokens[:, :, 0], grid=grid, kept=kept, deterministic=not train)
        pooled = layer_norm(self.ln_eps, name="ln_post")(features)
        proj = self.param("proj", with_axes(nn.initializers.normal(self.width ** -0.5), ("embed", "vocab")), (self.width, self.output_dim))
        return {"tokens": tokens, "features": features, "embedding": pooled @ proj.astype(jnp.float32)}


class MLMDecoder(nn.Module):
    """Harvest's light masked-language decoder: text tokens attend to each other and to the video tokens.

    The released code calls a `text_decoder` it never defines (reference
    section 3), so this design is ours: `depth` pre-LN blocks of
    bidirectional self-attention over the caption (padding masked by
    `text_lengths`), cross-attention to the video tokens (layer-normalised,
    projected to the text width) and a QuickGELU MLP, then BERT's prediction
    transform (Dense, GELU, LayerNorm); the vocabulary logits are taken by
    the caller with the tied token table. (B, L, Dt), (B, Lv, Dv) -> (B, L, Dt).
    """

    depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text: jax.Array, video: jax.Array, text_lengths: jax.Array) -> jax.Array:
        width = text.shape[-1]
        video = layer_norm(self.ln_eps, name="video_norm")(video)
        video = nn.Dense(
            width, dtype=self.dtype, kernel_init=with_axes(trunc_normal, ("embed", "mlp")),
            bias_init=with_axes(nn.initializers.zeros, ("mlp",)), name="video_proj",
        )(video.astype(self.dtype))
        x = text
        for i in range(self.depth):
            h = SelfAttention(self.num_heads, "qkv", self.attention_impl, self.dtype, name=f"self_attn_{i}")(
                layer_norm(self.ln_eps, name=f"norm1_{i}")(x).astype(self.dtype), key_lengths=text_lengths
            )
            x = x + h
            h = CrossAttention(self.num_heads, self.attention_impl, self.dtype, name=f"cross_attn_{i}")(
                layer_norm(self.ln_eps, name=f"norm2_{i}")(x).astype(self.dtype), video
            )
            x = x + h
            h = Mlp(int(width * self.mlp_ratio), 0.0, self.dtype, "quick_gelu", name=f"mlp_{i}")(
                layer_norm(self.ln_eps, name=f"norm3_{i}")(x).astype(self.dtype), deterministic=True
            )
            x = x + h
        x = nn.Dense(
            width, dtype=self.dtype, kernel_init=with_axes(trunc_normal, ("embed", "mlp")),
            bias_init=with_axes(nn.initializers.zeros, ("mlp",)), name="transform",
        )(layer_norm(self.ln_eps, name="norm_out")(x).astype(self.dtype))
        return layer_norm(self.ln_eps, name="transform_norm")(nn.gelu(x, approximate=False))


class InternVideoMM(nn.Module):
    """The video and text towers, the contrastive `logit_scale` and the `text_mask_embedding`.

    `vision` holds InternVideoMMVision's size arguments, `text` CLIPText's;
    `embed_dim` and the execution fields are set here for both. Entry points
    (`apply(..., method=...)`):
    - `encode_video(video, train=...)`: L2-normalised (B, embed_dim); in
      training with the per-frame patch drop (rng `masking`) and dropout /
      drop path (`dropout`, `droppath`) where configured.
    - `encode_text(ids, eot_positions=None, token_mask=None)`: L2-normalised
      (B, embed_dim); `token_mask` (B, L) replaces those tokens' embeddings
      by `text_mask_embedding`.
    - `temperature()`: 1 / exp(logit_scale), with exp(logit_scale) capped at
      `logit_scale_max` (CLIP's cap of 100), read as ViCLIP reads `temp`.
    - `harvest(video, ids, token_mask, text_lengths, mlm_positions, train=...)`:
      one pass of both towers on the dropped video and the masked caption,
      returning both embeddings and, with `mlm_decoder_depth` > 0, the
      vocabulary logits (B, M, vocab) at `mlm_positions` (B, M) from
      `MLMDecoder` and the token table (tied, plus a bias).
    """

    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    embed_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    mlm_decoder_depth: int = 0
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    def setup(self):
        shared = tower_arguments(self)
        self.vision_encoder = InternVideoMMVision(**self.vision, **shared)
        self.text_encoder = CLIPText(**self.text, **shared)
        text_width = self.text.get("width", CLIPText.width)
        self.text_mask_embedding = self.param(
            "text_mask_embedding", with_axes(nn.initializers.normal(0.02), ("embed",)), (text_width,)
        )
        self.logit_scale = self.param(
            "logit_scale", with_axes(nn.initializers.constant(self.logit_scale_init), ()), ()
        )
        if self.mlm_decoder_depth:
            self.mlm_decoder = MLMDecoder(
                depth=self.mlm_decoder_depth, num_heads=self.text.get("num_heads", CLIPText.num_heads),
                attention_impl=self.attention_impl, dtype=self.dtype,
            )
            vocab = self.text.get("vocab_size", CLIPText.vocab_size)
            self.mlm_bias = self.param("mlm_bias", with_axes(nn.initializers.zeros, ("vocab",)), (vocab,))

    def encode_video(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        return l2_normalize(self.vision_encoder(video, train=train)["embedding"])

    def encode_text(
        self, ids: jax.Array, *, eot_positions: jax.Array | None = None, token_mask: jax.Array | None = None
    ) -> jax.Array:
        mask_embedding = None if token_mask is None else self.text_mask_embedding
        out = self.text_encoder(ids, eot_positions=eot_positions, token_mask=token_mask, mask_embedding=mask_embedding)
        return l2_normalize(out["embedding"])

    def temperature(self) -> jax.Array:
        return 1.0 / jnp.minimum(jnp.exp(self.logit_scale), self.logit_scale_max)

    def harvest(
        self, video: jax.Array, ids: jax.Array, token_mask: jax.Array, text_lengths: jax.Array,
        mlm_positions: jax.Array | None = None, *, train: bool = True,
    ) -> dict[str, jax.Array]:
        vision = self.vision_encoder(video, train=train)
        text = self.text_encoder(
            ids, eot_positions=text_lengths - 1, token_mask=token_mask, mask_embedding=self.text_mask_embedding
        )
        out = {"video_embedding": l2_normalize(vision["embedding"]), "text_embedding": l2_normalize(text["embedding"])}
        if self.mlm_decoder_depth and mlm_positions is not None:
            b, t, length, width = vision["tokens"].shape
            hidden = self.mlm_decoder(text["tokens"], vision["tokens"].reshape(b, t * length, width), text_lengths)
            hidden = jnp.take_along_axis(hidden, mlm_positions[..., None], axis=1)
            table = nn.unbox(self.text_encoder.variables["params"]["token_embedding"]["embedding"])
            logits = jnp.einsum("bmd,vd->bmv", hidden.astype(jnp.float32), table.astype(jnp.float32))
            out["mlm_logits"] = logits + self.mlm_bias.astype(jnp.float32)
        return out

    def __call__(self, video: jax.Array, text_ids: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        return {
            "video_embedding": self.encode_video(video, train=train),
            "text_embedding": self.encode_text(text_ids),
            "temperature": self.temperature(),
        }
