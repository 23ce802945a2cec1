"""UMT models: the stage-1 student (a video ViT over the unmasked tokens only, plus
CLIP-aligning heads) and the stage-2 video-text model built around it.

unmasked_teacher `modeling_pretrain_umt.py`: tubelet embedding + the fixed
sinusoid table, then only the visible tokens (mask False) enter the blocks;
the outputs of the last K blocks (every `clip_return_interval`) go through
the encoder's one final `norm`, get the sinusoid table at their positions
added again (`clip_pos_embed`), and block k's goes through its own head
`clip_decoder.k` = Linear(D -> out) -> LayerNorm -> L2 normalisation. The
heads' targets are the CLIP teacher's normalised features of the same layers
and positions (`vfm_jax.tasks.umt`).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from data.masking import gather_visible
from vfm_jax.layers.common import Dtype, l2_normalize, layer_norm, with_axes
from vfm_jax.layers.embeddings import TubeletEmbed, sinusoid_table
from vfm_jax.layers.transformer import Encoder, last_layers
from vfm_jax.models.bert import BertTextEncoder


class ClipDecoder(nn.Module):
    """(..., D) -> Linear -> LayerNorm -> L2 normalised (..., out): UMT's `Linear_Decoder`."""

    output_dim: int
    ln_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(
            self.output_dim,
            dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.xavier_uniform(), ("embed", "vocab")),
            bias_init=with_axes(nn.initializers.zeros, ("vocab",)),
            name="head",
        )(x)
        return l2_normalize(layer_norm(self.ln_eps, name="norm", axis="vocab")(x))


class UMTStudent(nn.Module):
    """(B, T, H, W, 3) video and (B, L) bool mask (True = masked) -> dict of outputs.

    L = T/tubelet * (H/p) * (W/p), index t*HW + h*W + w; every sample must keep
    the same number of tokens, `num_visible` (static; read from the mask when
    it is concrete). `mask=None` keeps every token (evaluation, retrieval
    fine-tuning). Outputs, K = `clip_return_layers`, N_vis = num_visible:
    - `tokens` (B, N_vis, D): `norm` of the last block's output;
    - when K > 0, `encoder_features` (K, B, N_vis, D): `norm` of the returned
      blocks' outputs, in block order (the official `x_clip_vis`), and
      `features` (K, B, N_vis, out): the aligned, L2-normalised head outputs.
    The sinusoid table is sown as intermediates `pos_embed` (1, L, D).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 1
    clip_output_dim: int = 512
    clip_return_layers: int = 6
    clip_return_interval: int = 1
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, video: jax.Array, mask: jax.Array | None, *, num_visible: int | None = None, train: bool = False
    ) -> dict[str, jax.Array]:
        if video.ndim != 5:
            raise ValueError(f"expected video (B, T, H, W, C), got shape {video.shape}")
        x = TubeletEmbed(
            self.width, self.patch_size, self.tubelet_size, self.dtype, name="patch_embed"
        )(video)
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match the {x.shape[:2]} (B, L) tokens")
        pos = jnp.asarray(sinusoid_table(x.shape[1], self.width))[None]
        self.sow("intermediates", "pos_embed", pos)
        x = x + pos.astype(self.dtype)
        if mask is not None:
            x = gather_visible(x, mask, num_visible)
        out = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias="qv",
            dropout=self.dropout,
            drop_path_rate=self.drop_path_rate,
            ln_eps=self.ln_eps,
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            return_layers=last_layers(self.depth, self.clip_return_layers, self.clip_return_interval),
            deterministic=not train,
            dtype=self.dtype,
            name="encoder",
        )(x)
        norm = layer_norm(self.ln_eps, name="norm")
        if not self.clip_return_layers:
            return {"tokens": norm(out)}
        x, aux = out
        encoder_features = norm(aux["hidden"])
        # The official `clip_pos_embed` is the same table (its width must equal D).
        pos_vis = jnp.broadcast_to(pos, (x.shape[0], *pos.shape[1:]))
        if mask is not None:
            pos_vis = gather_visible(pos_vis, mask, x.shape[1])
        aligned = encoder_features + pos_vis[None]
        features = jnp.stack([
            ClipDecoder(self.clip_output_dim, self.ln_eps, self.dtype, name=f"clip_decoder_{k}")(aligned[k])
            for k in range(self.clip_return_layers)
        ])
        return {"encoder_features": encoder_features, "features": features, "tokens": norm(x)}


class UMTVideoText(nn.Module):
    """UMT stage 2 (`multi_modality/models/umt.py`): the student, a BERT with fusion layers, heads.

    `vision` holds UMTStudent's arguments, `text` BertTextEncoder's (its
    `vision_width` is the student's width). Entry points, each usable with
    `apply(..., method=...)`:
    - `encode_vision`: student tokens (B, N, D) and `pool_norm` of their mean;
      without a mask the mean is per frame (B, T, D), as the official
      `keep_temporal=True` evaluation and retrieval fine-tuning do; with a
      mask it is over all visible tokens (B, 1, D).
    - `encode_text`: the text-only BERT layers, (B, L, Dt).
    - `embed_vision` / `embed_text`: L2-normalised `vision_proj` of the pooled
      features (B, T', E) and `text_proj` of [CLS] (B, E).
    - `match_logits`: `itm_head` on the fused [CLS], (B, 2).
    - `mlm_logits`: masked ids through the text and fusion layers, then the MLM head.
    - `temperature`: `temp` clamped to [temp_min, temp_max].
    """

    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    embed_dim: int = 512
    temp_init: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    ln_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    def setup(self):
        self.vision_encoder = UMTStudent(**self.vision, dtype=self.dtype)
        self.text_encoder = BertTextEncoder(**self.text, vision_width=self.vision["width"], dtype=self.dtype)
        self.pool_norm = layer_norm(self.ln_eps)

        def dense(features, axes):
            return nn.Dense(
                features, dtype=self.dtype,
                kernel_init=with_axes(nn.initializers.xavier_uniform(), axes),
                bias_init=with_axes(nn.initializers.zeros, axes[1:]),
            )

        self.vision_proj = dense(self.embed_dim, ("embed", "vocab"))
        self.text_proj = dense(self.embed_dim, ("embed", "vocab"))
        self.itm_head = dense(2, ("embed", None))
        self.temp = self.param("temp", with_axes(nn.initializers.constant(self.temp_init), ()), ())

    def encode_vision(self, video, mask=None, *, num_visible=None, train=False) -> dict:
        out = self.vision_encoder(video, mask, num_visible=num_visible, train=train)
        tokens = out["tokens"]
        if mask is None:
            frames = video.shape[1] // self.vision_encoder.tubelet_size
            pooled = tokens.reshape(tokens.shape[0], frames, -1, tokens.shape[-1]).mean(axis=2)
        else:
            pooled = tokens.mean(axis=1, keepdims=True)
        return {**out, "pooled": self.pool_norm(pooled)}

    def encode_text(self, ids, mask, *, train=False) -> jax.Array:
        return self.text_encoder.encode_text(ids, mask, train=train)

    def embed_vision(self, pooled) -> jax.Array:
        return l2_normalize(self.vision_proj(pooled).astype(jnp.float32))

    def embed_text(self, text_hidden) -> jax.Array:
        return l2_normalize(self.text_proj(text_hidden[:, 0]).astype(jnp.float32))

    def match_logits(self, text_hidden, text_mask, vision_tokens, *, train=False) -> jax.Array:
        fused = self.text_encoder.fuse(text_hidden, text_mask, vision_tokens, train=train)
        return self.itm_head(fused[:, 0]).astype(jnp.float32)

    def mlm_logits(self, ids, text_mask, vision_tokens, *, train=False) -> jax.Array:
        hidden = self.text_encoder.encode_text(ids, text_mask, train=train)
        fused = self.text_encoder.fuse(hidden, text_mask, vision_tokens, train=train)
        return self.text_encoder.mlm_logits(fused).astype(jnp.float32)

    def temperature(self) -> jax.Array:
        return jnp.clip(self.temp, self.temp_min, self.temp_max)

    def __call__(self, video, ids, text_mask, mask=None, *, num_visible=None, train=False) -> dict:
        """Every entry point once, so that `init` creates every parameter."""
        vision = self.encode_vision(video, mask, num_visible=num_visible, train=train)
        text = self.encode_text(ids, text_mask, train=train)
        return {
            "vision": self.embed_vision(vision["pooled"]),
            "text": self.embed_text(text),
            "match": self.match_logits(text, text_mask, vision["tokens"], train=train),
            "mlm": self.mlm_logits(ids, text_mask, vision["tokens"], train=train),
            "temp": self.temperature(),
        }
