"""ViCLIP (InternVid, arXiv 2307.06942): a CLIP video-text model with joint space-time attention.

The video tower is InternVid's `viclip_vision.VisionTransformer`: CLIP's
frame-wise patch conv (a Conv3d with temporal kernel 1), the 2-D CLIP position
table added to every frame, a learned per-frame `temporal_positional_embedding`
added to the patch tokens (not to the class token), then ONE sequence of
1 + N*T tokens, ordered space-major and time-minor (token 1 + n*T + t is patch
n of frame t), through `ln_pre`, the CLIP blocks, `ln_post`, and
`ln_post(CLS) @ proj`. In training a fixed share of the patch tokens is
dropped before `ln_pre` (the encoder sees fewer tokens: that is the speed-up).
The text tower is CLIP's (`CLIPText`, context 32). Both embeddings are L2
normalised; the contrastive temperature is the learnable `temp`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.layers.common import Dtype, l2_normalize, layer_norm, with_axes
from vfm_jax.layers.embeddings import clip_patch_conv, clip_token_tables
from vfm_jax.layers.transformer import Encoder
from vfm_jax.models.clip import CLIPText, tower_arguments


def temporal_embedding(table: jax.Array, frames: int) -> jax.Array:
    """The learned (T0, D) temporal table adapted to `frames` frames, as the official code does.

    T0 frames: as is. One frame: the mean over T0 (the official forward, so
    that images still train the table). Fewer: the first `frames` rows, and
    more: linear interpolation with half-pixel centres (`F.interpolate(...,
    mode='linear')`); both are what the official checkpoint loader
    (`load_temp_embed_with_mismatch(add_zero=False)`) writes into a model
    built for another frame count.
    """
    t0 = table.shape[0]
    if frames == t0:
        return table
    if frames == 1:
        return table.mean(axis=0, keepdims=True)
    if frames < t0:
        return table[:frames]
    src = np.maximum((np.arange(frames) + 0.5) * t0 / frames - 0.5, 0.0)
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, t0 - 1)
    frac = jnp.asarray((src - lo)[:, None], table.dtype)
    return table[lo] * (1 - frac) + table[hi] * frac


class ViCLIPVision(nn.Module):
    """(B, T, H, W, 3) video -> dict of outputs; images are T = 1.

    - `tokens` (B, 1 + K, D): `ln_post` of every token the encoder saw (the
      official `return_embed` output), CLS first; K = N*T in evaluation, and
      N*T - int(drop_ratio * N*T) in training (rng stream `masking`).
    - `embedding` (B, out): `tokens[:, 0] @ proj`, not normalised.
    Intermediates: `ln_pre_out` (B, 1 + K, D), and in training `kept_indices`
    (B, K), the kept patch positions (index n*T + t) in ascending order.

    Other input sizes resize the position table (`resize_positional_embedding`);
    other frame counts adapt the temporal table (`temporal_embedding`). The
    temporal table starts at zero, as the official inflation of a CLIP
    model; `temporal_init_std` > 0 draws it from N(0, std) instead, for
    training from scratch, where a zero table leaves the frames unordered
    for hundreds of steps.
    Param names match `CLIPVision` plus `temporal_positional_embedding` (T0, D).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    num_frames: int = 8
    output_dim: int = 512
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    drop_ratio: float = 0.9
    drop_path_rate: float = 0.0
    temporal_init_std: float = 0.0
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
        b, t, h, w, c = video.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"frames {h}x{w} are not divisible by patch_size {p}")
        x = clip_patch_conv(self.width, p, self.dtype)(video.reshape(b * t, h, w, c).astype(self.dtype))
        n = (h // p) * (w // p)
        x = x.reshape(b, t, n, self.width)

        cls, pos = clip_token_tables(self, self.width, self.image_size, p, (h // p, w // p))
        temporal_init = nn.initializers.zeros
        if self.temporal_init_std:
            temporal_init = nn.initializers.normal(self.temporal_init_std)
        temporal = self.param(
            "temporal_positional_embedding", with_axes(temporal_init, ("frames", "embed")),
            (self.num_frames, self.width),
        )
        x = x + pos[1:].astype(self.dtype) + temporal_embedding(temporal, t)[:, None].astype(self.dtype)
        # (B, T, N, D) -> (B, N*T, D): space-major, time-minor, the official token order.
        x = x.transpose(0, 2, 1, 3).reshape(b, n * t, self.width)

        if train and self.drop_ratio > 0:
            dropped = int(self.drop_ratio * n * t)
            noise = jax.random.uniform(self.make_rng("masking"), (b, n * t))
            kept = jnp.sort(jnp.argsort(noise, axis=-1)[:, dropped:], axis=-1)
            self.sow("intermediates", "kept_indices", kept)
            x = jnp.take_along_axis(x, kept[..., None], axis=1)

        cls = jnp.broadcast_to((cls + pos[0]).astype(self.dtype), (b, 1, self.width))
        x = layer_norm(self.ln_eps, name="ln_pre")(jnp.concatenate([cls, x], axis=1))
        self.sow("intermediates", "ln_pre_out", x)
        x = Encoder(
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
            deterministic=not train,
            dtype=self.dtype,
            name="encoder",
        )(x.astype(self.dtype))
        tokens = layer_norm(self.ln_eps, name="ln_post")(x)
        proj = self.param("proj", with_axes(nn.initializers.normal(self.width ** -0.5), ("embed", "vocab")), (self.width, self.output_dim))
        return {"tokens": tokens, "embedding": tokens[:, 0] @ proj.astype(jnp.float32)}


class ViCLIP(nn.Module):
    """The video and text towers with a shared embedding size and the contrastive temperature.

    `vision` holds ViCLIPVision's size arguments, `text` CLIPText's; the
    embedding size (`embed_dim`) and the execution fields (`attention_impl`,
    `scan_layers`, `remat_policy`, `dtype`) are set here for both. Entry
    points, each usable with `apply(..., method=...)`:
    - `encode_video(video, train=...)`: L2-normalised (B, embed_dim); in
      training with the token drop (rng streams `masking`, and `droppath`
      when `drop_path_rate` > 0).
    - `encode_text(ids, eot_positions=None)`: L2-normalised (B, embed_dim).
    - `temperature()`: `temp` clamped to >= `temp_min`. The official code
      (`clip_contrastive_temperature`) clamps the parameter itself in place,
      `temp.clamp_(min=temp_min)` with temp_min = 1/100, before every
      training forward; here the clamp is applied where the value is read,
      which gives the same value (the gradient is zero while clamped).
    Logits are similarities / temperature. The tower outputs before
    normalisation are `vision_encoder` / `text_encoder` outputs.
    """

    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    embed_dim: int = 512
    temp_init: float = 0.01
    temp_min: float = 0.01
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    def setup(self):
        shared = tower_arguments(self)
        self.vision_encoder = ViCLIPVision(**self.vision, **shared)
        self.text_encoder = CLIPText(**self.text, **shared)
        self.temp = self.param("temp", with_axes(nn.initializers.constant(self.temp_init), ()), ())

    def encode_video(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        return l2_normalize(self.vision_encoder(video, train=train)["embedding"])

    def encode_text(self, ids: jax.Array, *, eot_positions: jax.Array | None = None) -> jax.Array:
        return l2_normalize(self.text_encoder(ids, eot_positions=eot_positions)["embedding"])

    def temperature(self) -> jax.Array:
        return jnp.maximum(self.temp, self.temp_min)

    def __call__(self, video: jax.Array, text_ids: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        return {
            "video_embedding": self.encode_video(video, train=train),
            "text_embedding": self.encode_text(text_ids),
            "temperature": self.temperature(),
        }
