"""Pieces shared by tasks: input normalisation and top-k accuracy."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from data.normalization import NORMALIZATION


def normalize_video(video: jax.Array, preset: str) -> jax.Array:
    """uint8 (..., C) -> float32 normalised with a `data.transforms.NORMALIZATION` preset.

    Done on device, after the (4x smaller) uint8 batch has been transferred.
    """
    mean, std = NORMALIZATION[preset]
    x = video.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B,) 1.0 where the label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
