"""Random erasing of UMT/VideoMAE fine-tuning, on device, after normalisation.

The official loaders apply timm's `RandomErasing(p, mode='pixel', max_count=1,
cube=True)` to each normalised clip: with probability p one box, the same on
every frame, whose pixels become N(0, 1) noise (new noise per frame and
channel). The box is drawn as timm draws it: up to 100 tries of an area
fraction uniform in [0.02, 1/3] and a log-uniform aspect ratio in
[0.3, 1/0.3], h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)),
the first try with h < H and w < W wins (none: no erasing), and the top-left
corner is uniform over the positions where the box fits. Here all tries are
drawn at once, so the step stays one static-shaped program.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ATTEMPTS = 100


def random_erasing(rng: jax.Array, video: jax.Array, prob: float, *, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3) -> jax.Array:
    """(B, T, H, W, C) normalised clips -> the same with one noise box per erased clip."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"random erasing probability {prob} must be in [0, 1]")
    b, _, h, w, _ = video.shape
    keys = jax.random.split(rng, 6)
    erase = jax.random.uniform(keys[0], (b,)) < prob
    area = jax.random.uniform(keys[1], (b, ATTEMPTS), minval=min_area, maxval=max_area) * (h * w)
    log_aspect = math.log(min_aspect), -math.log(min_aspect)
    aspect = jnp.exp(jax.random.uniform(keys[2], (b, ATTEMPTS), minval=log_aspect[0], maxval=log_aspect[1]))
    box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_h < h) & (box_w < w)
    first = jnp.argmax(fits, axis=1)[:, None]
    box_h = jnp.take_along_axis(box_h, first, axis=1)[:, 0]
    box_w = jnp.take_along_axis(box_w, first, axis=1)[:, 0]
    erase &= fits.any(axis=1)
    # randint(0, H - h) inclusive, as Python's random.randint.
    top = jnp.floor(jax.random.uniform(keys[3], (b,)) * (h - box_h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(keys[4], (b,)) * (w - box_w + 1)).astype(jnp.int32)
    rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    box = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]  # (B, H, W)
    noise = jax.random.normal(keys[5], video.shape, jnp.float32).astype(video.dtype)
    return jnp.where(box[:, None, :, :, None], noise, video)
