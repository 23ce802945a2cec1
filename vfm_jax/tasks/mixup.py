"""Mixup / CutMix for video batches, timm's `Mixup(mode='batch')` as UMT/VideoMAE fine-tuning uses it.

One lambda per batch; every sample is mixed with the batch reversed (`x.flip(0)`
in timm). Mixup blends whole clips; CutMix pastes one box of the partner clip,
the same box in every frame, and lambda becomes the exact share of the frame
left unpasted (timm's `correct_lam=True`). The box is a mask built from iota
comparisons, so shapes are static and the whole thing jits.

On a sharded batch the partner of sample i is global sample B-1-i (the
official code mixes within each GPU's batch). The targets are mixed with the
same lambda; timm smooths them first with off = s / K and on = 1 - s + s / K,
which is what `optax.smooth_labels` gives.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mix(
    rng: jax.Array,
    video: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(B, T, H, W, C) video and (B, K) soft targets -> (mixed video, mixed targets, lambda).

    An alpha of 0 turns that method off; with both on, CutMix is picked with
    probability `switch_prob` (timm's `prob`, the chance of mixing at all, is
    1 in every official recipe, so it is not offered).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return video, targets, jnp.ones((), jnp.float32)
    switch_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)
    _, _, height, width, _ = video.shape
    # `weight`: how much of each sample's own pixels it keeps, per (H, W) position.
    if mixup_alpha > 0:
        mixup_lam = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha)
        mixup_weight = jnp.full((height, width), mixup_lam)
    if cutmix_alpha > 0:
        cy_rng, cx_rng = jax.random.split(box_rng)
        outside, cutmix_lam = cutmix_box(
            jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha),
            jax.random.randint(cy_rng, (), 0, height), jax.random.randint(cx_rng, (), 0, width), height, width,
        )
        cutmix_weight = outside.astype(jnp.float32)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(switch_rng) < switch_prob
        weight = jnp.where(use_cutmix, cutmix_weight, mixup_weight)
        lam = jnp.where(use_cutmix, cutmix_lam, mixup_lam)
    elif mixup_alpha > 0:
        weight, lam = mixup_weight, mixup_lam
    else:
        weight, lam = cutmix_weight, cutmix_lam

    weight = weight.astype(video.dtype)[None, None, :, :, None]
    mixed = video * weight + video[::-1] * (1 - weight)
    lam = lam.astype(jnp.float32)
    return mixed, targets * lam + targets[::-1] * (1 - lam), lam


def cutmix_box(lam, cy, cx, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """timm `rand_bbox` + `correct_lam`: (H, W) True outside the box, and 1 - box area / frame area.

    The box has sides int(H * sqrt(1 - lam)), int(W * sqrt(1 - lam)) around the
    centre (cy, cx), each half side floored, clipped to the frame.
    """
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return ~inside, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
