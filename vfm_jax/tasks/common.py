"""Pieces shared by tasks: input normalisation and top-k accuracy."""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Per-channel mean/std on the [0, 1] scale.
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "slowfast": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
}


def normalize_video(video: jax.Array, preset: str) -> jax.Array:
    """uint8 (..., C) -> float32 normalised with a named preset (done on device, after transfer)."""
    mean, std = NORMALIZATION[preset]
    x = video.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B,) 1.0 where the label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
