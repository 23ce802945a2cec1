"""VideoMAE pre-training (InternVideo's masked video encoder): reconstruct the pixels of masked tubes.

InternVideo1 `Pretrain/VideoMAE/engine_for_pretraining.py`: a tube mask
("t_consist") hides int(ratio * H'W') tokens of every frame-pair, the same
positions in each; the target of a token is its tubelet of [0, 1] pixels
(the official un-normalises the ImageNet-normalised clip, which gives the
same values), each channel normalised over the tubelet's t * p * p pixels
by its mean and unbiased std, (x - mean) / (std + 1e-6)
(`normlize_target=True`); the loss is the MSE over the masked tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from data.masking import gather_visible, num_masked
from data.normalization import NORMALIZATION
from vfm_jax.models import build_model
from vfm_jax.tasks.common import normalize_video


def random_tube_mask(rng, batch: int, frames: int, tokens_per_frame: int, mask_ratio: float) -> jax.Array:
    """(batch, frames * tokens_per_frame) bool tube masks (True = masked), drawn on device.

    Each sample hides a uniformly random set of int(mask_ratio * tokens_per_frame)
    spatial positions, repeated in every frame, so all samples keep the same
    visible count and the encoder input shape is static.
    """
    hidden = num_masked(tokens_per_frame, mask_ratio)
    scores = jax.random.uniform(rng, (batch, tokens_per_frame))
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    return jnp.tile(ranks < hidden, (1, frames))


def patch_targets(pixels: jax.Array, tubelet_size: int, patch_size: int, normalize: bool = True) -> jax.Array:
    """(B, T, H, W, C) pixels in [0, 1] -> (B, L, t * p * p * C) per-token targets in token order.

    Pixels of a token are ordered (t, y, x, channel), as the official
    rearrange `b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)`. With
    `normalize`, each channel of each token is standardised over its
    t * p * p pixels with the unbiased std and eps 1e-6 added to the std.
    """
    b, t, h, w, c = pixels.shape
    x = pixels.astype(jnp.float32).reshape(
        b, t // tubelet_size, tubelet_size, h // patch_size, patch_size, w // patch_size, patch_size, c
    )
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, tubelet_size * patch_size**2, c)
    if normalize:
        x = (x - x.mean(axis=2, keepdims=True)) / (jnp.std(x, axis=2, ddof=1, keepdims=True) + 1e-6)
    return x.reshape(b, x.shape[1], -1)


def reconstruction_loss(pred: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error in fp32 of (B, N_mask, P) predictions against the masked rows of (B, L, P) targets."""
    masked_targets = gather_visible(targets, ~mask, pred.shape[1])
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - jax.lax.stop_gradient(masked_targets)))


class VideoMAETask:
    """Model `config.model` (arch videomae_pretrain) reconstructs the tubes a random tube mask hides.

    `task.mask_ratio` (0.9 in VideoMAE / InternVideo) is per frame-pair and
    must leave at least one token hidden and one visible; the mask comes
    from the step's `masking` key, so a resumed run draws the same masks.
    `task.normalize_target` is the official `normlize_target`.
    """

    def __init__(self, config):
        cfg = config.task
        if config.model.arch != "videomae_pretrain":
            raise ValueError(f"videomae needs model.arch='videomae_pretrain', got {config.model.arch!r}")
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ValueError(f"task.mask_ratio={cfg.mask_ratio} must be in (0, 1)")
        if cfg.normalization not in NORMALIZATION:
            raise ValueError(f"task.normalization={cfg.normalization!r} is not one of {sorted(NORMALIZATION)}")
        self.model = build_model(config.model)
        self.mask_ratio = cfg.mask_ratio
        self.normalization = cfg.normalization
        self.normalize_target = cfg.normalize_target
        self.input_keys = ("video",)

    def _mask(self, rng, video_shape) -> tuple[jax.Array, int]:
        """A tube mask for the clip's token layout and its static visible count."""
        b, t, h, w, _ = video_shape
        per_frame = (h // self.model.patch_size) * (w // self.model.patch_size)
        frames = t // self.model.tubelet_size
        hidden = num_masked(per_frame, self.mask_ratio)
        if hidden in (0, per_frame):
            raise ValueError(
                f"task.mask_ratio={self.mask_ratio} hides {hidden} of {per_frame} tokens per frame; "
                "at least one must be hidden and one visible"
            )
        return random_tube_mask(rng, b, frames, per_frame, self.mask_ratio), frames * (per_frame - hidden)

    def init(self, rng, batch) -> dict:
        params_rng, mask_rng = jax.random.split(rng)
        video = normalize_video(batch["video"], self.normalization)
        mask, visible = self._mask(mask_rng, video.shape)
        return {"params": self.model.init({"params": params_rng}, video, mask, num_visible=visible)["params"]}

    def outputs(self, params, batch, rng, *, train: bool) -> dict:
        """The step's mask, the reconstructions of the masked tokens and every token's target."""
        masking_rng, dropout_rng, droppath_rng = jax.random.split(rng, 3)
        video = normalize_video(batch["video"], self.normalization)
        mask, visible = self._mask(masking_rng, video.shape)
        out = self.model.apply(
            {"params": params}, video, mask, num_visible=visible, train=train,
            rngs={"dropout": dropout_rng, "droppath": droppath_rng},
        )
        pixels = batch["video"].astype(jnp.float32) / 255.0
        targets = patch_targets(pixels, self.model.tubelet_size, self.model.patch_size, self.normalize_target)
        return {"pred": out["pred"], "targets": targets, "mask": mask}

    def loss_fn(self, params, model_state, batch, rng):
        out = self.outputs(params, batch, rng, train=True)
        loss = reconstruction_loss(out["pred"], out["targets"], out["mask"])
        return loss, ({"loss": loss}, model_state)
